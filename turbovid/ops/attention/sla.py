"""The "sla" attention backend: sparse-linear attention through Triton, PyTorch reference elsewhere.

Registered as the custom ops `turbovid::sla` and `turbovid::sla_fp8` (its output quantized for an
fp8 o-projection), with fake implementations, so torch.compile traces the DiT through them.
proj_weight None skips the linear branch (a zero-initialised proj_l with zero bias contributes
nothing either, so this is the same function and saves the work).
"""
from typing import Callable, Optional

import torch

from turbovid.ops.dispatch import call

from . import Backend, allow_interpreter, cpu_interpreter_allowed, log_once, register_backend  # noqa: F401
from .sla_reference import check_topk, sla_reference

BLKQ, BLKK = 128, 64  # block map of TurboDiffusion's SLA inference (query blocks, key blocks)
KERNEL_HEAD_DIMS = (64, 128)  # other head dims run the reference (logged once)


def kernel_unavailable(device: torch.device, head_dim: int = 128) -> Optional[str]:
    """None when the Triton kernels can run on `device`, else a one-line reason."""
    if head_dim not in KERNEL_HEAD_DIMS:
        return f"the kernels support head_dim {KERNEL_HEAD_DIMS}, got {head_dim}"
    try:
        # Looked up by attribute at call time, so tests can reload them under TRITON_INTERPRET=1.
        from . import sagesla_kernel, sla_kernel
    except ImportError as e:
        return f"triton is not importable ({e}); pip install 'turbovid[triton]'"
    interpreted = sla_kernel.INTERPRETED or sagesla_kernel.INTERPRETED
    if device.type == "cuda":
        return "the kernels were loaded under TRITON_INTERPRET=1" if interpreted else None
    if device.type == "cpu" and interpreted and cpu_interpreter_allowed():
        return None
    return f"the Triton kernels need a CUDA device, got {device.type}"


def check_inputs(q, k, v, topk, proj_weight, proj_bias) -> None:
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"sla expects q, k, v of one shape [B, L, H, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise ValueError(f"sla expects q, k, v of one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    D = q.shape[-1]
    check_topk(topk)
    if proj_weight is not None and tuple(proj_weight.shape) != (D, D):
        raise ValueError(f"sla proj_weight must be [{D}, {D}] (proj_l of the layer), got {tuple(proj_weight.shape)}")
    if proj_bias is not None and (proj_weight is None or tuple(proj_bias.shape) != (D,)):
        raise ValueError(f"sla proj_bias must be [{D}] and come with proj_weight, got {tuple(proj_bias.shape)}")


def kernel_inputs(*xs: torch.Tensor) -> list[torch.Tensor]:
    """fp16/bf16 with unit stride on D, as the kernels want; float32 computes in bf16 (as the reference does)."""
    out = []
    for x in xs:
        if x.dtype not in (torch.float16, torch.bfloat16):
            x = x.to(torch.bfloat16)
        out.append(x if x.stride(-1) == 1 else x.contiguous())
    return out


def fp8_output(out: torch.Tensor, out_fp8=True) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L, H, D] -> (e4m3 [B, L, H, D], scales [ceil(H*D/128), B*L]): an fp8 linear's own rule,
    for the paths whose kernel does not quantize in its epilogue; out_fp8="tensor": (e4m3, scale [1])
    by the output's own amax (quant.fp8_tensor)."""
    from turbovid.ops.quant.fp8 import quantize_act_fp8, quantize_per_tensor

    B, L, H, D = out.shape
    flat = out.reshape(B * L, H * D)
    q8, s = quantize_per_tensor(flat) if out_fp8 == "tensor" else quantize_act_fp8(flat)
    return q8.view(out.shape), s


