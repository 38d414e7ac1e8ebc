"""The VAE's RGB head by taps (ops/conv_head.py): launch shapes of the projection and the dtype of
the per-tap products Z, at a 4-frame chunk of the 480p / 720p decodes, one process.

Per shape and variant: project (norm + SiLU of the residual sum + the 27 taps' products), gather
(the sum over the taps) and the next chunk's history (Z's last two frames), each timed, and the
head's error against the float32 conv of the same bf16 normalised input, next to cuDNN's bf16 conv
of it. Times: triton.testing.do_bench medians, ms. JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/explore_head.py --out $OUT/explore_head.json
"""
from __future__ import annotations

import torch
from triton.testing import do_bench

from turbovid.bench.timing import sweep_shapes
from turbovid.ops import causal_conv, conv_head
from turbovid.ops.rms_silu import rms_silu_reference

SHAPES = {"480p": (4, 480, 832), "720p": (4, 720, 1280)}
C = 96
# (block_n, num_warps) of the projection
LAUNCHES = ((64, 4), (128, 4), (128, 8), (256, 8))


def bench(fn) -> float:
    return float(do_bench(fn, warmup=5, rep=40, return_mode="median"))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b).norm() / b.norm()).item()


def one(t: int, h: int, w: int) -> dict:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(1)
    x, res = (torch.randn(t, h, w, C, device=dev, generator=g).bfloat16() for _ in range(2))
    gamma = 1 + 0.2 * torch.randn(C, device=dev, generator=g)
    in_bias = torch.randn(C, device=dev, generator=g).bfloat16()
    weight = torch.randn(3, C, 3, 3, 3, device=dev, generator=g) / (27 * C) ** 0.5
    bias = torch.randn(3, device=dev, generator=g)
    head = conv_head.pack(weight, bias, torch.bfloat16)
    x_out = torch.empty_like(x)
    summed = (x.float() + in_bias.float() + res.float()).bfloat16()
    y = rms_silu_reference(summed, gamma)
    buf = torch.cat([y.new_zeros(2, h, w, C), y])
    ref = causal_conv.causal_conv_reference(buf.float(), causal_conv.pack(head.weight, bias, torch.float32))
    cudnn = causal_conv.causal_conv_reference(buf, causal_conv.pack(head.weight, bias, torch.bfloat16))
    out = {"rel_err_cudnn_bf16": rel(cudnn, ref), "variants": []}
    del buf, y, cudnn
    for z_dtype in (torch.float32, torch.float16):
        for block_n, warps in LAUNCHES:
            def proj():
                return conv_head.project(x, gamma, head, bias=in_bias, residual=res, x_out=x_out, z_dtype=z_dtype,
                                         block_n=block_n, num_warps=warps)
            z = proj()
            row = {"z_dtype": str(z_dtype), "block_n": block_n, "num_warps": warps, "project_ms": bench(proj),
                   "gather_ms": bench(lambda: conv_head.gather(z, None, head, torch.bfloat16)),
                   "history_ms": bench(lambda: conv_head.next_history(z, None))}
            row["total_ms"] = row["project_ms"] + row["gather_ms"] + row["history_ms"]
            row["rel_err"] = rel(conv_head.gather(z, None, head, torch.bfloat16), ref)
            row["sum_exact"] = bool(torch.equal(x_out, summed))
            out["variants"].append(row)
            print(f"  Z {str(z_dtype):14s} block_n {block_n:3d} warps {warps}: project {row['project_ms']:.3f} "
                  f"gather {row['gather_ms']:.3f} history {row['history_ms']:.3f} total {row['total_ms']:.3f} ms, "
                  f"rel err {row['rel_err']:.2e} (cuDNN bf16 {out['rel_err_cudnn_bf16']:.2e})", flush=True)
            del z
    return out


def main() -> None:
    sweep_shapes(__doc__.splitlines()[0], "explore_head.json", SHAPES, one)


if __name__ == "__main__":
    main()
