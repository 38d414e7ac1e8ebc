"""The fast DiT step: fused Triton kernels for the memory-bound block steps, the FFN's GELU fused
into a GEMM epilogue (bf16) or the next layer's activation quantization (int8 / fp8), fp8
activations quantized by the norm kernels that produce them, and the whole forward captured as a
CUDA graph (or torch.compile'd).

    dit = make_fast(dit)            # fused + CUDA graph; make_fast(dit, graph=False) keeps eager
    v = dit(latents, t, context)    # same call, same result within the kernels' error bounds

Everything is optional: without CUDA (or with TURBOVID_FAST=0) `make_fast` returns the model
as it was; a capture that fails (a host sync inside an attention backend, say) logs one line and
that input shape runs eagerly from then on.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from turbovid.models.dit import SelfAttention
from turbovid.ops.attention import tail
from turbovid.ops.quant.fp8 import (
    Fp8Activation, Fp8Linear, Fp8TensorLinear, fp8_kernel_linear, fp8_tensor_linear, share_weight_scale,
)

log = logging.getLogger("turbovid.fast")


@dataclass(frozen=True)
class FastOptions:
    fused: bool = True  # Triton kernels for norm/modulate/residual/RMSNorm+RoPE
    fused_qkv: bool = True  # self-attention q/k/v as one GEMM over concatenated weights
    gelu_epilogue: bool = True  # FFN's first linear + bias + tanh-GELU as one cuBLASLt call
    fp8_gelu_gemm: bool = True  # per-tensor fp8 FFN: GELU + the hidden layer's fp8 quantization in that call too
    act_quant: bool = True  # fp8 linears: the norm kernels write their inputs as e4m3 + scales
    attn_quant: bool = True  # fp8 o-projection: the sla / sagesla epilogue writes its input as e4m3 + scales
    graph: bool = True  # capture the whole forward as a CUDA graph per input shape
    compile: bool = False  # torch.compile the forward instead of (or under) the graph


def fast_enabled() -> bool:
    return os.environ.get("TURBOVID_FAST", "1") != "0"


def use_fused_kernels(flag: bool = True) -> None:
    """Route every WanDiT's memory-bound steps through turbovid.ops.fused (False: the references)."""
    from turbovid.models import dit as dit_module

    if not flag:
        dit_module.set_block_ops()
        return
    from turbovid.ops import fused

    dit_module.set_block_ops(
        norm_modulate=fused.norm_modulate,
        add_norm_modulate=fused.add_norm_modulate,
        gated_residual=fused.gated_residual,
        rmsnorm_rope=fused.rmsnorm_rope,
        rmsnorm=fused.rmsnorm,
    )


def _quant_kernel_for(layer: nn.Module, x: torch.Tensor):
    """The kernel linear (x, w_q, w_scale, bias, gelu_input=...) serving an int8 / fp8 `layer` for x
    (the same choice the layer's own forward makes: cuBLAS or Triton for fp8), else None."""
    from turbovid.ops.quant.int8 import Int8Linear, kernels, use_kernel

    if isinstance(layer, Fp8TensorLinear):
        return fp8_tensor_linear  # its own kernels, or the reference where they cannot run
    if isinstance(layer, Fp8Linear):
        return fp8_kernel_linear(x, layer.fp8_weight)
    if isinstance(layer, Int8Linear) and use_kernel(x):
        return kernels().linear
    return None