def fp8_output_fake(q: torch.Tensor, out_fp8=True) -> tuple[torch.Tensor, torch.Tensor]:
    B, L, H, D = q.shape
    shape = (1,) if out_fp8 == "tensor" else (-(-H * D // 128), B * L)
    return q.new_empty(q.shape, dtype=torch.float8_e4m3fn), q.new_empty(shape, dtype=torch.float32)


def kernel_quantizes_output(q: torch.Tensor) -> bool:
    """The kernels' epilogue writes the fp8 output for half-precision q with head_dim 128 (one
    scale group per head); other inputs are quantized after the kernel by fp8_output."""
    return q.shape[-1] == 128 and q.dtype in (torch.float16, torch.bfloat16)


def run_sla(q, k, v, topk, proj_weight, proj_bias, blkq, blkk, out_fp8: bool):
    reason = kernel_unavailable(q.device, q.shape[-1])
    if reason is not None:
        log_once(f"sla: running the PyTorch reference ({reason})")
        out = sla_reference(q, k, v, topk, proj_weight, proj_bias, blkq, blkk).to(q.dtype).contiguous()
        return fp8_output(out, out_fp8) if out_fp8 else out
    from . import sla_kernel

    return call_kernel(sla_kernel.sla_forward, q, k, v, topk, proj_weight, proj_bias, blkq, blkk, out_fp8)


def call_kernel(forward: Callable, q, k, v, topk, proj_weight, proj_bias, blkq, blkk, out_fp8):
    """Run a kernel's forward (sla_forward / sagesla_forward) on q's dtype in and out: quantized for
    an fp8 linear (out_fp8 True / "tensor") in its epilogue where it can, else after it (fp8_output)."""
    qk, kk, vk = kernel_inputs(q, k, v)
    fused = bool(out_fp8) and kernel_quantizes_output(q)
    out = forward(qk, kk, vk, topk, proj_weight, proj_bias, blkq, blkk, out_fp8=out_fp8 if fused else False)
    if fused:
        return out
    out = out.to(q.dtype).contiguous()
    return fp8_output(out, out_fp8) if out_fp8 else out


def register_ops(name: str, run: Callable) -> tuple[Callable, Callable, Callable]:
    """Register `run(q, k, v, topk, proj_weight, proj_bias, blkq, blkk, out_fp8)` as three custom ops
    with fake implementations, so torch.compile traces the DiT through them: turbovid::<name>
    (output in q's dtype), turbovid::<name>_fp8 (output quantized for an fp8 linear, block scales)
    and turbovid::<name>_fp8t (one per-tensor scale)."""

    def plain(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: float, proj_weight: Optional[torch.Tensor],
        proj_bias: Optional[torch.Tensor], blkq: int, blkk: int,
    ) -> torch.Tensor:
        return run(q, k, v, topk, proj_weight, proj_bias, blkq, blkk, False)

    def quantized(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: float, proj_weight: Optional[torch.Tensor],
        proj_bias: Optional[torch.Tensor], blkq: int, blkk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return run(q, k, v, topk, proj_weight, proj_bias, blkq, blkk, True)

    def per_tensor(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: float, proj_weight: Optional[torch.Tensor],
        proj_bias: Optional[torch.Tensor], blkq: int, blkk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return run(q, k, v, topk, proj_weight, proj_bias, blkq, blkk, "tensor")

    plain_op = torch.library.custom_op(f"turbovid::{name}", plain, mutates_args=())
    plain_op.register_fake(lambda q, *rest: q.new_empty(q.shape))
    fp8_op = torch.library.custom_op(f"turbovid::{name}_fp8", quantized, mutates_args=())
    fp8_op.register_fake(lambda q, *rest: fp8_output_fake(q))
    fp8t_op = torch.library.custom_op(f"turbovid::{name}_fp8t", per_tensor, mutates_args=())
    fp8t_op.register_fake(lambda q, *rest: fp8_output_fake(q, "tensor"))
    return plain_op, fp8_op, fp8t_op


def call_op(ops: tuple[Callable, Callable, Callable], run: Callable, q, k, v, topk, proj_weight, proj_bias, blkq,
            blkk, out_fp8):
    """register_ops' op for out_fp8 where torch.compile traces, `run` itself in eager code (ops/dispatch.py)."""
    op = ops[2] if out_fp8 == "tensor" else ops[1] if out_fp8 else ops[0]
    return call(op, lambda *a: run(*a, out_fp8), q, k, v, float(topk), proj_weight, proj_bias, blkq, blkk)


sla_ops = register_ops("sla", run_sla)


def sla_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    topk: float,
    proj_weight: Optional[torch.Tensor],
    proj_bias: Optional[torch.Tensor],
    blkq: int = BLKQ,
    blkk: int = BLKK,
    out_fp8: bool | str = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sparse-linear attention of q over k, v ([B, L, H, D] each); returns [B, L, H, D] in q's dtype,
    or with out_fp8 (True: block scales, "tensor": one scale) that output quantized for an fp8 linear
    (e4m3 values, scales; see fp8_output)."""
    check_inputs(q, k, v, topk, proj_weight, proj_bias)
    return call_op(sla_ops, run_sla, q, k, v, topk, proj_weight, proj_bias, blkq, blkk, out_fp8)


register_backend(Backend("sla", sla_attention, lambda device: None, fp8_output=True))
