"""Exploration on the GPU (dev tool): what the per-K-block scale promotion costs the int8 GEMM.

M=32760 and the 1.3B model's three (K, N) shapes. Times, in one process:
  - bf16 cuBLAS and our autotuned `scaled_mm` (int8 and fp8, 128x128 block scales);
  - `_probe` below, one TMA kernel with switches:
      MODE 0: block scales, promotion after every 128-deep block (what scaled_mm does);
      MODE 1: the same, promotion of block k after the product of block k+1 is issued;
      MODE 2: no per-block scales: one chained accumulator over all of K, scales in the epilogue
              (row x column scales; the ceiling Triton reaches when nothing breaks the chain);
    with warp specialisation of the K loop on or off.
Writes $OUT/explore_gemm.json; prints a table last.
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch
import triton
import triton.language as tl
from triton.testing import do_bench
from triton.tools.tensor_descriptor import TensorDescriptor

from turbovid.ops.quant import fp8
from turbovid.ops.quant import int8 as qi
from turbovid.ops.quant import int8_triton as kq

M = 32760
SHAPES = [(1536, 1536), (1536, 8960), (8960, 1536)]


@triton.jit
def _probe(a_desc, b_desc, c_ptr, sa_ptr, sb_ptr, M, N, K, stride_cm,
           BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr, MODE: tl.constexpr,
           IS_INT8: tl.constexpr, WS: tl.constexpr, STAGES: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    in_group = GROUP_M * num_n
    first_m = (pid // in_group) * GROUP_M
    gs = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % gs
    pid_n = (pid % in_group) // gs
    off_m = pid_m * BM
    off_n = pid_n * BN
    num_k = tl.cdiv(K, 128)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if MODE == 2:
        if IS_INT8:
            acc_i = tl.zeros((BM, BN), dtype=tl.int32)
        else:
            acc_i = tl.zeros((BM, BN), dtype=tl.float32)
        for kb in tl.range(num_k, warp_specialize=WS, num_stages=STAGES):
            a = a_desc.load([off_m, kb * 128])
            b = b_desc.load([off_n, kb * 128])
            acc_i = tl.dot(a, b.T, acc_i)
        rm = off_m + tl.arange(0, BM)
        rn = off_n + tl.arange(0, BN)
        sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
        sb = tl.load(sb_ptr + rn, mask=rn < N, other=0.0)
        acc = acc_i.to(tl.float32) * sa[:, None] * sb[None, :]
    elif MODE == 0:
        for kb in tl.range(num_k, warp_specialize=WS, num_stages=STAGES):
            a = a_desc.load([off_m, kb * 128])
            b = b_desc.load([off_n, kb * 128])
            s = tl.load(sa_ptr + pid_m * num_k + kb) * tl.load(sb_ptr + pid_n * num_k + kb)
            if IS_INT8:
                part = tl.dot(a, b.T, out_dtype=tl.int32).to(tl.float32)
            else:
                part = tl.dot(a, b.T, out_dtype=tl.float32)
            acc += part * s
    else:
        if IS_INT8:
            prev = tl.zeros((BM, BN), dtype=tl.int32)
        else:
            prev = tl.zeros((BM, BN), dtype=tl.float32)
        s_prev = 0.0
        for kb in tl.range(num_k, warp_specialize=WS, num_stages=STAGES):
            a = a_desc.load([off_m, kb * 128])
            b = b_desc.load([off_n, kb * 128])
            s = tl.load(sa_ptr + pid_m * num_k + kb) * tl.load(sb_ptr + pid_n * num_k + kb)
            if IS_INT8:
                part = tl.dot(a, b.T, out_dtype=tl.int32)
            else:
                part = tl.dot(a, b.T, out_dtype=tl.float32)
            acc += prev.to(tl.float32) * s_prev
            prev = part
            s_prev = s
        acc += prev.to(tl.float32) * s_prev
    rm = off_m + tl.arange(0, BM)
    rn = off_n + tl.arange(0, BN)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :], acc.to(tl.bfloat16), mask=mask)


def med(fn, rep=200):
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def main():
    out_path = os.path.join(os.environ.get("OUT", "."), "explore_gemm.json")
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "rows": []}
    rows = res["rows"]
    dev = "cuda"
    for K, N in SHAPES:
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02
        flops = 2.0 * M * N * K
        t = med(lambda: torch.nn.functional.linear(x, w))
        rows.append({"K": K, "N": N, "what": "bf16 cuBLAS", "ms": t, "tops": flops / t / 1e9})
        for fmt, dt in (("int8", torch.int8), ("fp8", torch.float8_e4m3fn)):
            xq, xs = kq.quantize_act(x, fmt)
            wq, ws = qi.quantize_blockwise(w) if fmt == "int8" else fp8.quantize_weight_fp8(w)
            ref = kq.scaled_mm(xq, xs, wq, ws)
            t = med(lambda: kq.scaled_mm(xq, xs, wq, ws))
            rows.append({"K": K, "N": N, "what": f"scaled_mm {fmt} (autotuned)", "ms": t, "tops": flops / t / 1e9,
                         "config": kq.best_config(N, K, M, fmt == "int8")})
            print(rows[-1], flush=True)
            c = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
            # block scales for MODE 0/1 as (M/128, K/128) and (N/128, K/128) row-major; for MODE 2 one per row / column
            sa_blk = torch.rand(triton.cdiv(M, 128), triton.cdiv(K, 128), device=dev) + 0.5
            sb_blk = torch.rand(triton.cdiv(N, 128), triton.cdiv(K, 128), device=dev) + 0.5
            sa_row = torch.rand(M, device=dev) + 0.5
            sb_col = torch.rand(N, device=dev) + 0.5
            tiles = {False: ((128, 128, 8, 4), (128, 256, 8, 3), (256, 128, 8, 3), (128, 128, 4, 4)),
                     True: ((128, 128, 8, 3), (128, 256, 8, 3))}
            for mode in ((0, 1, 2) if fmt == "int8" else (0, 2)):
                for ws_flag in (False, True):
                    for bm, bn, warps, stages in tiles[ws_flag]:
                        name = f"probe {fmt} mode={mode} ws={ws_flag} {bm}x{bn} w{warps} s{stages}"
                        try:
                            a_d = TensorDescriptor.from_tensor(xq, [bm, 128])
                            b_d = TensorDescriptor.from_tensor(wq, [bn, 128])
                            sa = sa_row if mode == 2 else sa_blk
                            sb = sb_col if mode == 2 else sb_blk

                            def fn():
                                grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
                                _probe[grid](a_d, b_d, c, sa, sb, M, N, K, c.stride(0), BM=bm, BN=bn, GROUP_M=8,
                                             MODE=mode, IS_INT8=fmt == "int8", WS=ws_flag, STAGES=stages,
                                             num_warps=warps)
                            fn()
                            tt = med(fn, 100)
                            rows.append({"K": K, "N": N, "what": name, "ms": tt, "tops": flops / tt / 1e9})
                        except Exception as e:  # noqa: BLE001
                            rows.append({"K": K, "N": N, "what": name, "error": f"{type(e).__name__}: {str(e)[:160]}"})
                        print(rows[-1], flush=True)
            del ref
        json.dump(res, open(out_path, "w"), indent=1)
    print("\n==== sorted ====")
    for K, N in SHAPES:
        sel = sorted([r for r in rows if r["K"] == K and r["N"] == N and "ms" in r], key=lambda r: r["ms"])
        for r in sel[:14]:
            print(f"({K},{N}) {r['ms']:7.3f} ms {r['tops']:6.0f} TOPS  {r['what']}")


def rowwise():
    """GEMM-only times at M=32760: bf16 cuBLAS, fp8 cuBLAS blockwise (1x128 x 128x128, what
    --quant fp8 runs), fp8 rowwise (per-token x per-channel scales) through F.scaled_mm and
    torch._scaled_mm, fp8 per-tensor; and a rowwise activation quantization in PyTorch ops."""
    import torch.nn.functional as F

    from turbovid.ops.quant import fp8_cublas

    rows = []
    for K, N in [(1536, 1536), (1536, 4608), (1536, 8960), (8960, 1536)]:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        bias = torch.randn(N, device="cuda", dtype=torch.bfloat16)
        flops = 2.0 * M * N * K
        r = {"K": K, "N": N, "bf16": med(lambda: F.linear(x, w, bias))}
        wq, ws = fp8.quantize_weight_fp8(w)
        aq, as_ = kq.quantize_act(x, "fp8")
        wsc = fp8_cublas.weight_scales(ws)
        r["fp8_blockwise_cublas"] = med(lambda: fp8_cublas._call(aq, as_, wq, wsc, bias, torch.bfloat16, True))
        # rowwise: one scale per token and per output channel
        sa = x.float().abs().amax(1, keepdim=True).clamp_min(1e-8) / 448.0
        xr = (x.float() / sa).to(torch.float8_e4m3fn)
        sb = w.float().abs().amax(1, keepdim=True).clamp_min(1e-8) / 448.0
        wr = (w.float() / sb).to(torch.float8_e4m3fn)
        try:
            y = torch._scaled_mm(xr, wr.t(), scale_a=sa, scale_b=sb.t(), bias=bias, out_dtype=torch.bfloat16)
            ref = F.linear(x.float(), w.float(), bias.float())
            r["rowwise_rel_err"] = ((y.float() - ref).norm() / ref.norm()).item()
            r["fp8_rowwise_torch_scaled_mm"] = med(lambda: torch._scaled_mm(
                xr, wr.t(), scale_a=sa, scale_b=sb.t(), bias=bias, out_dtype=torch.bfloat16))
        except Exception as e:  # noqa: BLE001
            r["fp8_rowwise_torch_scaled_mm"] = f"{type(e).__name__}: {str(e)[:160]}"
        one = torch.ones((), device="cuda")
        r["fp8_per_tensor"] = med(lambda: torch._scaled_mm(xr, wr.t(), scale_a=one, scale_b=one, bias=bias,
                                                           out_dtype=torch.bfloat16))
        r["act_quant_blockwise_triton"] = med(lambda: kq.quantize_act(x, "fp8"))
        r["tflops"] = {k: flops / v / 1e9 for k, v in r.items() if isinstance(v, float) and k not in ("rowwise_rel_err",)}
        rows.append(r)
        print(r, flush=True)
    json.dump({"card": torch.cuda.get_device_name(), "M": M, "rows": rows},
              open(os.path.join(os.environ.get("OUT", "."), "rowwise.json"), "w"), indent=1)


if __name__ == "__main__":
    t0 = time.time()
    if "--rowwise" in sys.argv:
        rowwise()
    else:
        main()
    print(f"elapsed {time.time() - t0:.0f}s")