class GeluFFN(nn.Sequential):
    """Linear -> tanh-GELU -> Linear with the GELU fused into a neighbour, never a pass of its own.

    bf16 linears: the first bias and the GELU run in cuBLASLt's GEMM epilogue. Per-tensor fp8: bias,
    GELU and the hidden layer's quantization run in the first GEMM's cuBLASLt epilogue
    (fp8.Fp8TensorLinear.forward_gelu; gemm_epilogue=False, or where that GEMM does not serve, they
    run in the second layer's activation quantization, at a bound from the first layer's input:
    Fp8TensorLinear.forward_after). int8 / block fp8: the GELU runs inside the second layer's
    activation quantization. Same children (and state-dict keys) as the nn.Sequential it replaces;
    anything else runs unfused.
    """

    gemm_epilogue = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, act, fc2 = self[0], self[1], self[2]
        if type(fc1) is nn.Linear and x.is_cuda and fc1.bias is not None and x.dtype == fc1.weight.dtype:
            h = torch._addmm_activation(fc1.bias, x.reshape(-1, x.shape[-1]), fc1.weight.t(), use_gelu=True)
            return fc2(h.view(*x.shape[:-1], -1))
        per_tensor = isinstance(fc2, Fp8TensorLinear) and isinstance(fc1, Fp8TensorLinear) and isinstance(x, Fp8Activation)
        if per_tensor and self.gemm_epilogue:
            hidden = fc1.forward_gelu(x)  # GELU + quantization in fc1's GEMM epilogue
            if hidden is not None:
                return fc2(hidden)
        h = fc1(x)
        if per_tensor:
            # fc2's input bound from the row norms of fc1's input: no pass over h for its amax
            return fc2.forward_after(h, fc1, x, gelu_input=True)
        linear = _quant_kernel_for(fc2, h) if _gelu_quant_ok else None
        if linear is not None:
            try:
                return linear(h, getattr(fc2, fc2.weight_name), fc2.scale, fc2.bias, gelu_input=True)
            except Exception as e:  # noqa: BLE001 - e.g. an older quant kernel without the gelu flag
                _disable_gelu_quant(e)
        return fc2(act(h))


_gelu_quant_ok = True


def _disable_gelu_quant(e: Exception) -> None:
    global _gelu_quant_ok
    _gelu_quant_ok = False
    log.warning("FFN: GELU fused into the activation quantization failed (%s: %s); running it unfused",
                type(e).__name__, str(e).splitlines()[0][:160] if str(e) else "")


def fuse_ffn_gelu(dit: nn.Module, gemm_epilogue: bool = True) -> int:
    """Swap each block's FFN Sequential(Linear, GELU(tanh), Linear) for GeluFFN; returns how many.
    gemm_epilogue: per-tensor fp8 FFNs quantize their hidden layer in the first GEMM's epilogue."""
    n = 0
    for blk in getattr(dit, "blocks", []):
        ffn = getattr(blk, "ffn", None)
        if (
            isinstance(ffn, nn.Sequential) and not isinstance(ffn, GeluFFN) and len(ffn) == 3
            and isinstance(ffn[1], nn.GELU) and ffn[1].approximate == "tanh"
        ):
            blk.ffn = GeluFFN(*ffn)
            n += 1
        if isinstance(getattr(blk, "ffn", None), GeluFFN):
            blk.ffn.gemm_epilogue = gemm_epilogue
    return n


def _fused_qkv_layer(lins: list[nn.Module]) -> nn.Module | None:
    """One layer computing [q | k | v] (N = 3 * dim) whose weights are the three layers' storage:
    the concatenated tensors are allocated once and q / k / v are re-pointed at views of them, so
    no weight memory is added. None when the three cannot be fused (mixed types, no common dtype,
    quantized blocks straddling the q/k/v boundary)."""
    from turbovid.ops.quant.int8 import BLOCK, QuantLinearBase

    first = lins[0]
    if any(type(m) is not type(first) for m in lins) or any((m.bias is None) != (first.bias is None) for m in lins):
        return None
    if type(first) is nn.Linear:
        names = ["weight", "bias"]
        owner = "_parameters"
    elif isinstance(first, QuantLinearBase):
        per_tensor = isinstance(first, Fp8TensorLinear)
        if per_tensor:  # one weight scale for the three (exact: the scales are powers of two)
            share_weight_scale(lins)
        elif first.out_features % BLOCK:  # one weight-scale block row must not span two of q, k, v
            return None
        names = [first.weight_name, "bias"] + ([] if per_tensor else ["scale"])
        owner = "_buffers"
    else:
        return None
    names = [n for n in names if getattr(first, n) is not None]
    tensors = {}
    for n in names:
        parts = [getattr(m, n) for m in lins]
        if len({(p.dtype, p.device, tuple(p.shape[1:])) for p in parts}) != 1:
            return None
        tensors[n] = torch.cat([p.detach() for p in parts])
    if type(first) is nn.Linear:
        fused = nn.Linear(first.in_features, 3 * first.out_features, bias=first.bias is not None, device="meta")
        for n in names:
            fused._parameters[n] = nn.Parameter(tensors[n], requires_grad=False)
    else:
        fused = type(first)(first.in_features, 3 * first.out_features, bias=first.bias is not None, device="meta")
        for n in names:
            fused._buffers[n] = tensors[n]
        if isinstance(first, Fp8TensorLinear):
            fused._buffers["scale"] = first.scale  # the one the three now share
    for n in names:  # q, k, v now read (and load checkpoints into) slices of the fused storage
        for i, m in enumerate(lins):
            rows = tensors[n].shape[0] // 3
            view = tensors[n][i * rows:(i + 1) * rows]
            if owner == "_parameters":
                m._parameters[n].data = view
            else:
                m._buffers[n] = view
    return fused


