"""Timing, environment capture, the matrix/copy ceilings and the FLOP model of a DiT forward."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

import torch

from turbovid.configs import DiTConfig


@dataclass
class Timing:
    ms: float  # median
    min_ms: float
    max_ms: float
    repeats: int

    def as_dict(self) -> dict:
        return {"ms": round(self.ms, 3), "min_ms": round(self.min_ms, 3), "max_ms": round(self.max_ms, 3),
                "repeats": self.repeats}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_ms(fn: Callable[[], object]) -> float:
    """One call's GPU time in ms, between CUDA events around it (waits for it to finish)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 5,
            max_seconds: float = 20.0) -> Timing:
    """Median of up to `repeats` timed calls after `warmup` untimed ones (CUDA events on a GPU).

    Stops early (after at least 2 timed calls) once the timed calls have taken `max_seconds`, so the
    slow cases (14B dense at 720p) cost a bounded time.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            times.append(cuda_ms(fn))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 2 and sum(times) / 1e3 > max_seconds:
            break
    return Timing(statistics.median(times), min(times), max(times), len(times))


def interleaved_ms(fns: dict[str, Callable[[], object]], bench: Callable[[Callable[[], object]], float],
                   rounds: int = 3) -> dict[str, list[float]]:
    """bench(fn) for every candidate, `rounds` times over, the candidates in turn and each round
    starting one candidate later: a card that heats up and lowers its clocks during a sweep then
    slows every candidate alike instead of the last ones timed. Returns each name's times in order."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            times[name].append(bench(fns[name]))
    return times


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(explicit: str | None = None) -> dict:
    """The commit the numbers come from: --commit (the device copy has no .git), else git here."""
    if explicit:
        return {"commit": explicit, "source": "--commit"}
    env = os.environ.get("TURBOVID_COMMIT")
    if env:
        return {"commit": env, "source": "TURBOVID_COMMIT"}
    commit = _run(["git", "rev-parse", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit or "unknown", "source": "git", "dirty": bool(dirty)}


def environment(device: torch.device, commit: str | None, command: str) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        **git_commit(commit),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        env["diffusers"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["card"] = props.name
        env["card_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["sm_count"] = props.multi_processor_count
        env["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    else:
        env["card"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        env["driver"] = None
    return env


# ---- FLOP model -------------------------------------------------------------------------------


def forward_flops(cfg: DiTConfig, tokens: int, topk: float | None) -> dict:
    """FLOPs of one DiT forward: linear layers, and self-attention (dense, or the topk block fraction).

    Linear: per block q,k,v,o (4 C^2) + cross q,o (2 C^2) + FFN (2 C F) per token, cross k,v over
    the 512 text tokens, plus the text embedding, patch embedding and head.
    Attention: Q.K^T and P.V, 4 L^2 C per block (times topk when sparse), cross-attention 4 L 512 C.
    """
    c, f, n, t = cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.text_len
    patch = cfg.in_dim * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    per_block = 2 * tokens * (6 * c * c + 2 * c * f) + 2 * t * 2 * c * c
    linear = n * per_block + 2 * t * (cfg.text_dim * c + c * c) + 2 * tokens * c * (patch + patch * cfg.out_dim // cfg.in_dim)
    self_attn = n * 4 * tokens * tokens * c * (1.0 if topk is None else topk)
    cross_attn = n * 4 * tokens * t * c
    return {"linear_tflop": linear / 1e12, "self_attention_tflop": self_attn / 1e12,
            "cross_attention_tflop": cross_attn / 1e12}


def gemm_shapes(cfg: DiTConfig) -> list[tuple[int, int]]:
    return [(cfg.dim, cfg.dim), (cfg.dim, cfg.ffn_dim), (cfg.ffn_dim, cfg.dim)]


def measure_ceilings(cfgs: dict[str, DiTConfig], tokens: int, device: torch.device) -> dict:
    """bf16 / int8 / fp8 GEMM rates at each model's linear shapes (M = tokens), copy bandwidth,
    and dense attention (cuDNN SDPA if it runs) at 12 heads x 128: the rates the floor is priced at.
    int8: the faster of cuBLAS's plain int8 (torch._int_mm) and our block-scaled kernel."""
    out: dict = {"tokens": tokens, "gemm": {}, "attention": None, "copy_GBps": None}
    for name, cfg in cfgs.items():
        rows = []
        for k, n in gemm_shapes(cfg):
            flop = 2 * tokens * k * n
            a = torch.randn(tokens, k, device=device, dtype=torch.bfloat16)
            b = torch.randn(k, n, device=device, dtype=torch.bfloat16)
            row = {"K": k, "N": n}
            t = time_fn(lambda: a @ b, device, warmup=3, repeats=10)
            row["bf16_ms"], row["bf16_tflops"] = round(t.ms, 4), round(flop / t.ms / 1e9, 1)
            try:
                a8 = torch.randint(-127, 127, (tokens, k), device=device, dtype=torch.int8)
                b8 = torch.randint(-127, 127, (n, k), device=device, dtype=torch.int8)
                t = time_fn(lambda: torch._int_mm(a8, b8.t()), device, warmup=3, repeats=10)
                row["int8_int_mm_ms"] = round(t.ms, 4)
                best = t.ms
                ours = _int8_block_scaled_ms(a8, b8, device)  # our kernel may beat cuBLAS's plain int8
                if ours is not None:
                    row["int8_blockscaled_ms"] = round(ours, 4)
                    best = min(best, ours)
                row["int8_ms"], row["int8_tops"] = round(best, 4), round(flop / best / 1e9, 1)
            except (RuntimeError, AttributeError) as e:
                row["int8_error"] = str(e).splitlines()[0][:160]
            try:
                af = a.to(torch.float8_e4m3fn)
                bf = b.t().contiguous().to(torch.float8_e4m3fn).t()
                one = torch.ones((), device=device)
                # per-tensor scales with fast accumulation: the GEMM --quant fp8 runs (quant.fp8_tensor)
                t = time_fn(lambda: torch._scaled_mm(af, bf, scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                                                     use_fast_accum=True), device, warmup=3, repeats=10)
                row["fp8_ms"], row["fp8_tflops"] = round(t.ms, 4), round(flop / t.ms / 1e9, 1)
            except (RuntimeError, AttributeError, TypeError) as e:
                row["fp8_error"] = str(e).splitlines()[0][:160]
            rows.append(row)
            del a, b
        out["gemm"][name] = rows
    q = torch.randn(1, 12, tokens, 128, device=device, dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    t = time_fn(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), device, warmup=2, repeats=5)
    out["attention"] = {"heads": 12, "head_dim": 128, "L": tokens, "ms": round(t.ms, 3),
                        "tflops": round(4 * tokens * tokens * 128 * 12 / t.ms / 1e9, 1)}
    del q, k, v
    x = torch.empty(2**30, device=device, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    t = time_fn(lambda: y.copy_(x), device, warmup=2, repeats=5)
    out["copy_GBps"] = round(2 * x.numel() * 2 / t.ms / 1e6, 1)
    del x, y
    torch.cuda.empty_cache()
    return out


def _int8_block_scaled_ms(a8: torch.Tensor, b8: torch.Tensor, device: torch.device) -> float | None:
    """Our block-scaled int8 GEMM (int8_triton.scaled_mm: the Gluon kernel on Hopper) at unit scales,
    bf16 out: the int8 rate the -quant layers can reach. None without Triton."""
    from turbovid.ops.quant.int8 import kernels

    if kernels() is None:
        return None
    sa = torch.ones(-(-a8.shape[0] // 128), -(-a8.shape[1] // 128), device=device)
    sb = torch.ones(-(-b8.shape[0] // 128), -(-b8.shape[1] // 128), device=device)
    return time_fn(lambda: kernels().scaled_mm(a8, sa, b8, sb), device, warmup=3, repeats=10).ms


def gemm_rate(ceilings: dict | None, model: str, kind: str) -> float | None:
    """FLOP-weighted matrix rate (TFLOP/s) over the model's three linear shapes for bf16 / int8 / fp8."""
    if not ceilings or model not in ceilings.get("gemm", {}):
        return None
    key = {"bf16": "bf16_ms", "int8": "int8_ms", "fp8": "fp8_ms"}[kind]
    rows = ceilings["gemm"][model]
    if any(key not in r for r in rows):
        return None
    flop = sum(2 * ceilings["tokens"] * r["K"] * r["N"] for r in rows)
    ms = sum(r[key] for r in rows)
    return flop / ms / 1e9


def sweep_shapes(description: str, default_out: str, shapes: dict, one: Callable[..., dict]) -> None:
    """The main() of an explore script: one(*shape) for each named shape, the results (with the card
    and the torch and Triton versions) rewritten to --out after each, so a run cut short keeps what it measured."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=default_out)
    args = ap.parse_args()
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:  # pragma: no cover - depends on the install
        triton_version = None
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton_version, "shapes": {}}
    for name, shape in shapes.items():
        print(name, flush=True)
        res["shapes"][name] = one(*shape)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)

