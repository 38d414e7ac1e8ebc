"""cuBLASLt's per-tensor fp8 GEMM with its GELU + bias epilogue and an e4m3 output, through ctypes.

What it is for: the FFN's first linear. torch._scaled_mm has no GELU epilogue, so the unfused path
writes the pre-GELU hidden layer in bf16 and a second kernel reads it back to apply tanh-GELU and
quantize it for the second linear (0.35 ms a layer at 1.3B 480p, 8% of a forward). cuBLASLt applies
bias + GELU to the float32 accumulator and writes e4m3 at a given scale itself, as Transformer Engine
does for its fp8 MLPs: one GEMM, the hidden layer written once, as fp8.

    y = e4m3(d_mult * gelu_tanh(s_x * s_w * (x_q @ w_q^T) + bias))

No compile step: the library is the libcublasLt PyTorch already loaded. Enum values and struct sizes
are those of cublasLt.h (CUDA 12 / 13). Available only on a CUDA device of sm89+ with fp8 support;
`unavailable(device)` gives the reason otherwise, and callers take the unfused path.
"""
from __future__ import annotations

import ctypes
import glob
import logging
import os
import threading
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# cublasLt.h / library_types.h / cublas_api.h
CUDA_R_32F, CUDA_R_16BF, CUDA_R_8F_E4M3 = 0, 14, 28
CUBLAS_COMPUTE_32F = 68
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
DESC_TRANSA, DESC_TRANSB, DESC_EPILOGUE, DESC_BIAS_POINTER = 3, 4, 7, 8
DESC_A_SCALE_POINTER, DESC_B_SCALE_POINTER, DESC_D_SCALE_POINTER = 17, 18, 20
DESC_FAST_ACCUM, DESC_BIAS_DATA_TYPE = 25, 26
EPILOGUE_GELU_BIAS = 32 | 4
PREF_MAX_WORKSPACE_BYTES = 1
WORKSPACE_BYTES = 32 << 20  # what NVIDIA recommends for Hopper


class _HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace_size", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves_count", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


_lib: ctypes.CDLL | None = None
_lib_error: str | None = None


def _load() -> ctypes.CDLL | None:
    """The libcublasLt PyTorch uses (already in the process once CUDA is initialised), else None."""
    global _lib, _lib_error
    if _lib is not None or _lib_error is not None:
        return _lib
    names = ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"]
    for d in {os.path.dirname(p) for p in glob.glob(os.path.join(os.path.dirname(torch.__file__), "..",
                                                                   "nvidia", "*", "lib", "libcublasLt.so*"))}:
        names += sorted(glob.glob(os.path.join(d, "libcublasLt.so*")), reverse=True)
    errors = []
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            lib.cublasLtMatmul  # noqa: B018 - the symbol must be there
        except (OSError, AttributeError) as e:
            errors.append(f"{name}: {e}")
            continue
        _lib = lib
        return lib
    _lib_error = "libcublasLt not found (" + "; ".join(errors[:2]) + ")"
    return None


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"cuBLASLt {what} failed with status {status}")


def _set(setter, desc, attr: int, value) -> None:
    _check(setter(desc, attr, ctypes.byref(value), ctypes.sizeof(value)), f"set attribute {attr}")


@dataclass
class _Plan:
    desc: ctypes.c_void_p
    layouts: tuple[ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]  # A, B, C, D
    algo: _HeuristicResult


class _Device:
    """A cuBLASLt handle, a workspace and the plans (descriptors + heuristic's algorithm) per shape."""

    def __init__(self, lib: ctypes.CDLL, device: torch.device):
        self.lib = lib
        self.handle = ctypes.c_void_p()
        _check(lib.cublasLtCreate(ctypes.byref(self.handle)), "create")
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.plans: dict[tuple, _Plan] = {}
        self.lock = threading.Lock()  # a plan's pointer attributes are set per call, then used

    def _layout(self, dtype: int, rows: int, cols: int, ld: int) -> ctypes.c_void_p:
        layout = ctypes.c_void_p()
        _check(self.lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), ctypes.c_int(dtype), ctypes.c_uint64(rows),
                                                   ctypes.c_uint64(cols), ctypes.c_int64(ld)), "layout")
        return layout

    def plan(self, m: int, n: int, k: int, fast_accum: bool, bias_ptr: int) -> _Plan:
        key = (m, n, k, fast_accum, bias_ptr % 16 == 0)
        if key in self.plans:
            return self.plans[key]
        lib = self.lib
        desc = ctypes.c_void_p()
        _check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), ctypes.c_int(CUBLAS_COMPUTE_32F),
                                            ctypes.c_int(CUDA_R_32F)), "descriptor")
        setter = lib.cublasLtMatmulDescSetAttribute
        # column-major view of row-major tensors: D^T [n, m] = W [n, k] . X^T, i.e. A = w_q (transposed
        # [k, n]), B = x_q ([k, m]): the "TN" layout fp8 kernels require
        _set(setter, desc, DESC_TRANSA, ctypes.c_int32(CUBLAS_OP_T))
        _set(setter, desc, DESC_TRANSB, ctypes.c_int32(CUBLAS_OP_N))
        _set(setter, desc, DESC_EPILOGUE, ctypes.c_uint32(EPILOGUE_GELU_BIAS))
        _set(setter, desc, DESC_BIAS_DATA_TYPE, ctypes.c_int32(CUDA_R_16BF))
        _set(setter, desc, DESC_FAST_ACCUM, ctypes.c_int8(1 if fast_accum else 0))
        # the pointers the heuristic looks at (alignment); set again on every call
        for attr in (DESC_BIAS_POINTER, DESC_A_SCALE_POINTER, DESC_B_SCALE_POINTER, DESC_D_SCALE_POINTER):
            _set(setter, desc, attr, ctypes.c_void_p(bias_ptr if attr == DESC_BIAS_POINTER else 256))
        # C is never read (beta = 0, null pointer), but fp8 outputs want its layout in bf16
        layouts = (self._layout(CUDA_R_8F_E4M3, k, n, k), self._layout(CUDA_R_8F_E4M3, k, m, k),
                   self._layout(CUDA_R_16BF, n, m, n), self._layout(CUDA_R_8F_E4M3, n, m, n))
        pref = ctypes.c_void_p()
        _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "preference")
        _set(lib.cublasLtMatmulPreferenceSetAttribute, pref, PREF_MAX_WORKSPACE_BYTES, ctypes.c_uint64(WORKSPACE_BYTES))
        result, count = _HeuristicResult(), ctypes.c_int(0)
        status = lib.cublasLtMatmulAlgoGetHeuristic(self.handle, desc, *layouts, pref, 1, ctypes.byref(result),
                                                    ctypes.byref(count))
        lib.cublasLtMatmulPreferenceDestroy(pref)
        if status != 0 or count.value < 1 or result.state != 0:
            raise RuntimeError(f"cuBLASLt has no fp8 GELU-epilogue kernel for m, n, k = {m}, {n}, {k} "
                               f"(status {status}, {count.value} found)")
        self.plans[key] = _Plan(desc, layouts, result)
        return self.plans[key]


