"""Fused kernels for the memory-bound parts of a DiT block, each with a PyTorch reference.

    norm_modulate(x, shift, scale)                LayerNorm (+affine) then x * (1 + scale) + shift
                                                  (quant="fp8": returned quantized, an Fp8Activation)
    add_norm_modulate(x, y, gate, shift, scale)   x + y * gate, then the same norm: (new x, normed)
    gated_residual(x, y, gate)                    x + y * gate
    rmsnorm_rope(x, weight, cos, sin)             q/k RMSNorm over all heads, then 3D RoPE per head
    rmsnorm(x, weight)                            the RMSNorm alone (cross-attention's q)
    rope_tables(F, H, W, head_dim)                the cos/sin tables rmsnorm_rope takes

The Triton path runs on CUDA tensors (and, for tests, on CPU tensors in Triton's interpreter);
anything else, or TURBOVID_FUSED=0 / set_enabled(False), runs the PyTorch reference, logged once.
The kernels are registered as torch.library custom ops so torch.compile traces through them.
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch

from turbovid.ops.block_reference import (
    add_norm_modulate_ref,
    check_quant,
    gated_residual_ref,
    norm_modulate_ref,
    rmsnorm_ref,
    rmsnorm_rope_ref,
    rope_tables,
)
from turbovid.ops.dispatch import call

log = logging.getLogger("turbovid.fused")

__all__ = [
    "add_norm_modulate", "norm_modulate", "gated_residual", "rmsnorm_rope", "rmsnorm", "rope_tables",
    "set_enabled", "disabled", "unavailable_reason",
    "add_norm_modulate_ref", "norm_modulate_ref", "gated_residual_ref", "rmsnorm_rope_ref", "rmsnorm_ref",
]

_enabled = os.environ.get("TURBOVID_FUSED", "1") != "0"
_cpu_interpreter = False  # tests opt in; elsewhere CPU tensors always take the reference
_logged: set[str] = set()

try:  # Triton is optional: without it every call takes the reference path.
    # Looked up by attribute at call time, so a test can reload them under TRITON_INTERPRET=1.
    from . import layernorm_kernel as _ln
    from . import rope_kernel as _rope

    _import_error = None
except ImportError as e:  # pragma: no cover - depends on the install
    _import_error = f"triton not importable ({e})"


def add_norm_modulate_triton(*args):
    return _ln.add_norm_modulate_triton(*args)


def rmsnorm_rope_triton(*args):
    return _rope.rmsnorm_rope_triton(*args)


def set_enabled(flag: bool) -> None:
    """Turn the Triton path on or off for the whole process (the reference always works)."""
    global _enabled
    _enabled = bool(flag)


def allow_interpreter(flag: bool) -> None:
    """Let CPU tensors run the kernels in Triton's interpreter (tests; needs TRITON_INTERPRET=1 at import)."""
    global _cpu_interpreter
    _cpu_interpreter = bool(flag)


@contextlib.contextmanager
def disabled():
    """Run the block under the PyTorch references (used to check the fast path against the plain one)."""
    global _enabled
    old, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = old


def unavailable_reason(x: torch.Tensor) -> str | None:
    """None when the Triton kernels will run on x, else why not."""
    if not _enabled:
        return "disabled (TURBOVID_FUSED=0 or set_enabled(False))"
    if _import_error is not None:
        return _import_error
    interpreted = _ln.INTERPRETED and _rope.INTERPRETED
    if not x.is_cuda and not (interpreted and _cpu_interpreter):
        return f"tensors on {x.device.type}, not CUDA"
    if x.is_cuda and (_ln.INTERPRETED or _rope.INTERPRETED):
        return "kernels were loaded under TRITON_INTERPRET=1"
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {x.dtype} not supported"
    return None


def _use_triton(x: torch.Tensor) -> bool:
    reason = unavailable_reason(x)
    if reason is None:
        return True
    if reason not in _logged:
        _logged.add(reason)
        log.info("fused DiT kernels not used: %s; running the PyTorch reference", reason)
    return False