class FusedQKVSelfAttention(SelfAttention):
    """Self-attention whose q, k, v run as one GEMM over the concatenated weights: the input is read
    (and, for int8 / fp8, quantized) once. q / k / v stay registered (same state-dict keys), their
    weights are views of the fused tensors; if they stop being views (weights replaced, moved),
    the three linears run separately again."""

    _qkv: nn.Module | None = None

    def _fused_ok(self) -> bool:
        qkv = self._qkv
        if qkv is None:
            return False
        name = getattr(qkv, "weight_name", "weight")
        w = getattr(qkv, name)
        rows = w.shape[0] // 3
        return all(getattr(m, name).data_ptr() == w[i * rows].data_ptr() for i, m in enumerate((self.q, self.k, self.v)))

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self._fused_ok():
            if self._qkv is not None and "qkv" not in _logged:
                _logged.add("qkv")
                log.warning("fused q/k/v: the q/k/v weights are no longer views of the fused tensor; running them separately")
            return super().project_qkv(x)
        return self._qkv(x).split(self.q.out_features, dim=-1)


_logged: set[str] = set()


def fuse_qkv(dit: nn.Module) -> int:
    """Run each block's self-attention q/k/v as one GEMM (N = 3 * dim); returns how many blocks."""
    n = 0
    for blk in getattr(dit, "blocks", []):
        attn = getattr(blk, "self_attn", None)
        if type(attn) is not SelfAttention:
            continue
        fused = _fused_qkv_layer([attn.q, attn.k, attn.v])
        if fused is None:
            continue
        attn.__class__ = FusedQKVSelfAttention
        object.__setattr__(attn, "_qkv", fused)  # outside _modules: the state dict keeps its keys
        n += 1
    return n


def fuse_act_quant(dit: nn.Module) -> int:
    """Let each block's norms quantize for its fp8 linears (q/k/v, cross-attention q, FFN in): the
    linears' own rule applied to the norm's output, one pass fewer each ("fp8": block scales;
    "fp8-tensor" for Fp8TensorLinear: one scale from the modulation's bound, fp8_tensor.py). The
    quantizing launch may sum a row in another order than the plain one (its own launch shape), so h
    can round one ulp apart in places; at C = 1536 the bytes are identical (tests). Returns how many blocks."""

    n = 0
    for blk in getattr(dit, "blocks", []):
        try:
            readers = [blk.self_attn.q, blk.self_attn.k, blk.self_attn.v, blk.cross_attn.q, blk.ffn[0]]
        except (AttributeError, IndexError, TypeError):
            continue
        if all(isinstance(m, Fp8TensorLinear) for m in readers):
            blk.act_quant = "fp8-tensor"
        elif all(isinstance(m, Fp8Linear) and not isinstance(m, Fp8TensorLinear) for m in readers):
            blk.act_quant = "fp8"
        else:
            continue
        n += 1
    return n


