"""One-call GPU check + tuning of the fast DiT step (run on the device; writes $OUT/fast_debug.json).

Sections: fused kernels at real widths (error vs float64, time vs the DiT's PyTorch references,
achieved bandwidth, a launch-config sweep); the GELU GEMM epilogue; the 1.3B 480p forward per
variant x path (plain / fused / fused+gelu / +graph); a kernel-time profile of the fast forward;
optionally torch.compile. Prints a short table last.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovid.bench.cases import build_dit, quantize, split_variant, variant_dit  # noqa: E402
from turbovid.bench.timing import time_fn  # noqa: E402

DEV = torch.device("cuda")
OUT = Path(os.environ.get("OUT", "/tmp"))
DEADLINE = time.monotonic() + float(os.environ.get("DEBUG_BUDGET_S", "240"))
RESULTS: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
TABLE: list[str] = []


def save():
    (OUT / "fast_debug.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def section(name):
    def wrap(fn):
        def run():
            if time.monotonic() > DEADLINE:
                RESULTS[name] = "skipped: debug budget spent"
                return
            t0 = time.monotonic()
            try:
                RESULTS[name] = fn()
            except Exception as e:  # noqa: BLE001
                RESULTS[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
                print(f"[{name}] FAILED: {type(e).__name__}: {e}", flush=True)
            print(f"[{name}] {time.monotonic() - t0:.1f} s", flush=True)
            save()
        return run
    return wrap


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@section("kernels")
def kernels():
    from turbovid.models import dit as D
    from turbovid.ops import fused
    from turbovid.ops.fused import layernorm_kernel as LK, rope_kernel as RK

    out = {}
    for c, heads in ((1536, 12), (5120, 40)):
        l = 32760
        x = torch.randn(1, l, c, device=DEV, dtype=torch.bfloat16)
        y = torch.randn_like(x)
        e = torch.randn(1, 6, c, device=DEV) * 0.3
        sh, sc, g = e[:, 0], e[:, 1], e[:, 2]
        wt, bs = torch.randn(c, device=DEV), torch.randn(c, device=DEV)
        cos, sin = fused.rope_tables(21, 30, 52, 128, device=DEV)
        qw = torch.randn(c, device=DEV, dtype=torch.bfloat16)
        mb = x.numel() * 2 / 1e6
        cases = {
            "norm_modulate": (lambda: fused.norm_modulate(x, sh, sc), lambda: D.norm_modulate(x, sh, sc), 2 * mb),
            "add_norm_modulate": (lambda: fused.add_norm_modulate(x, y, g, weight=wt, bias=bs),
                                  lambda: D.add_norm_modulate(x, y, g, weight=wt, bias=bs), 4 * mb),
            "gated_residual": (lambda: fused.gated_residual(x, y, g), lambda: D.gated_residual(x, y, g), 3 * mb),
            "rmsnorm_rope": (lambda: fused.rmsnorm_rope(x, qw, cos, sin), lambda: D.rmsnorm_rope(x, qw, cos, sin), 2 * mb),
            "rmsnorm": (lambda: fused.rmsnorm(x, qw), lambda: D.rmsnorm(x, qw), 2 * mb),
        }
        D.set_block_ops()  # the DiT's own functions are the plain baseline
        for name, (fast, plain, traffic_mb) in cases.items():
            f_out, p_out = fast(), plain()
            f_out = f_out[1] if isinstance(f_out, tuple) else f_out
            p_out = p_out[1] if isinstance(p_out, tuple) else p_out
            tf = time_fn(fast, DEV, 3, 20).ms
            tp = time_fn(plain, DEV, 3, 10).ms
            row = {"fused_ms": round(tf, 4), "plain_ms": round(tp, 4), "speedup": round(tp / tf, 2),
                   "fused_GBps": round(traffic_mb / tf, 1), "rel_diff_vs_plain": rel(f_out, p_out)}
            out[f"{name}_C{c}"] = row
            TABLE.append(f"{name:18s} C={c:5d}  fused {tf:7.3f} ms ({traffic_mb / tf:6.0f} GB/s)  plain {tp:7.3f} ms  x{tp / tf:5.1f}  diff {row['rel_diff_vs_plain']:.1e}")
        # launch sweep (rows per program, warps)
        sweep = {}
        bc = 1 << (c - 1).bit_length()
        saved = dict(LK.LAUNCH)
        for bl in (1, 2, 4):
            for w in (4, 8):
                LK.LAUNCH[LK.row_parts(c)] = (bl, w)
                try:
                    sweep[f"ln_{bl}x{w}"] = round(time_fn(lambda: fused.add_norm_modulate(x, y, g, sh, sc), DEV, 2, 10).ms, 4)
                except Exception as ex:  # noqa: BLE001
                    sweep[f"ln_{bl}x{w}"] = str(ex)[:80]
        LK.LAUNCH.clear()
        LK.LAUNCH.update(saved)
        bp = bc // 2
        for bl in (1, 2, 4):
            for w in (4, 8):
                RK.LAUNCH[bp] = (bl, w)
                try:
                    sweep[f"rope_{bl}x{w}"] = round(time_fn(lambda: fused.rmsnorm_rope(x, qw, cos, sin), DEV, 2, 10).ms, 4)
                except Exception as ex:  # noqa: BLE001
                    sweep[f"rope_{bl}x{w}"] = str(ex)[:80]
        RK.LAUNCH.clear()
        out[f"sweep_C{c}"] = sweep
        best_ln = min((v, k) for k, v in sweep.items() if k.startswith("ln") and isinstance(v, float))
        best_rp = min((v, k) for k, v in sweep.items() if k.startswith("rope") and isinstance(v, float))
        TABLE.append(f"sweep C={c}: best add_norm_modulate {best_ln}, best rmsnorm_rope {best_rp}")
    return out


@section("gelu_epilogue")
def gelu_epilogue():
    x = torch.randn(32760, 1536, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(8960, 1536, device=DEV, dtype=torch.bfloat16) * 0.03
    b = torch.randn(8960, device=DEV, dtype=torch.bfloat16) * 0.1
    epi = torch._addmm_activation(b, x, w.t(), use_gelu=True)
    ref32 = F.linear(x.float(), w.float(), b.float())
    out = {
        "rel_vs_tanh_fp32": rel(epi, F.gelu(ref32, approximate="tanh")),
        "rel_vs_erf_fp32": rel(epi, F.gelu(ref32)),
        "rel_unfused_bf16_vs_tanh_fp32": rel(F.gelu(F.linear(x, w, b), approximate="tanh"), F.gelu(ref32, approximate="tanh")),
        "epilogue_ms": round(time_fn(lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True), DEV, 3, 10).ms, 4),
        "unfused_ms": round(time_fn(lambda: F.gelu(F.linear(x, w, b), approximate="tanh"), DEV, 3, 10).ms, 4),
    }
    TABLE.append(f"gelu epilogue {out['epilogue_ms']:.3f} ms vs unfused {out['unfused_ms']:.3f} ms; err vs tanh {out['rel_vs_tanh_fp32']:.1e} (unfused {out['rel_unfused_bf16_vs_tanh_fp32']:.1e}), vs erf {out['rel_vs_erf_fp32']:.1e}")
    return out


def _forward_inputs(cfg, shape=(1, 16, 21, 60, 104)):
    g = torch.Generator(device=DEV).manual_seed(0)
    lat = torch.randn(shape, generator=g, device=DEV).bfloat16()
    ctx = torch.randn(1, 512, cfg.text_dim, generator=g, device=DEV).bfloat16()
    return lat, torch.tensor([500.0], device=DEV).bfloat16(), ctx


@section("forward_paths")
def forward_paths():
    from turbovid.fast import FastOptions, make_fast, make_plain

    out = {}
    paths = {
        "plain": None,
        "fused": FastOptions(gelu_epilogue=False, graph=False),
        "fused+gelu": FastOptions(graph=False),
        "fused+gelu+graph": FastOptions(),
    }
    for variant in os.environ.get("FORWARD_VARIANTS", "sagesla+int8,sla").split(","):
        attn, quant = split_variant(variant)
        dit = build_dit("Wan2.1-1.3B", DEV, torch.bfloat16)
        try:
            if quant != "bf16":
                quantize(dit, quant)
        except Exception as e:  # noqa: BLE001
            out[quant] = f"{type(e).__name__}: {e}"
            continue
        lat, t, ctx = _forward_inputs(dit.cfg)
        for attn in (attn,):
            try:
                dit.set_attention(attn, 0.1)
            except Exception as e:  # noqa: BLE001
                out[f"{attn}+{quant}"] = f"unavailable: {e}"
                continue
            row = {}
            ref = None
            for name, opts in paths.items():
                if time.monotonic() > DEADLINE:
                    break
                runner = make_plain(dit) if opts is None else make_fast(dit, opts)
                try:
                    with torch.inference_mode():
                        v = runner(lat, t, ctx)
                        ms = time_fn(lambda: runner(lat, t, ctx), DEV, 1, 3).ms
                    ref = v if ref is None else ref
                    row[name] = {"ms": round(ms, 2), "rel_vs_plain": rel(v, ref), "finite": bool(torch.isfinite(v).all()),
                                 "graphed": bool(getattr(runner, "_graphs", None))}
                except Exception as e:  # noqa: BLE001
                    row[name] = f"{type(e).__name__}: {str(e)[:300]}"
                make_plain(runner)
            out[f"{attn}+{quant}"] = row
            cells = "  ".join(f"{k} {v['ms']:.1f}" if isinstance(v, dict) else f"{k} ERR" for k, v in row.items())
            TABLE.append(f"1.3B 480p {attn}+{quant}: {cells}")
        del dit
        torch.cuda.empty_cache()
    return out


@section("profile")
def profile():
    from profile_forward import kernel_table  # benchmarks/ is on sys.path when run as a script

    from turbovid.fast import FastOptions, make_fast, make_plain

    variant = os.environ.get("PROFILE_VARIANT", "sagesla+int8")
    dit = variant_dit("Wan2.1-1.3B", variant, DEV, torch.bfloat16, 0.1)
    runner = make_fast(dit, FastOptions(graph=False))
    with torch.inference_mode():
        rows = kernel_table(runner, *_forward_inputs(dit.cfg))
    make_plain(runner)
    total = sum(r["ms"] for r in rows)
    TABLE.append(f"profile {variant} fused eager: total kernel time {total:.1f} ms")
    for r in rows[:18]:
        TABLE.append(f"  {r['ms']:8.2f} ms {r['count']:5d}x  {r['kernel'][:110]}")
    return {"variant": variant, "total_ms": total, "top": rows[:40]}


@section("compile")
def compile_path():
    if os.environ.get("TRY_COMPILE", "0") != "1":
        return "not requested"
    if DEADLINE - time.monotonic() < 110:
        return "skipped: less than 110 s of the debug budget left"
    from turbovid.fast import FastOptions, make_fast, make_plain

    dit = build_dit("Wan2.1-1.3B", DEV, torch.bfloat16)
    dit.set_attention("sla", 0.1)
    lat, t, ctx = _forward_inputs(dit.cfg)
    runner = make_fast(dit, FastOptions(graph=False, compile=True))
    t0 = time.monotonic()
    with torch.inference_mode():
        runner(lat, t, ctx)
        torch.cuda.synchronize()
        compile_s = time.monotonic() - t0
        ms = time_fn(lambda: runner(lat, t, ctx), DEV, 1, 3).ms
    make_plain(runner)
    TABLE.append(f"torch.compile (sla, no graph): compile {compile_s:.0f} s, forward {ms:.1f} ms")
    return {"compile_s": compile_s, "ms": ms}


if __name__ == "__main__":
    for fn in (kernels, gelu_epilogue, forward_paths, profile, compile_path):
        fn()
    print("\n".join(TABLE), flush=True)