# ---- input checks (one-line errors naming the expected shapes) -------------------------------

def _check_x(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 3:
        raise ValueError(f"{name} must be [B, L, C], got shape {tuple(x.shape)}")
    return x.contiguous()


def _check_rows(name: str, x: torch.Tensor) -> torch.Tensor:
    # [B, L, C] with unit channel stride and one row stride: a q/k column slice of a fused q/k/v
    # GEMM output passes without a copy (the RMSNorm/RoPE kernel takes the row stride)
    if x.ndim != 3:
        raise ValueError(f"{name} must be [B, L, C], got shape {tuple(x.shape)}")
    if x.stride(2) == 1 and x.stride(0) == x.shape[1] * x.stride(1):
        return x
    return x.contiguous()


def _per_sample(name: str, v: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """Accept [B, C] or [B, 1, C] adaLN vectors; return a [B, C] view with unit channel stride.

    No copy for the usual case (the DiT's `(modulation + e).unbind(1)` slices): the kernel takes the row stride.
    """
    if v is None:
        return None
    b, _, c = x.shape
    if v.ndim == 3 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 2 or v.shape[1] != c or v.shape[0] not in (1, b):
        raise ValueError(f"{name} must be [B, C] or [B, 1, C] with B={b}, C={c}; got shape {tuple(v.shape)}")
    v = v.expand(b, c)
    return v if v.stride(1) == 1 else v.contiguous()


def _channel(name: str, v: torch.Tensor | None, c: int) -> torch.Tensor | None:
    if v is not None and v.shape != (c,):
        raise ValueError(f"{name} must have shape ({c},), got {tuple(v.shape)}")
    return None if v is None else v.contiguous()


# ---- implementations, and the custom ops torch.compile sees (eager code calls the former) -------

def _norm_modulate(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
    shift: torch.Tensor | None, scale: torch.Tensor | None, eps: float, out_dtype: torch.dtype,
) -> torch.Tensor:
    return add_norm_modulate_triton(x, None, None, weight, bias, shift, scale, eps, out_dtype, False, True)[1]


_norm_modulate_op = torch.library.custom_op("turbovid::norm_modulate", _norm_modulate, mutates_args=())


@_norm_modulate_op.register_fake
def _(x, weight, bias, shift, scale, eps, out_dtype):
    return torch.empty(x.shape, dtype=out_dtype, device=x.device)


def _add_norm_modulate(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor | None,
    bias: torch.Tensor | None, shift: torch.Tensor | None, scale: torch.Tensor | None,
    eps: float, out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    return add_norm_modulate_triton(x, y, gate, weight, bias, shift, scale, eps, out_dtype, True, True)


_add_norm_modulate_op = torch.library.custom_op("turbovid::add_norm_modulate", _add_norm_modulate, mutates_args=())


@_add_norm_modulate_op.register_fake
def _(x, y, gate, weight, bias, shift, scale, eps, out_dtype):
    return torch.empty_like(x), torch.empty(x.shape, dtype=out_dtype, device=x.device)


def _no_row_norm(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.float32, device=x.device)  # block scales: no row norm is kept


def _quant_fakes(x: torch.Tensor, per_tensor: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, l, c = x.shape
    shape = (1,) if per_tensor else (-(-c // 128), b * l)
    return (torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device),
            torch.empty(shape, dtype=torch.float32, device=x.device),
            torch.empty(1 if per_tensor else 0, dtype=torch.float32, device=x.device))


def _tensor_bound(x: torch.Tensor, weight, bias, shift, scale, per_tensor: bool) -> torch.Tensor | None:
    if not per_tensor:
        return None
    from turbovid.ops.quant import fp8_tensor_triton

    return fp8_tensor_triton.ln_bound(x.shape[-1], weight, bias, shift, scale)


def _norm_modulate_fp8(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
    shift: torch.Tensor | None, scale: torch.Tensor | None, eps: float, out_dtype: torch.dtype, per_tensor: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    bound = _tensor_bound(x, weight, bias, shift, scale, per_tensor)
    h = add_norm_modulate_triton(x, None, None, weight, bias, shift, scale, eps, out_dtype, False, True, True,
                                 bound)[1]
    return h if per_tensor else (*h, _no_row_norm(x))  # (q, scale, row norm) / (q, scales, empty)


_norm_modulate_fp8_op = torch.library.custom_op("turbovid::norm_modulate_fp8", _norm_modulate_fp8, mutates_args=())


@_norm_modulate_fp8_op.register_fake
def _(x, weight, bias, shift, scale, eps, out_dtype, per_tensor):
    return _quant_fakes(x, per_tensor)


def _add_norm_modulate_fp8(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor | None,
    bias: torch.Tensor | None, shift: torch.Tensor | None, scale: torch.Tensor | None,
    eps: float, out_dtype: torch.dtype, per_tensor: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    bound = _tensor_bound(x, weight, bias, shift, scale, per_tensor)
    x_out, h = add_norm_modulate_triton(x, y, gate, weight, bias, shift, scale, eps, out_dtype, True, True, True,
                                        bound)
    return (x_out, *h) if per_tensor else (x_out, *h, _no_row_norm(x))


_add_norm_modulate_fp8_op = torch.library.custom_op("turbovid::add_norm_modulate_fp8", _add_norm_modulate_fp8,
                                                    mutates_args=())


@_add_norm_modulate_fp8_op.register_fake
def _(x, y, gate, weight, bias, shift, scale, eps, out_dtype, per_tensor):
    return (torch.empty_like(x), *_quant_fakes(x, per_tensor))


def _gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    return add_norm_modulate_triton(x, y, gate, None, None, None, None, 0.0, x.dtype, True, False)[0]


_gated_residual_op = torch.library.custom_op("turbovid::gated_residual", _gated_residual, mutates_args=())


@_gated_residual_op.register_fake
def _(x, y, gate):
    return torch.empty_like(x)


def _rmsnorm_rope(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float, out_dtype: torch.dtype
) -> torch.Tensor:
    return rmsnorm_rope_triton(x, weight, cos, sin, eps, out_dtype)


_rmsnorm_rope_op = torch.library.custom_op("turbovid::rmsnorm_rope", _rmsnorm_rope, mutates_args=())


@_rmsnorm_rope_op.register_fake
def _(x, weight, cos, sin, eps, out_dtype):
    return torch.empty(x.shape, dtype=out_dtype, device=x.device)


def _rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    return rmsnorm_rope_triton(x, weight, None, None, eps, out_dtype)


_rmsnorm_op = torch.library.custom_op("turbovid::rmsnorm", _rmsnorm, mutates_args=())


@_rmsnorm_op.register_fake
def _(x, weight, eps, out_dtype):
    return torch.empty(x.shape, dtype=out_dtype, device=x.device)


# ---- public API --------------------------------------------------------------------------------

def norm_modulate(
    x: torch.Tensor,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    *,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    quant: str | None = None,
) -> torch.Tensor:
    """LayerNorm(x) (float32, affine when weight/bias are given) * (1 + scale) + shift.

    quant="fp8" returns it quantized for an fp8 linear (an Fp8Activation), in the same launch;
    quant="fp8-tensor" at one per-tensor scale from the modulation's bound (fp8_tensor.py)."""
    x = _check_x("x", x)
    c = x.shape[-1]
    shift, scale = _per_sample("shift", shift, x), _per_sample("scale", scale, x)
    weight, bias = _channel("weight", weight, c), _channel("bias", bias, c)
    if (weight is None) != (bias is None):
        raise ValueError("norm_modulate takes the LayerNorm weight and bias together (or neither)")
    out_dtype = out_dtype or x.dtype
    check_quant(quant)
    if not _use_triton(x):
        return norm_modulate_ref(x, shift, scale, weight, bias, eps, out_dtype, quant)
    if quant is not None:
        per_tensor = quant == "fp8-tensor"
        return _fp8_activation(out_dtype, *call(
            _norm_modulate_fp8_op, _norm_modulate_fp8, x, weight, bias, shift, scale, eps, out_dtype, per_tensor),
            per_tensor=per_tensor)
    return call(_norm_modulate_op, _norm_modulate, x, weight, bias, shift, scale, eps, out_dtype)


def add_norm_modulate(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    *,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    quant: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + y * gate, norm_modulate(x + y * gate, ...)) in one pass; the sum keeps x's dtype."""
    x, y = _check_x("x", x), _check_x("y", y)
    if y.shape != x.shape:
        raise ValueError(f"y must match x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    c = x.shape[-1]
    gate, shift, scale = _per_sample("gate", gate, x), _per_sample("shift", shift, x), _per_sample("scale", scale, x)
    weight, bias = _channel("weight", weight, c), _channel("bias", bias, c)
    if (weight is None) != (bias is None):
        raise ValueError("add_norm_modulate takes the LayerNorm weight and bias together (or neither)")
    out_dtype = out_dtype or x.dtype
    check_quant(quant)
    if not _use_triton(x):
        return add_norm_modulate_ref(x, y, gate, shift, scale, weight, bias, eps, out_dtype, quant)
    if quant is not None:
        per_tensor = quant == "fp8-tensor"
        x_out, q, s, rn = call(_add_norm_modulate_fp8_op, _add_norm_modulate_fp8, x, y, gate, weight, bias, shift,
                               scale, eps, out_dtype, per_tensor)
        return x_out, _fp8_activation(out_dtype, q, s, rn, per_tensor=per_tensor)
    return call(_add_norm_modulate_op, _add_norm_modulate, x, y, gate, weight, bias, shift, scale, eps, out_dtype)


def _fp8_activation(out_dtype: torch.dtype, q: torch.Tensor, s: torch.Tensor, row_norm: torch.Tensor,
                    per_tensor: bool = False):
    from turbovid.ops.quant.fp8 import Fp8Activation

    return Fp8Activation(q, s, out_dtype, per_tensor=per_tensor, row_norm=row_norm if per_tensor else None)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """x + y * gate (float32 math), in x's dtype."""
    x, y = _check_x("x", x), _check_x("y", y)
    if y.shape != x.shape:
        raise ValueError(f"y must match x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    gate = _per_sample("gate", gate, x)
    if not _use_triton(x):
        return gated_residual_ref(x, y, gate)
    return call(_gated_residual_op, _gated_residual, x, y, gate)


def rmsnorm_rope(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """RMSNorm of [B, L, C] q or k over all C (weight [C]), then RoPE per head; cos/sin [L, head_dim/2]."""
    x = _check_rows("x", x)
    _, l, c = x.shape
    if cos.shape != sin.shape or cos.ndim != 2 or cos.shape[0] != l or c % (2 * cos.shape[1]):
        raise ValueError(
            f"cos/sin must both be [L, head_dim/2] with L={l} and head_dim dividing C={c}; "
            f"got {tuple(cos.shape)} and {tuple(sin.shape)} (build them with rope_tables)"
        )
    weight = _channel("weight", weight, c)
    out_dtype = out_dtype or x.dtype
    if not _use_triton(x):
        return rmsnorm_rope_ref(x, weight, cos, sin, eps, out_dtype)
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    return call(_rmsnorm_rope_op, _rmsnorm_rope, x, weight, cos, sin, eps, out_dtype)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """RMSNorm of [B, L, C] over C (float32 math, weight [C]), in x's dtype (cross-attention's q/k norm)."""
    x = _check_rows("x", x)
    weight = _channel("weight", weight, x.shape[-1])
    out_dtype = out_dtype or x.dtype
    if x.shape[-1] % 2 or not _use_triton(x):
        return rmsnorm_ref(x, weight, eps, out_dtype)
    return call(_rmsnorm_op, _rmsnorm, x, weight, eps, out_dtype)