def fuse_attn_quant(dit: nn.Module) -> int:
    """Let each self-attention quantize its output for an fp8 o-projection in the attention
    kernel's epilogue (sla / sagesla; other backends ignore it): block scales, the same bytes as the
    linear's own quantization of the bf16 output (tests), or per tensor (Fp8TensorLinear) at the bound
    max|V| gives. Per-tensor fp8 cross-attention o-projections get their input's bound from v
    instead of a pass over it. Returns how many blocks (self-attention)."""

    n = 0
    for blk in getattr(dit, "blocks", []):
        cross = getattr(blk, "cross_attn", None)
        if isinstance(getattr(cross, "o", None), Fp8TensorLinear):
            cross.o_takes_bound = True
        attn = getattr(blk, "self_attn", None)
        o = getattr(attn, "o", None)
        if isinstance(attn, SelfAttention) and isinstance(o, Fp8Linear):
            attn.out_fp8 = "tensor" if isinstance(o, Fp8TensorLinear) else True
            n += 1
    return n


def unfuse_act_quant(dit: nn.Module) -> None:
    for blk in getattr(dit, "blocks", []):
        if "act_quant" in vars(blk):
            del blk.act_quant  # back to the class default: the norms return h
        attn = getattr(blk, "self_attn", None)
        if attn is not None and "out_fp8" in vars(attn):
            del attn.out_fp8
        cross = getattr(blk, "cross_attn", None)
        if cross is not None and "o_takes_bound" in vars(cross):
            del cross.o_takes_bound


def unfuse_qkv(dit: nn.Module) -> None:
    """Back to three separate linears (their weights stay views of the fused storage, which is fine)."""
    for blk in getattr(dit, "blocks", []):
        attn = getattr(blk, "self_attn", None)
        if isinstance(attn, FusedQKVSelfAttention):
            object.__setattr__(attn, "_qkv", None)
            attn.__class__ = SelfAttention


def graph_context(context: torch.Tensor, text_len: int) -> torch.Tensor:
    """context [B, L, D] zero-padded to one of two lengths, so prompts of any length replay one of two
    graphs: tail.MAX_ROWS rows (L up to it: the DiT's cross-attention through the tail kernel) or
    text_len (longer: dense). Zero rows past the prompt change nothing (the DiT pads with zeros)."""
    rows = context.shape[1]
    want = min(tail.MAX_ROWS, text_len) if rows <= tail.MAX_ROWS else text_len
    if rows >= want:  # rows > text_len: left for the DiT's own check to reject
        return context
    return F.pad(context, (0, 0, 0, want - rows))


