"""What `turbovid bench` measures: DiT forwards per variant, diffusers' forward, the full pipeline.

Every case returns a dict row; a case that cannot run returns {"status": "skipped", "reason": ...}.
Random weights at the real sizes; no checkpoint is read.
"""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from turbovid.configs import DIT_PRESETS, DiTConfig
from turbovid.options import RESOLUTIONS

from .timing import Timing, forward_flops, gemm_rate, sync, time_fn

log = logging.getLogger("turbovid.bench")

# sla+int8 / sla+fp8: on sm_90 sla runs its Gluon kernel, faster there than sagesla (docs/benchmarks.md)
VARIANTS = ("dense", "sla", "sagesla", "sla+int8", "sagesla+int8", "sla+fp8", "sagesla+fp8")
TINY = "tiny-random"


def latent_shape(resolution: str, frames: int, aspect: str = "16:9") -> tuple[int, int, int, int, int]:
    """[1, 16, T, H, W] latents of a video (VAE stride 4 x 8 x 8)."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution {resolution!r}; choose one of {', '.join(RESOLUTIONS)}")
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"frames must be 4n+1 (1, 5, ..., 81), got {frames}")
    w, h = RESOLUTIONS[resolution][aspect]
    return (1, 16, (frames - 1) // 4 + 1, h // 8, w // 8)


def tokens_of(cfg: DiTConfig, shape) -> int:
    kt, kh, kw = cfg.patch_size
    return (shape[2] // kt) * (shape[3] // kh) * (shape[4] // kw)


def skipped(reason: str, **row) -> dict:
    log.warning("skipped %s: %s", {k: v for k, v in row.items() if k in ("what", "model", "resolution", "variant")}, reason)
    return {**row, "status": "skipped", "reason": reason}


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


@contextlib.contextmanager
def default_dtype_device(dtype: torch.dtype, device: torch.device):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ---- building and configuring our DiT -----------------------------------------------------------


def build_dit(model: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    from turbovid.loading.dit import build_dit as _build

    return _build(model, attention="dense", device=device, dtype=dtype, seed=0)


def _blocks_swap(dit: nn.Module, swap: Callable[[nn.Module], object]) -> None:
    for blk in dit.blocks:  # the blocks only: embeddings and head stay in high precision, as in the reference
        swap(blk)


def quantize(dit: nn.Module, quant: str) -> str:
    """Swap the blocks' linears for int8 / fp8 layers; returns the layer class used. Raises if unavailable."""
    if quant == "int8":
        from turbovid.ops.quant import swap_linears

        _blocks_swap(dit, lambda blk: swap_linears(blk, skip=("proj_l",)))
    elif quant == "fp8":
        swap = _find_fp8_swap()
        _blocks_swap(dit, lambda blk: swap(blk, skip=("proj_l",)))
    else:
        raise ValueError(f"unknown quantization {quant!r}")
    return type(dit.blocks[0].ffn[0]).__name__


def _find_fp8_swap() -> Callable:
    quant = importlib.import_module("turbovid.ops.quant")
    for name in ("swap_linears_fp8", "swap_fp8_linears", "swap_fp8"):
        if hasattr(quant, name):
            return getattr(quant, name)
    try:
        return importlib.import_module("turbovid.ops.quant.fp8").swap_linears
    except (ImportError, AttributeError):
        raise ImportError("no fp8 linear swap in turbovid.ops.quant (swap_linears_fp8 or ops/quant/fp8.py)") from None


def split_variant(variant: str) -> tuple[str, str]:
    """'sagesla+int8' -> ('sagesla', 'int8'); 'dense' -> ('dense', 'bf16')."""
    attn, _, quant = variant.partition("+")
    return attn, quant or "bf16"


def variant_dit(model: str, variant: str, device: torch.device, dtype: torch.dtype, topk: float) -> nn.Module:
    """`model` with random weights, quantized and with the attention `variant` names."""
    attn, quant = split_variant(variant)
    dit = build_dit(model, device, dtype)
    if quant != "bf16":
        quantize(dit, quant)
    dit.set_attention(attn, topk)
    return dit


