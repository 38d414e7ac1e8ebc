"""The "sagesla" attention backend: SLA with int8 Q.K^T and fp8 P.V (Triton; Hopper, Ada, Blackwell).

Same block map granularity as the reference SageSLA on Hopper (query blocks of 64, key blocks of
128) and the same linear branch as sla. Registered as the custom ops `turbovid::sagesla` and
`turbovid::sagesla_fp8` (sla.register_ops). On a GPU without fp8 (before Ada) or without Triton it
runs sla instead, on the CPU the sla reference; each fallback logs one line. `unavailable` names
the reason, so "auto" picks sla there.
"""
from typing import Optional

import torch

from . import Backend, register_backend, sla
from .sla import call_kernel, call_op, check_inputs, kernel_unavailable, log_once, register_ops, run_sla

BLKQ, BLKK = 64, 128


def fp8_unavailable(device: torch.device, head_dim: int = 128) -> Optional[str]:
    """None when the sagesla kernel can run on `device`, else a one-line reason."""
    reason = kernel_unavailable(device, head_dim)
    if reason is not None or device.type != "cuda":
        return reason
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"fp8 tensor cores need sm89+ (Ada, Hopper, Blackwell), this GPU is sm{major}{minor}"
    return None


def run_sagesla(q, k, v, topk, proj_weight, proj_bias, blkq, blkk, out_fp8):
    reason = fp8_unavailable(q.device, q.shape[-1])
    if reason is not None:
        # sla's own block map, as the reference SageSLA uses off Hopper
        log_once(f"sagesla: running sla instead ({reason})")
        return run_sla(q, k, v, topk, proj_weight, proj_bias, sla.BLKQ, sla.BLKK, out_fp8)
    from . import sagesla_kernel

    return call_kernel(sagesla_kernel.sagesla_forward, q, k, v, topk, proj_weight, proj_bias, blkq, blkk, out_fp8)


sagesla_ops = register_ops("sagesla", run_sagesla)


def sagesla_attention(
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
    """SageSLA attention of q over k, v ([B, L, H, D] each); returns [B, L, H, D] in q's dtype, or
    with out_fp8 that output quantized for an fp8 linear (as sla_attention)."""
    check_inputs(q, k, v, topk, proj_weight, proj_bias)
    return call_op(sagesla_ops, run_sagesla, q, k, v, topk, proj_weight, proj_bias, blkq, blkk, out_fp8)


def _unavailable(device: torch.device) -> Optional[str]:
    device = torch.device(device)
    if device.type != "cuda":
        return f"sagesla needs a CUDA GPU with fp8 (sm89+), got {device.type}"
    return fp8_unavailable(device)


register_backend(Backend("sagesla", sagesla_attention, _unavailable, fp8_output=True))