class GraphedDiT(nn.Module):
    """Runs `dit` through one CUDA graph per (shapes, dtypes, backend); eager where capture fails.

    The returned velocity is a fresh tensor (the graph's output buffer is copied), so callers can
    keep it across calls. Inputs are copied into static buffers: no host-device sync per call. The
    context is padded to one of two lengths (graph_context). The graphs share one memory pool: what
    two graphs share is only memory freed by the end of a capture (intermediates, written
    before they are read within each replay); a graph's output stays allocated and is copied out
    right after its replay.
    """

    def __init__(self, dit: nn.Module, compile: bool = False, graph: bool = True):
        super().__init__()
        self.dit = dit
        self.graph = graph
        # kept out of _modules so the weights are registered once (under .dit)
        object.__setattr__(self, "_fn", torch.compile(dit, dynamic=False) if compile else dit)
        self._graphs: dict[tuple, tuple] = {}
        self._eager_keys: set[tuple] = set()
        self._warm: set[tuple] = set()  # shapes run once eagerly: the next call captures

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["dit"], name)  # set_attention, cfg, blocks, ...

    def _key(self, latents, timesteps, context) -> tuple:
        backend = getattr(self.dit, "attention_backend", None)
        return (tuple(latents.shape), latents.dtype, tuple(timesteps.shape), timesteps.dtype,
                tuple(context.shape), context.dtype, latents.device, backend)

    def _capture(self, key, latents, timesteps, context):
        static = [latents.clone(), timesteps.clone(), context.clone()]
        graph = torch.cuda.CUDAGraph()
        pool = next((g.pool() for g, _, _ in self._graphs.values()), None)  # one model: one device
        with torch.cuda.graph(graph, pool=pool):
            out = self._fn(*static)
        self._graphs[key] = (graph, static, out)

    def forward(self, latents: torch.Tensor, timesteps, context: torch.Tensor) -> torch.Tensor:
        timesteps = torch.as_tensor(timesteps, device=latents.device)
        if not (self.graph and latents.is_cuda):
            return self._fn(latents, timesteps, context)
        context = graph_context(context, self.dit.cfg.text_len)
        key = self._key(latents, timesteps, context)
        if key in self._eager_keys:
            return self._fn(latents, timesteps, context)
        with torch.inference_mode():  # static buffers are inference tensors: copy into them in the same mode
            return self._replay(key, latents, timesteps, context)

    def _replay(self, key, latents, timesteps, context) -> torch.Tensor:
        if key not in self._graphs:
            if key not in self._warm:
                # The first call of these shapes runs eagerly, and its result is used: it compiles and
                # tunes the kernels and fills the caches (RoPE tables) that a capture must not. The
                # next call captures. (Two throwaway warm-up forwards before the capture made a 1.3B
                # 480p video's first 4 steps 1.20 s instead of 0.87 s; 0.70 s once captured. H100.)
                self._warm.add(key)
                return self._fn(latents, timesteps, context)
            try:
                self._capture(key, latents, timesteps, context)
            except Exception as e:  # noqa: BLE001 - any capture failure means: run this shape eagerly
                self._eager_keys.add(key)
                log.warning("CUDA graph capture failed for %s (%s: %s); running eagerly",
                            tuple(latents.shape), type(e).__name__, str(e).splitlines()[0][:200])
                with contextlib.suppress(RuntimeError):
                    torch.cuda.synchronize(latents.device)
                return self._fn(latents, timesteps, context)
        graph, static, out = self._graphs[key]
        for dst, src in zip(static, (latents, timesteps, context)):
            dst.copy_(src)
        graph.replay()
        return out.clone()

    def reset(self) -> None:
        """Drop the captured graphs (after changing weights' storage, the backend or quantization)."""
        self._graphs.clear()
        self._eager_keys.clear()
        self._warm.clear()  # new kernels or weights: warm up again before capturing


def make_fast(dit: nn.Module, options: FastOptions | None = None) -> nn.Module:
    """The fast version of a WanDiT (weights shared, not copied); the model itself when disabled."""
    opts = options or FastOptions()
    if not fast_enabled():
        log.info("TURBOVID_FAST=0: DiT runs the plain PyTorch path")
        return dit
    if opts.fused:
        use_fused_kernels(True)
    if opts.gelu_epilogue:
        fuse_ffn_gelu(dit, gemm_epilogue=opts.fp8_gelu_gemm)
    device = next(dit.parameters()).device
    if opts.fused_qkv and device.type == "cuda":
        # only for weights that stay put: an offloaded model (home on the CPU, moved per call) would
        # leave the fused tensors behind (stale, and a second CPU copy)
        fuse_qkv(dit)
    if opts.act_quant and opts.fused:
        fuse_act_quant(dit)
    if opts.attn_quant:
        fuse_attn_quant(dit)
    if not (opts.graph or opts.compile):
        return dit
    if device.type != "cuda" and not opts.compile:
        return dit
    return GraphedDiT(dit, compile=opts.compile, graph=opts.graph and device.type == "cuda")


def make_plain(dit: nn.Module) -> nn.Module:
    """Undo make_fast: the wrapped model with reference block ops and an unfused FFN."""
    use_fused_kernels(False)
    inner = dit.dit if isinstance(dit, GraphedDiT) else dit
    unfuse_qkv(inner)
    unfuse_act_quant(inner)
    for blk in getattr(inner, "blocks", []):
        if isinstance(getattr(blk, "ffn", None), GeluFFN):
            blk.ffn = nn.Sequential(*blk.ffn)
    return inner