# ---- one DiT forward case -----------------------------------------------------------------------

# The forward cases' text context: this many rows (a long prompt; Wan's extended prompts run 100-200
# umT5 tokens), passed unpadded as the pipeline passes them (the DiT pads to 512 itself; diffusers
# gets them zero-padded to 512). Runs before 32 used 512 random rows; the cross-attention then
# visited all of them (ops/attention/tail.py).
PROMPT_ROWS = 128


def dit_case(
    runner: nn.Module, dit: nn.Module, *, model: str, resolution: str, frames: int, variant: str, path: str,
    topk: float, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int, max_seconds: float,
    ceilings: dict | None,
) -> dict:
    """Time `runner(latents, t, context)` (the plain model or its fast wrapper) with `variant`'s attention."""
    cfg: DiTConfig = dit.cfg
    shape = latent_shape(resolution, frames)
    tokens = tokens_of(cfg, shape)
    attn, quant = split_variant(variant)
    row = {"what": "dit_forward", "model": model, "resolution": resolution, "frames": frames, "tokens": tokens,
           "variant": variant, "path": path, "prompt_rows": PROMPT_ROWS}
    try:
        dit.set_attention(attn, topk)
    except (RuntimeError, ValueError, ImportError) as e:
        return skipped(f"attention backend {attn!r} unavailable ({_reason(e)})", **row)
    if hasattr(runner, "reset"):
        runner.reset()
    gen = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)
    t = torch.full((1,), 500.0, device=device, dtype=dtype)
    context = torch.randn(1, PROMPT_ROWS, cfg.text_dim, generator=gen, device=device, dtype=torch.float32).to(dtype)
    reset_peak(device)
    try:
        with torch.inference_mode():
            # the fast path's first call runs eagerly and its second captures the graph: both untimed
            warm = max(warmup, 2) if path == "fast" else warmup
            timing: Timing = time_fn(lambda: runner(latents, t, context), device, warm, repeats, max_seconds)
            out = runner(latents, t, context)
            sync(device)
    except torch.cuda.OutOfMemoryError as e:
        if hasattr(runner, "reset"):
            runner.reset()
        return skipped(f"out of memory ({_reason(e)})", **row)
    except Exception as e:  # noqa: BLE001 - a broken backend must not stop the other figures
        log.exception("case failed")
        return skipped(f"failed: {_reason(e)}", **row)
    finite = bool(torch.isfinite(out).all())
    graphed = bool(getattr(runner, "_graphs", None))  # False on the fast path = capture failed, ran eagerly
    flops = forward_flops(cfg, tokens, None if attn == "dense" else topk)
    rate = gemm_rate(ceilings, model, {"bf16": "bf16", "int8": "int8", "fp8": "fp8"}[quant])
    attn_rate = (ceilings or {}).get("attention", {}) or {}
    row.update(timing.as_dict())
    row.update({
        "status": "ok", "finite": finite, "cuda_graph": graphed, "peak_gib": peak_gib(device),
        "attention_backend": dit.attention_backend,
        "linear_layer": type(dit.blocks[0].ffn[0]).__name__, **{k: round(v, 2) for k, v in flops.items()},
    })
    if rate and attn_rate.get("tflops"):
        attn_tflop = flops["self_attention_tflop"] + flops["cross_attention_tflop"]
        floor_ms = flops["linear_tflop"] / rate * 1e3 + attn_tflop / attn_rate["tflops"] * 1e3
        row["floor_ms"] = round(floor_ms, 1)
        row["floor_fraction"] = round(floor_ms / timing.ms, 3)
        row["floor_rates_tflops"] = {"linear": round(rate, 1), "attention": attn_rate["tflops"]}
    if hasattr(runner, "reset"):
        runner.reset()  # free the graph's memory pool before the next case
    del out
    return row