_devices: dict[int, _Device] = {}


def unavailable(device: torch.device) -> str | None:
    """None when the fused GEMM can run on `device`, else a one-line reason."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"cuBLASLt needs a CUDA device, got {device.type}"
    if os.environ.get("TURBOVID_CUBLASLT", "1") == "0":
        return "TURBOVID_CUBLASLT=0"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return "fp8 GEMMs need sm89+"
    if _load() is None:
        return _lib_error
    return None


def _state(device: torch.device) -> _Device:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _devices:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("cuBLASLt's workspace must be set up before CUDA graph capture")
        with torch.cuda.device(index):
            _devices[index] = _Device(_load(), torch.device("cuda", index))
    return _devices[index]


def plan(device: torch.device, m: int, n: int, k: int, fast_accum: bool, bias: torch.Tensor) -> None:
    """Set up the handle and workspace and find a kernel for this shape (raises if there is none)."""
    _state(torch.device(device)).plan(m, n, k, fast_accum, bias.data_ptr())


def fp8_gemm_gelu_fp8(
    x_q: torch.Tensor, x_s: torch.Tensor, w_q: torch.Tensor, w_s: torch.Tensor, bias: torch.Tensor,
    d_mult: torch.Tensor, fast_accum: bool = True,
) -> torch.Tensor:
    """e4m3 [M, N] = e4m3(d_mult * gelu_tanh(x_s * w_s * x_q @ w_q^T + bias)) for x_q [M, K] and w_q
    [N, K] e4m3 (row-major), bias [N] bf16, and float32 [1] device scalars x_s, w_s, d_mult."""
    m, k = x_q.shape
    n = w_q.shape[0]
    if (x_q.dtype != torch.float8_e4m3fn or w_q.dtype != torch.float8_e4m3fn or w_q.shape[1] != k
            or bias.dtype != torch.bfloat16 or bias.shape != (n,)):
        raise ValueError(f"fp8_gemm_gelu_fp8: want e4m3 x [M, K], e4m3 w [N, K], bf16 bias [N]; got "
                         f"{x_q.dtype} {tuple(x_q.shape)}, {w_q.dtype} {tuple(w_q.shape)}, {bias.dtype} {tuple(bias.shape)}")
    if k % 16 or n % 16:
        raise ValueError(f"fp8_gemm_gelu_fp8: K and N must be multiples of 16, got K={k}, N={n}")
    x_q, w_q, bias = x_q.contiguous(), w_q.contiguous(), bias.contiguous()
    scalars = [t.float().contiguous() for t in (x_s, w_s, d_mult)]
    if any(t.numel() != 1 or t.device != x_q.device for t in scalars):
        raise ValueError("fp8_gemm_gelu_fp8: the scales must be one-element tensors on x's device")
    x_s, w_s, d_mult = scalars
    state = _state(x_q.device)
    plan = state.plan(m, n, k, fast_accum, bias.data_ptr())
    out = torch.empty(m, n, dtype=torch.float8_e4m3fn, device=x_q.device)
    setter = state.lib.cublasLtMatmulDescSetAttribute
    alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0)
    a_l, b_l, c_l, d_l = plan.layouts
    stream = torch.cuda.current_stream(x_q.device).cuda_stream
    with state.lock:
        for attr, t in ((DESC_BIAS_POINTER, bias), (DESC_A_SCALE_POINTER, w_s), (DESC_B_SCALE_POINTER, x_s),
                        (DESC_D_SCALE_POINTER, d_mult)):
            _set(setter, plan.desc, attr, ctypes.c_void_p(t.data_ptr()))
        status = state.lib.cublasLtMatmul(
            state.handle, plan.desc, ctypes.byref(alpha), ctypes.c_void_p(w_q.data_ptr()), a_l,
            ctypes.c_void_p(x_q.data_ptr()), b_l, ctypes.byref(beta), ctypes.c_void_p(None), c_l,
            ctypes.c_void_p(out.data_ptr()), d_l, ctypes.byref(plan.algo.algo),
            ctypes.c_void_p(state.workspace.data_ptr()), ctypes.c_size_t(WORKSPACE_BYTES), ctypes.c_void_p(stream))
    _check(status, "matmul")
    return out
