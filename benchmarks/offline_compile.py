"""Compile Triton kernels for Hopper (sm_90) on a machine without a GPU and report their resources
(dev tool): registers a thread, spill stack, static and dynamic shared memory, and optionally the
TTGIR with the layouts Triton chose. The local Triton may differ from the GPU image's (3.6), so the
figures are a guide; they found the select kernel's 255 registers and a row count reduced across
warps before any GPU time was spent (docs/benchmarks.md, run 11).

    python benchmarks/offline_compile.py [--dump DIR]   (DIR: each kernel's TTGIR, PTX and cubin)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compiling for the GPU: kernels must not be decorated for the interpreter

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sass_steps  # noqa: E402
import wgmma_hazards  # noqa: E402


def compile_sm90(kernel, signature: dict, constexprs: dict, div16=(), num_warps=4, num_stages=3,
                 maxnreg: int | None = None, dump: Path | None = None) -> str:
    """Resource line of `kernel` compiled for sm_90. signature: argument -> Triton type ("*bf16", "i32",
    ...); constexprs: argument -> value; div16: arguments the launcher would mark divisible by 16;
    maxnreg: the launch's register cap, if any."""
    import triton.backends.nvidia as nvidia

    names = kernel.arg_names
    source = ASTSource
    if getattr(kernel, "is_gluon", lambda: False)():  # a Gluon kernel takes num_warps as a constexpr argument
        from triton.experimental.gluon._runtime import GluonASTSource as source
        constexprs = constexprs | {"num_warps": num_warps}
    full = {a: "constexpr" if a in constexprs else signature[a] for a in names}
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in div16}
    compiled = triton.compile(source(fn=kernel, signature=full, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages, "maxnreg": maxnreg})
    if dump is not None:  # the TTGIR, and the PTX and cubin beside it (benchmarks/sass_steps.py reads both)
        dump.write_text(compiled.asm["ttgir"])
        dump.with_suffix(".cubin").write_bytes(compiled.asm["cubin"])
        dump.with_suffix(".ptx").write_text(compiled.asm["ptx"])
    cubin = Path(os.environ.get("TMPDIR", "/tmp")) / "offline_compile.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    tool = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    out = subprocess.run([str(tool), "--dump-resource-usage", str(cubin)], capture_output=True, text=True).stdout
    line = next(line.strip() for line in out.splitlines() if "REG" in line)
    # DYNAMIC_SHARED: what decides programs per SM beside REG; MMA_A_HAZARDS: wgmma_hazards.py's count
    return (f"{line} DYNAMIC_SHARED:{compiled.metadata.shared} "
            f"MMA_A_HAZARDS:{len(wgmma_hazards.hazards(sass_steps.sass(cubin)))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", type=Path, default=None, help="folder for each kernel's TTGIR and cubin")
    args = ap.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    from turbovid.ops.attention import blockmap, sagesla_kernel, sla_gluon, sla_kernel, tail_kernel
    from turbovid.ops.fused import layernorm_kernel, rope_kernel
    from turbovid.ops import (causal_conv, conv_gluon, conv_gluon_coop, conv_gluon_wide, conv_head, rms_silu,
                              wide_attention)
    from turbovid.ops.quant import fp8_tensor_triton, int8, int8_gluon, int8_triton

    gcfg = int8_gluon.Config()

    def conv96_sig() -> dict:
        # Gluon descriptors carry their shared-memory layout in the type
        def desc(block: list[int], width: int = conv_gluon.BLOCK_K) -> str:
            return f"tensordesc<bf16[{','.join(map(str, block))}],{conv_gluon.shared_layout(len(block), width)!r}>"
        io = {f"{d}{i}": desc([1, 1, conv_gluon.TILE_COLS, n], n) for d in ("yd", "rd", "xd", "hd")
              for i, n in ((1, 64), (2, 32))}
        return dict(xd=desc([1, 1, conv_gluon.TILE_ROWS + 2, conv_gluon.TILE_COLS, conv_gluon.BLOCK_K]),
                    w1d=desc([64, conv_gluon.BLOCK_K]), w2d=desc([32, conv_gluon.BLOCK_K]), hslot="i32", cslot="i32",
                    **io, B="*bf16", G="*fp32", H="i32", W="i32", n_tiles="i32", scale="fp32", hist_from="i32")
    tcfg = tail_kernel.Config()

    def conv192_sig() -> dict:
        def desc(block: list[int], width: int = conv_gluon_wide.BLOCK_K) -> str:
            return f"tensordesc<bf16[{','.join(map(str, block))}],{conv_gluon.shared_layout(len(block), width)!r}>"
        n1, n2 = conv_gluon_wide.N1, conv_gluon_wide.N2
        io = {f"{d}{i}": desc([1, conv_gluon_wide.TILE_ROWS // 2, conv_gluon_wide.TILE_COLS, n], n)
              for d in ("yd", "rd", "xd", "hd") for i, n in ((1, n1), (2, n2))}
        return dict(xd=desc([1, 1, conv_gluon_wide.TILE_ROWS, conv_gluon_wide.TILE_COLS, conv_gluon_wide.BLOCK_K]),
                    w1d=desc([n1, conv_gluon_wide.BLOCK_K]), w2d=desc([n2, conv_gluon_wide.BLOCK_K]), hslot="i32",
                    cslot="i32", **io, B="*bf16", G="*fp32", H="i32", W="i32", n_tiles="i32", scale="fp32",
                    hist_from="i32")

    def conv384_sig(rows: int, cols: int) -> dict:
        def desc(block: list[int], width: int = conv_gluon_coop.BLOCK_K) -> str:
            return f"tensordesc<bf16[{','.join(map(str, block))}],{conv_gluon.shared_layout(len(block), width)!r}>"
        nb = conv_gluon_coop.NB
        io = {d: desc([1, rows // 2, cols, nb], nb) for d in ("yd", "rd", "xod", "hd")}
        return dict(xd=desc([1, 1, rows, cols, conv_gluon_coop.BLOCK_K]), wd=desc([nb, conv_gluon_coop.BLOCK_K]),
                    hslot="i32", cslot="i32", **io, B="*bf16", G="*fp32", H="i32", W="i32", n_tiles="i32",
                    scale="fp32", hist_from="i32")

    def gluon_consts(cfg) -> dict:
        return dict(HAS_BIAS=True, STAGES=cfg.stages, GROUP_M=cfg.group_m, UNROLL=cfg.unroll, WS=cfg.ws)

    def gluon_gemm_sig(cfg) -> dict:
        # Gluon descriptors carry their shared-memory layout in the type
        from triton.experimental.gluon import language as gl

        def desc(dtype: str, gl_dtype, block: list[int]) -> str:
            layout = gl.NVMMASharedLayout.get_default_for(block, gl_dtype)
            return f"tensordesc<{dtype}[{block[0]},{block[1]}],{layout!r}>"
        return dict(a_desc=desc("i8", gl.int8, [cfg.block_m, 128]), b_desc=desc("i8", gl.int8, [cfg.block_n, 128]),
                    c_desc=desc("bf16", gl.bfloat16, [cfg.block_m, cfg.block_n]), sa_ptr="*fp32", sb_ptr="*fp32",
                    bias_ptr="*bf16", M="i32", N="i32", K="i32", stride_sam="i32", stride_sbn="i32")

    def gluon_desc(dtype: str, gl_dtype, block: list[int]) -> str:
        from triton.experimental.gluon import language as gl

        return f"tensordesc<{dtype}[{block[0]},{block[1]}],{gl.NVMMASharedLayout.get_default_for(block, gl_dtype)!r}>"

    def sla_gluon_sig() -> dict:
        from triton.experimental.gluon import language as gl

        qd = gluon_desc("bf16", gl.bfloat16, [128, 128])
        kd = gluon_desc("bf16", gl.bfloat16, [64, 128])
        return dict(q_desc=qd, k_desc=kd, v_desc=kd, w_desc=qd, O="*bf16", OQ="*fp8e4nv", OS="*fp32", LUT="*i32",
                    PHISUM="*fp32", BIAS="*fp32", so_b="i32", so_h="i32", so_l="i32", L="i32", H="i32", NQ="i32",
                    KK="i32", qk_scale="fp32", lin_eps="fp32", ROWS_TOTAL="i32")

    slag = sla_gluon.Config()
    f32 = "*fp32"
    sage_sig = dict(
        Q="*bf16", KQ="*i8", K_SCALE=f32, VT="*fp8e4nv", VT2="*fp8e4nv", V_FROM_FP8=f32, O="*bf16", OQ="*bf16",
        OS=f32, LUT="*i32", KVW="*bf16", PHISUM=f32, BIAS=f32, sq_b="i32", sq_l="i32", sq_h="i32", so_b="i32",
        so_l="i32", so_h="i32", L="i32", H="i32", NQ="i32", NK="i32", LPAD="i32", KK="i32", qk_scale="fp32",
        lin_eps="fp32", ROWS_TOTAL="i32")
    sage_consts = dict(D=128, BLOCK_M=64, BLKK=128, LIN_MODE=1, HAS_BIAS=True, V_TERMS=2, TWO_LEVEL=True,
                       EXACT_GRID=False, USE_TMA=False, OUT_FP8=False)
    sage_div = ["Q", "KQ", "K_SCALE", "VT", "VT2", "V_FROM_FP8", "O", "OQ", "OS", "LUT", "KVW", "PHISUM", "BIAS",
                "sq_b", "sq_l", "sq_h", "so_b", "so_l", "so_h", "LPAD"]
    # the shipped Hopper launch: K / V^T through tensor descriptors, the output quantized for the fp8 o-projection
    sage_tma_sig = sage_sig | dict(KQ="tensordesc<i8[128,128]>", VT="tensordesc<fp8e4nv[128,128]>",
                                   VT2="tensordesc<fp8e4nv[128,128]>", OQ="*fp8e4nv")
    sla_sig = dict(
        Q="*bf16", K="*bf16", V="*bf16", O="*bf16", OQ="*fp8e4nv", OS=f32, LUT="*i32", KVW="*bf16", PHISUM=f32,
        BIAS=f32, sq_b="i32", sq_l="i32", sq_h="i32", sk_b="i32", sk_l="i32", sk_h="i32", sv_b="i32", sv_l="i32",
        sv_h="i32", so_b="i32", so_l="i32", so_h="i32", L="i32", H="i32", NQ="i32", KK="i32", qk_scale="fp32",
        lin_eps="fp32", ROWS_B="i32", ROWS_H="i32", COL_H="i32", ROWS_TOTAL="i32")
    sla_div = ["Q", "K", "V", "O", "OQ", "OS", "LUT", "KVW", "PHISUM", "BIAS", "sq_b", "sq_l", "sq_h", "sk_b", "sk_l",
               "sk_h", "sv_b", "sv_l", "sv_h", "so_b", "so_l", "so_h"]
    key_sig = dict(K="*bf16", V="*bf16", PK=f32, KSUM=f32, PHISUM=f32, KV=f32, VMAX=f32, KC="*bf16", VC="*bf16",
                   sk_b="i32", sk_l="i32", sk_h="i32", sv_b="i32", sv_l="i32", sv_h="i32", L="i32", H="i32",
                   NK="i32", NCH="i32", CHB="i32")
    key_div = ["K", "V", "PK", "KSUM", "PHISUM", "KV", "VMAX", "KC", "VC", "sk_b", "sk_l", "sk_h", "sv_b", "sv_l",
               "sv_h", "H", "NK"]
    # the key pass as blockmap.key_pass launches it (steps of 32 rows, RED = 256 * warps / D), K and V through
    # descriptors where their strides allow (the model's: slices of the fused qkv) and pointer loads otherwise
    key_warps, _, key_regs = blockmap.key_launch(blockmap.DEFAULT_STATS)
    sage_key = dict(D=128, BLKK=128, LINEAR=True, VABSMAX=True, COPY=False, STAGES=blockmap.DEFAULT_STATS.key_stages,
                    SUB=32, RED=16, USE_TMA=True, INTERPRET=False)
    sla_key = sage_key | dict(BLKK=64, VABSMAX=False)
    tma_key_sig = key_sig | dict(K="tensordesc<bf16[1,32,128]>", V="tensordesc<bf16[1,32,128]>")
    tma_key_div = [a for a in key_div if a not in ("K", "V")]  # descriptors carry no alignment hint
    key_opts = (key_warps, 3, key_regs)  # warps, num_stages (the launcher's default), maxnreg
    norm_sig = dict(X="*bf16", Y="*bf16", GATE=f32, XO="*bf16", H="*bf16", W=f32, BIAS=f32, SHIFT=f32, SCALE=f32,
                    HQ="*fp8e4nv", HS=f32, RN=f32, L="i32", C="i32", eps="fp32", stride_gate="i32",
                    stride_shift="i32", stride_scale="i32", rows_total="i32")
    norm_consts = dict(HAS_Y=True, HAS_GATE=True, WRITE_X=True, WRITE_H=True, HAS_AFFINE=False, HAS_SHIFT=True,
                       HAS_SCALE=True, QUANT_FP8=True, QUANT_TENSOR=False, INTERPRET=False, BLOCK_L=1, BLOCK_C=4096,
                       BLOCK_C2=1024)
    norm_div = ["X", "Y", "GATE", "XO", "H", "W", "BIAS", "SHIFT", "SCALE", "HQ", "HS", "RN", "L", "C", "stride_gate",
                "stride_shift", "stride_scale"]
    cases = [
        ("select, 1.3B/14B 480p sagesla (256 key blocks)", blockmap._select_kernel,
         dict(PQ=f32, PK=f32, KMEAN=f32, S=f32, LUT="*i32", NQ="i32", NK="i32", KK="i32", S_ROWS="i32", S_STRIDE="i32"),
         dict(D=128, QT=16, QD=16, CN=64, DC=32, NCH=2, CW=128, RS=16, EARLY=True),
         ["PQ", "PK", "KMEAN", "S", "LUT", "NQ", "NK", "S_ROWS", "S_STRIDE"], 4),
        ("key pass, sagesla (key blocks of 128), descriptors", blockmap._key_pass_kernel, tma_key_sig, sage_key,
         tma_key_div, *key_opts),
        ("key pass, sagesla (key blocks of 128), pointer loads", blockmap._key_pass_kernel, key_sig,
         sage_key | dict(USE_TMA=False), key_div, *key_opts),
        ("key pass, sla (key blocks of 64), descriptors", blockmap._key_pass_kernel, tma_key_sig, sla_key,
         tma_key_div, *key_opts),
        ("key pass, sla (key blocks of 64), pointer loads", blockmap._key_pass_kernel, key_sig,
         sla_key | dict(USE_TMA=False), key_div, *key_opts),
        ("sagesla attention (pointer loads, linear branch in the epilogue)", sagesla_kernel._sagesla_fwd_kernel,
         sage_sig, sage_consts, sage_div, 4),
        ("sagesla attention (TMA, fp8 output: the shipped Hopper launch)", sagesla_kernel._sagesla_fwd_kernel,
         sage_tma_sig, sage_consts | dict(USE_TMA=True, OUT_FP8=True),
         [a for a in sage_div if a not in ("KQ", "VT", "VT2")], 4),  # descriptors carry no alignment hint
        ("sla attention (head_dim 128 default: linear branch from the query pass, fp8 output)", sla_kernel._sla_fwd_kernel,
         sla_sig, dict(D=128, BLOCK_M=128, BLKK=64, GROUP=1, LIN_MODE=2, HAS_BIAS=True, USE_TMA=False, OUT_FP8=True,
                       INTERPRET=False), sla_div, 4, 2),
        ("gated residual + LayerNorm + modulation, fp8 output, C = 5120 (4096 + 1024 parts)",
         layernorm_kernel._add_norm_modulate_kernel, norm_sig, norm_consts, norm_div, 8),
        ("same, per-tensor fp8 output at the modulation's bound, row norms kept (--quant fp8)",
         layernorm_kernel._add_norm_modulate_kernel, norm_sig, norm_consts | dict(QUANT_TENSOR=True), norm_div, 8),
        ("sagesla attention (TMA, per-tensor fp8 output at the max|V| bound)", sagesla_kernel._sagesla_fwd_kernel,
         sage_tma_sig, sage_consts | dict(USE_TMA=True, OUT_FP8=2),
         [a for a in sage_div if a not in ("KQ", "VT", "VT2")], 4),
        ("tanh-GELU + per-tensor fp8 quantization at the bound from the row norm (the FFN's hidden layer)",
         fp8_tensor_triton._quant_kernel,
         dict(X="*bf16", BOUND=f32, Q="*fp8e4nv", SCALE=f32, M="i32", K="i32", stride_xm="i32", stride_qm="i32",
              RN=f32, SA=f32, coef_rn="fp32", coef_sa="fp32", const="fp32"),
         dict(GELU=True, FROM_NORM=True, INTERPRET=False, BLOCK_M=128, BLOCK_K=128),
         ["X", "BOUND", "Q", "SCALE", "K", "stride_xm", "stride_qm", "RN", "SA"], fp8_tensor_triton.QUANT_WARPS[True]),
        ("the FFN hidden layer's scale and 448 / bound for cuBLASLt's GELU-epilogue GEMM (one program)",
         fp8_tensor_triton._norm_bound_scales_kernel,
         dict(RN=f32, SA=f32, S=f32, MULT=f32, coef_rn="fp32", coef_sa="fp32", const="fp32"), dict(GELU=True),
         [], 1),
        ("q/k RMSNorm + 3D RoPE, C = 1536, split-pairs loads (the autotuned path)", rope_kernel._rmsnorm_rope_kernel,
         dict(X="*bf16", OUT="*bf16", W="*bf16", COS=f32, SIN=f32, L="i32", C="i32", eps="fp32", stride_x="i32"),
         dict(HALF_D=64, HAS_ROPE=True, SPLIT=1, BLOCK_L=1, BLOCK_P=1024),
         ["X", "OUT", "W", "COS", "SIN", "L", "C", "stride_x"], 4),
        ("W8A8 int8 GEMM, 128x256 tile in two halves, tensor descriptors (an autotune candidate)",
         int8_triton._scaled_mm_kernel,
         dict(a_ptr="tensordesc<i8[128,128]>", b_ptr="tensordesc<i8[128,128]>", c_ptr="*bf16", sa_ptr=f32,
              sb_ptr=f32, bias_ptr="*bf16", M="i32", N="i32", K="i32", M_BUCKET="i32", stride_am="i32",
              stride_bn="i32", stride_cm="i32", stride_sam="i32", stride_sak="i32", stride_sbn="i32", stride_sbk="i32"),
         dict(ACT_ROWS=128, IS_INT8=True, HAS_BIAS=True, USE_TMA=True, BLOCK_M=128, BLOCK_N=256, SPLIT_N=2,
              GROUP_M=8, MAGIC=False),
         ["c_ptr", "sa_ptr", "sb_ptr", "bias_ptr", "N", "K", "stride_am", "stride_bn", "stride_cm"], 8),
        ("sla attention in Gluon (Hopper: two consumer warpgroups, a loader warp, the linear branch in the epilogue)",
         sla_gluon._sla_attn_kernel, sla_gluon_sig(),
         dict(LIN_MODE=1, HAS_BIAS=True, OUT_FP8=0, GROUP=slag.group, STAGES=slag.stages), [], 4, 3, slag.maxnreg),
        ("W8A8 int8 GEMM in Gluon (Hopper: persistent, a loader warp, wgmma issued ahead of the promotion)",
         int8_gluon._int8_block_gemm_kernel, gluon_gemm_sig(gcfg),
         gluon_consts(gcfg), [], gcfg.num_warps, 3, gcfg.maxnreg),
        ("tanh-GELU + fp8 activation quantization (the FFN down-projection's input)", int8_triton._quant_act_kernel,
         dict(x_ptr="*bf16", q_ptr="*fp8e4nv", s_ptr=f32, tbl_ptr=f32, M="i32", K="i32", stride_xm="i32",
              stride_qm="i32", stride_sr="i32", stride_sk="i32"),
         dict(ROW_SCALES=True, IS_FP8=True, INTERPRET=False, USE_TABLE=False, EXP_LO=int8.TABLE_EXPONENTS[0],
              EXP_HI=int8.TABLE_EXPONENTS[1], PRE_GELU=True),
         ["x_ptr", "q_ptr", "s_ptr", "tbl_ptr", "K", "stride_xm", "stride_qm"], int8_triton.QUANT_WARPS[True]),
        ("VAE RMS norm + SiLU, stacked taps, the residual sum formed and stored (96 channels)",
         rms_silu._rms_silu_stream_kernel,
         dict(X="*bf16", H="*bf16", G=f32, B="*bf16", Y="*bf16", HN="*bf16", R="*bf16", XO="*bf16", N="i32", C="i32",
              HR="i32", N_OUT="i32", y_stride="i32", frame_rows="i32", scale="fp32", SKIP="i32", V0="i32"),
         dict(SILU=True, HAS_BIAS=True, HAS_HIST=True, TAPS=3, BLOCK_N=rms_silu._blocks(96)[0], BLOCK_C=128,
              HAS_RES=True, WRITE_X=True),
         ["X", "H", "G", "B", "Y", "HN", "R", "XO", "C", "y_stride", "frame_rows"], 4),
        # multi-row tiles with fence_a's wait, as launched on an H100 (their A tile passes through registers)
        *((f"VAE causal 3x3x3 conv, {c} -> {c} channels ({n1} + {n2}), {rows} x {bm // rows}-pixel tiles "
           "(480p), descriptors, each K step's products waited for", causal_conv._causal_conv_kernel,
           dict(X="*bf16", XH="*bf16", XD=f"tensordesc<bf16[1,1,{rows},{bm // rows},{bk}]>", HSLOT="i32",
                CSLOT="i32", Wt="*bf16", WD1=f"tensordesc<bf16[{bk},{n1}]>", WD2=f"tensordesc<bf16[{bk},{n2}]>",
                B="*bf16", Y="*bf16", H="i32", W="i32", COUT="i32", NP="i32", ST="i32", SH="i32", SW="i32", OH="i32",
                OW="i32", R="*bf16", XO="*bf16", G="*bf16", scale="fp32"),
           dict(C=c, N1=n1, N2=n2, HAS_N2=True, HAS_BIAS=False, USE_TMA=True, BLOCK_M=bm, BLOCK_K=bk, ROWS=rows,
                PRECISION="ieee", FUSED=False, HAS_RES=False, WRITE_X=False, NORM=False, SILU=False, TMA_IO=False,
                HAS_HIST=True, HN=None, HND1=None, HND2=None, hist_from=0, HIST_OUT=False,
                YD1=None, YD2=None, RD1=None, RD2=None, XOD1=None, XOD2=None, KT=3, KS=3, A_FENCE=True),
           ["X", "Wt", "B", "Y", "W", "COUT", "NP", "ST", "SH", "SW"], warps, stages)
          for c, n1, n2, bm, bk, rows, warps, stages in ((96, 64, 32, 256, 32, 4, 4, 4),
                                                          (384, 256, 128, 128, 64, 8, 8, 3))),
        *(("VAE causal 3x3x3 conv as above, + bias + residual (the sum stored) + the next RMS norm + SiLU "
           f"in its epilogue, the next history written too, {c} -> {c} channels", causal_conv._causal_conv_kernel,
           dict(X="*bf16", XH="*bf16", XD=f"tensordesc<bf16[1,1,{rows},{bm // rows},{bk}]>", HSLOT="i32",
                CSLOT="i32", Wt="*bf16",
                WD1=f"tensordesc<bf16[{bk},{n1}]>", WD2=f"tensordesc<bf16[{bk},{n2}]>", B="*bf16", Y="*bf16",
                H="i32", W="i32", COUT="i32", NP="i32", ST="i32", SH="i32", SW="i32", OH="i32", OW="i32",
                R="*bf16", XO="*bf16", G=f32, scale="fp32", HN="*bf16", hist_from="i32",
                **{f"{d}{i}": f"tensordesc<bf16[1,{rows},{bm // rows},{n}]>" for d in ("YD", "RD", "XOD", "HND")
                   for i, n in ((1, n1), (2, n2))}),
           dict(C=c, N1=n1, N2=n2, HAS_N2=True, HAS_BIAS=True, USE_TMA=True, BLOCK_M=bm, BLOCK_K=bk, ROWS=rows,
                PRECISION="ieee", FUSED=True, HAS_RES=True, WRITE_X=True, NORM=True, SILU=True, TMA_IO=True,
                HAS_HIST=True, HIST_OUT=True, KT=3, KS=3, A_FENCE=rows > 1),
           ["X", "Wt", "B", "Y", "W", "COUT", "NP", "ST", "SH", "SW", "R", "XO", "G"], warps, stages)
          for c, n1, n2, bm, bk, rows, warps, stages in ((96, 64, 32, 256, 32, 4, 4, 4),
                                                          (192, 128, 64, 128, 64, 1, 4, 3),
                                                          (384, 256, 128, 128, 64, 1, 8, 3))),
        *(("VAE upsampler: one phase's 2x2 conv on the conv kernel, + bias (stored) + the next RMS norm + SiLU "
           f"in its epilogue, the next history written too, {c} -> {cout} channels", causal_conv._causal_conv_kernel,
           dict(X="*bf16", XH="*bf16", XD=f"tensordesc<bf16[1,1,{rows},{bm // rows},{bk}]>", HSLOT="i32",
                CSLOT="i32", Wt="*bf16",
                WD1=f"tensordesc<bf16[{bk},{n1}]>", WD2=f"tensordesc<bf16[{bk},{n2}]>", B="*bf16", Y="*bf16",
                H="i32", W="i32", COUT="i32", NP="i32", ST="i32", SH="i32", SW="i32", OH="i32", OW="i32",
                XO="*bf16", G=f32, scale="fp32", HN="*bf16", hist_from="i32",
                **{f"{d}{i}": f"tensordesc<bf16[1,{rows},{bm // rows},{n}]>" for d in ("YD", "XOD", "HND")
                   for i, n in ((1, n1), (2, n2))}),
           dict(C=c, N1=n1, N2=n2, HAS_N2=True, HAS_BIAS=True, USE_TMA=True, BLOCK_M=bm, BLOCK_K=bk, ROWS=rows,
                PRECISION="ieee", FUSED=True, HAS_RES=False, WRITE_X=True, NORM=True, SILU=True, TMA_IO=True,
                HAS_HIST=False, HIST_OUT=True, KT=1, KS=2, R=None, RD1=None, RD2=None,
                A_FENCE=rows > 1),
           ["X", "Wt", "B", "Y", "W", "COUT", "NP", "ST", "SH", "SW", "XO", "G"], warps, stages)
          for c, cout, n1, n2, bm, bk, rows, warps, stages in ((384, 192, 128, 64, 128, 64, 1, 4, 3),
                                                               (192, 96, 64, 32, 256, 64, 8, 4, 4))),
        *((f"VAE 96 -> 96 conv in Gluon (warp-specialized, persistent, 6 x 64-pixel tiles), {what}",
           conv_gluon._conv96_kernel, conv96_sig(),
           dict(C=96, STAGES=conv_gluon.stages(False), A_LAYOUT=conv_gluon.shared_layout(2), HAS_BIAS=True,
                HAS_RES=False, WRITE_X=False, NORM=norm, SILU=norm, HIST_OUT=norm, EPI=conv_gluon.epilogue_buffers(False),
                CONSUMER_REGS=conv_gluon.CONSUMER_REGS),
           [], 4, 3, conv_gluon.MAXNREG)
          for what, norm in (("+ bias", False), ("+ bias + the next RMS norm + SiLU, the history written too", True))),
        *((f"VAE 192 -> 192 conv in Gluon (ping-pong consumers, 4 x 32-pixel tiles), {what}",
           conv_gluon_wide._conv192_kernel, conv192_sig(),
           dict(C=192, STAGES=conv_gluon_wide.STAGES, A_LAYOUT=conv_gluon.shared_layout(2, conv_gluon_wide.BLOCK_K), HAS_BIAS=True,
                HAS_RES=res, WRITE_X=res, NORM=norm, SILU=norm, HIST_OUT=norm,
                CONSUMER_REGS=conv_gluon_wide.CONSUMER_REGS),
           [], 4, 3, conv_gluon_wide.MAXNREG)
          for what, norm, res in (("+ bias", False, False),
                                  ("+ bias + the next RMS norm + SiLU, the history written too", True, False),
                                  ("+ bias + residual (the sum stored) + the next RMS norm + SiLU + history", True,
                                   True))),
        *((f"VAE {c} -> 384 conv in Gluon (cooperative consumers, {rows} x {cols}-pixel tiles), {what}",
           conv_gluon_coop._conv384_kernel, conv384_sig(rows, cols),
           dict(C=c, STAGES=conv_gluon_coop.STAGES, A_LAYOUT=conv_gluon.shared_layout(2, conv_gluon_coop.BLOCK_K),
                HAS_BIAS=True, HAS_RES=res, WRITE_X=res, NORM=norm, SILU=norm, HIST_OUT=norm,
                CONSUMER_REGS=conv_gluon_coop.CONSUMER_REGS),
           [], 4, 3, conv_gluon_coop.MAXNREG)
          for what, c, rows, cols, norm, res in (
              ("+ bias", 384, 8, 16, False, False),
              ("+ bias + the next RMS norm + SiLU, the history written too", 192, 4, 32, True, False),
              ("+ bias + residual (the sum stored) + the next RMS norm + SiLU + history", 384, 16, 8, True, True))),
        ("VAE middle attention: one head of 384 (256 + 128), 128 queries x 32 keys a step",
         wide_attention._wide_attn_kernel,
         dict(Q="*bf16", K="*bf16", V="*bf16", O="*bf16", L="i32", sq_b="i32", sq_l="i32", sk_b="i32", sk_l="i32",
              sv_b="i32", sv_l="i32", so_b="i32", so_l="i32", scale_log2="fp32"),
         dict(D1=256, D2=128, HAS_D2=True, BLOCK_M=128, BLOCK_N=32, PRECISION="ieee"),
         ["Q", "K", "V", "O", "sq_b", "sq_l", "sk_b", "sk_l", "sv_b", "sv_l", "so_b", "so_l"], 8, 2),
        ("VAE head by taps: RMS norm + SiLU (residual sum formed), the 27 taps' products, their sums (96 -> 3)",
         conv_head._stream_kernel,
         dict(X="*bf16", G=f32, B="*bf16", R="*bf16", XO="*bf16", WZ="*bf16", HB=f32, PI=f32, PO=f32, Y="*bf16",
              T="i32", H="i32", W="i32", C="i32", COUT="i32", scale="fp32"),
         dict(SILU=True, HAS_BIAS=True, HAS_RES=True, WRITE_X=False, HAS_HB=True, HAS_PI=True,
              ROWS=conv_head.STREAM_ROWS, COLS=conv_head.STREAM_COLS, C1=64, C2=32, CP=4, P=128,
              NCOL=conv_head.STREAM_NCOL, PRECISION="ieee"),
         ["X", "G", "B", "R", "XO", "WZ", "HB", "PI", "PO", "Y", "C"], conv_head.STREAM_WARPS,
         conv_head.STREAM_STAGES),
        ("cross-attention over a padded prompt: its rows and one padding row (tail_kernel)",
         tail_kernel._tail_attn_kernel,
         dict(Q="*bf16", K="*bf16", V="*bf16", O="*bf16", N="*i32", Lq="i32", Lk="i32", H="i32", sq_b="i32",
              sq_l="i32", sq_h="i32", sk_b="i32", sk_l="i32", sk_h="i32", sv_b="i32", sv_l="i32", sv_h="i32",
              so_b="i32", so_l="i32", so_h="i32", qk_scale="fp32"),
         dict(D=128, BLOCK_M=tcfg.block_m, BLOCK_N=tcfg.block_n, IEEE=False),
         ["Q", "K", "V", "O", "sq_b", "sq_l", "sk_b", "sk_l", "sv_b", "sv_l", "so_b", "so_l"], tcfg.num_warps,
         tcfg.num_stages),
    ]
    print(f"triton {triton.__version__}, target sm_90")
    for i, (name, kernel, sig, consts, div16, warps, *extra) in enumerate(cases):  # extra: num_stages (3), maxnreg
        dump = None if args.dump is None else args.dump / f"{i}{kernel.__name__}.ttgir"
        if dump is not None:
            args.dump.mkdir(parents=True, exist_ok=True)
        res = compile_sm90(kernel, sig, consts, div16, warps, *extra, dump=dump)
        cap = f", at most {extra[1]} registers" if len(extra) > 1 and extra[1] else ""
        print(f"{name} ({warps} warps{cap}): {res}")


if __name__ == "__main__":
    main()