# ---- diffusers baseline ------------------------------------------------------------------------


def diffusers_case(model: str, resolutions: list[str], frames: int, device: torch.device, dtype: torch.dtype,
                   warmup: int, repeats: int, max_seconds: float, time_left: Callable[[], float]) -> list[dict]:
    """diffusers' WanTransformer3DModel forward (its default attention), random weights, same shapes."""
    base = {"what": "diffusers_forward", "model": model}
    try:
        from diffusers import WanTransformer3DModel
    except ImportError as e:
        return [skipped(f"diffusers not importable ({_reason(e)})", **base)]
    cfg = DIT_PRESETS[model]
    try:
        with default_dtype_device(dtype, device):
            torch.manual_seed(0)
            net = WanTransformer3DModel(
                patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=cfg.eps, rope_max_seq_len=1024,
            ).to(dtype).eval()
    except torch.cuda.OutOfMemoryError as e:
        return [skipped(f"out of memory building the model ({_reason(e)})", **base)]
    rows = []
    for res in resolutions:
        shape = latent_shape(res, frames)
        row = {**base, "resolution": res, "frames": frames, "tokens": tokens_of(cfg, shape)}
        if time_left() < 0:
            rows.append(skipped("time budget spent", **row))
            continue
        gen = torch.Generator(device=device).manual_seed(0)
        lat = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)
        ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen, device=device, dtype=torch.float32).to(dtype)
        ctx[:, PROMPT_ROWS:] = 0  # our prompt, zero-padded as Wan pads it (diffusers attends over all 512 rows)
        t = torch.tensor([500.0], device=device)
        reset_peak(device)
        try:
            with torch.inference_mode():
                timing = time_fn(lambda: net(hidden_states=lat, timestep=t, encoder_hidden_states=ctx, return_dict=False),
                                 device, warmup, repeats, max_seconds)
        except torch.cuda.OutOfMemoryError as e:
            rows.append(skipped(f"out of memory ({_reason(e)})", **row))
            continue
        rows.append({**row, **timing.as_dict(), "status": "ok", "peak_gib": peak_gib(device),
                     "attention": "diffusers default (SDPA)"})
    del net
    reset_peak(device)
    return rows


# ---- full pipeline -----------------------------------------------------------------------------


def _mp4_seconds(frames) -> float | None:
    """Wall time of writing one video as .mp4 (turbovid.io.write_video, on the host's CPU); None
    without PyAV (a GPU machine may run the harness without it)."""
    from turbovid.io import write_video

    if importlib.util.find_spec("av") is None:
        log.warning("PyAV is not installed: the .mp4 write is not timed")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_video(frames, Path(tmp) / "bench.mp4")
        return time.perf_counter() - t0


