"""One dispatch point for attention: models name a backend, kernels register themselves here.

Layout everywhere: q, k, v and the output are [B, L, H, D] (tokens before heads, as the
DiT's linear projections produce them).

Backends:
  dense    softmax attention through torch SDPA (cuDNN / flash on GPU).
  sla      sparse-linear attention (Triton kernel on CUDA, PyTorch reference elsewhere).
  sagesla  SLA with int8 Q.K and fp8 P.V (Triton, Hopper/Ada/Blackwell).
  auto     the fastest backend that runs on the tensors' device: sla where its Gluon kernel runs
           (sm_90: faster than sagesla there, and exact bf16), else sagesla, else sla, else dense.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

log = logging.getLogger("turbovid.attention")


class BackendFn(Protocol):
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        topk: float,
        proj_weight: torch.Tensor | None,
        proj_bias: torch.Tensor | None,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class Backend:
    name: str
    fn: BackendFn
    # Returns None when the backend can run on `device`, else a one-line reason.
    unavailable: Callable[[torch.device], str | None] = lambda device: None
    # fn takes out_fp8=True and then returns its output quantized for an fp8 linear
    fp8_output: bool = False


_logged: set[str] = set()
_cpu_interpreter = False  # tests opt in; elsewhere CPU tensors take the PyTorch paths


def log_once(message: str) -> None:
    """Log `message` (a kernel falling back, and why) the first time only."""
    if message not in _logged:
        _logged.add(message)
        log.info(message)


def allow_interpreter(flag: bool) -> None:
    """Let CPU tensors run the attention kernels in Triton's interpreter (tests; needs TRITON_INTERPRET=1
    when Triton is first imported)."""
    global _cpu_interpreter
    _cpu_interpreter = bool(flag)


def cpu_interpreter_allowed() -> bool:
    return _cpu_interpreter


BACKENDS: dict[str, Backend] = {}
# Modules that register backends on import; imported lazily so a missing Triton never breaks dense.
_BACKEND_MODULES = {
    "sla": "turbovid.ops.attention.sla",
    "sagesla": "turbovid.ops.attention.sagesla",
}
BACKEND_NAMES = ("dense", "sla", "sagesla", "auto")


def register_backend(backend: Backend) -> None:
    BACKENDS[backend.name] = backend


def get_backend(name: str) -> Backend:
    if name not in BACKENDS and name in _BACKEND_MODULES:
        importlib.import_module(_BACKEND_MODULES[name])
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    return BACKENDS[name]


def auto_order(device: torch.device) -> tuple[str, ...]:
    """The sparse backends "auto" tries, fastest first. On an H100 the Gluon sla kernel beats the
    Triton sagesla one in the whole DiT forward (1.3B 480p, fp8 linears: 138.8 vs 146.4 ms; 720p:
    422.4 vs 458.9 ms; 14B 480p: 859.9 vs 899.5 ms; docs/benchmarks.md, session 19)."""
    try:
        from . import sla_gluon

        gluon_sla = sla_gluon.supported(device)
    except ImportError:
        gluon_sla = False
    return ("sla", "sagesla") if gluon_sla else ("sagesla", "sla")


def resolve_backend(name: str, device: torch.device | str) -> str:
    """Map 'auto' to a concrete backend; check an explicit one can run on `device`."""
    device = torch.device(device)
    if name == "auto":
        for candidate in auto_order(device):
            try:
                reason = get_backend(candidate).unavailable(device)
            except (ValueError, ImportError) as e:
                reason = str(e)
            if reason is None:
                return candidate
            log.debug("auto attention: %s not used (%s)", candidate, reason)
        return "dense"
    reason = get_backend(name).unavailable(device)
    if reason is not None:
        raise RuntimeError(f"attention backend {name!r} cannot run on {device}: {reason}")
    return name


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    backend: str = "dense",
    *,
    topk: float = 0.1,
    proj_weight: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None,
    out_fp8: bool | str = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of q over k, v ([B, L, H, D] each) through the named backend.

    out_fp8=True asks for the output quantized as an fp8 linear's input: backends that can
    (sla, sagesla) return (e4m3 [B, L, H, D], float32 scales [ceil(H*D/128), B*L]), quantized in
    their kernel's epilogue where they can; out_fp8="tensor" the same at one per-tensor scale [1]
    (quant.fp8_tensor); the others return the plain tensor."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects [B, L, H, D] tensors, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    chosen = get_backend(backend)
    extra = {"out_fp8": out_fp8} if out_fp8 and chosen.fp8_output else {}
    return chosen.fn(q, k, v, topk=topk, proj_weight=proj_weight, proj_bias=proj_bias, **extra)


def dense_attention(q, k, v, *, topk=0.1, proj_weight=None, proj_bias=None) -> torch.Tensor:
    # (B, L, H, D) -> (B, H, L, D) for SDPA; the sparse-only extras are ignored.
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    )
    return out.transpose(1, 2)


register_backend(Backend("dense", dense_attention))