@contextlib.contextmanager
def gc_pauses():
    """Yields a one-element list holding the seconds Python's cyclic garbage collector ran inside the
    block, in any thread: it holds the GIL, so a collection stalls the thread launching GPU work."""
    total, start = [0.0], [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            start[0] = time.perf_counter()
        else:
            total[0] += time.perf_counter() - start[0]

    gc.callbacks.append(on_gc)
    try:
        yield total
    finally:
        gc.callbacks.remove(on_gc)


def _streamed_mp4(pipe, req, repeats: int) -> dict | None:
    """Prompt to .mp4 file in place, the video encoded while the VAE decodes (Pipeline.generate_into,
    as the CLI does): the median run's wall time, its VAE stage and its text encoding + sampling, every
    run's VAE stage, and the garbage collector's time during the runs. None without PyAV."""
    if importlib.util.find_spec("av") is None:
        return None
    runs = []
    with tempfile.TemporaryDirectory() as tmp, gc_pauses() as gc_s:
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            res, writers = pipe.generate_into(req, [Path(tmp) / "bench.mp4"])
            writers[0].close()
            t = res.timings
            runs.append((time.perf_counter() - t0, t["vae_decode"], t["text_encoding"] + t["sampling"]))
            del res, writers  # as the CLI and the server do: nothing of a finished video is kept
    wall, vae, before = sorted(runs)[(len(runs) - 1) // 2]
    return {"to_file_s": round(wall, 4), "vae_decode_streamed_s": round(vae, 4),
            "text_sampling_streamed_s": round(before, 4),  # that run's text encoding + sampling
            "vae_decode_streamed_all_s": [round(r[1], 4) for r in runs], "gc_streamed_s": round(gc_s[0], 4)}


def pipeline_case(dit_runner: nn.Module, model: str, resolutions: list[str], frames: int, steps: int,
                  device: torch.device, dtype: torch.dtype, variant: str, repeats: int,
                  time_left: Callable[[], float]) -> list[dict]:
    """turbovid.Pipeline end to end: umT5 text encoding, `steps` rCM steps, VAE decode (random weights)."""
    base = {"what": "pipeline", "model": model, "variant": variant, "steps": steps}
    try:
        from turbovid.configs import T5_PRESETS, VAE_PRESETS
        from turbovid.models.t5 import build_text_encoder
        from turbovid.models.vae import build_vae
        from turbovid.pipeline import GenerationRequest, Pipeline
    except ImportError as e:
        return [skipped(f"pipeline not importable ({_reason(e)})", **base)]
    t5_name = TINY if model == TINY else "umt5-xxl"
    vae_name = TINY if model == TINY else "wan2.1"
    try:
        with default_dtype_device(dtype, device):
            text_encoder = build_text_encoder(T5_PRESETS[t5_name], None, device=device, dtype=dtype, seed=0)
            vae = build_vae(VAE_PRESETS[vae_name], device=device, dtype=dtype, seed=0)
    except torch.cuda.OutOfMemoryError as e:
        return [skipped(f"out of memory building umT5 / VAE ({_reason(e)})", **base)]
    pipe = Pipeline(dit_runner, text_encoder, vae, device=device, dtype=dtype, sampler="rcm", model_name=model)
    rows = []
    for res in resolutions:
        row = {**base, "resolution": res, "frames": frames}
        if time_left() < 0:
            rows.append(skipped("time budget spent", **row))
            continue
        req = GenerationRequest(prompt="A red fox trotting through fresh snow at dawn, cinematic lighting",
                                resolution=res, num_frames=frames, num_steps=steps, seed=0)
        try:
            pipe.generate(req)  # warm-up: kernel compilation, graph capture
            reset_peak(device)
            with gc_pauses() as gc_s:
                runs = [pipe.generate(req).timings for _ in range(max(1, repeats) - 1)]
                last = pipe.generate(req)  # its video is encoded after the pipeline, below
                runs.append(last.timings)
            encode_s = _mp4_seconds(last.videos[0])
            del last
            streamed = _streamed_mp4(pipe, req, repeats) or {}
        except torch.cuda.OutOfMemoryError as e:
            rows.append(skipped(f"out of memory ({_reason(e)})", **row))
            continue
        except Exception as e:  # noqa: BLE001
            log.exception("pipeline failed")
            rows.append(skipped(f"failed: {_reason(e)}", **row))
            continue
        best = sorted(runs, key=lambda r: r["total"])[(len(runs) - 1) // 2]  # the median run
        rows.append({**row, "status": "ok", "repeats": len(runs), "peak_gib": peak_gib(device),
                     **{f"{k}_s": round(best[k], 4) for k in ("text_encoding", "sampling", "vae_decode", "total")},
                     "mp4_encode_s": None if encode_s is None else round(encode_s, 4), "cpu_count": os.cpu_count(),
                     "gc_s": round(gc_s[0], 4), **streamed,
                     "step_s": [round(s, 4) for s in best.get("steps", [])]})
    del pipe, text_encoder, vae
    reset_peak(device)
    return rows
