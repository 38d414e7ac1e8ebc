"""JSON results -> markdown tables (docs/benchmarks.md summary + "End to end", the README block)."""
from __future__ import annotations

import re
from pathlib import Path

from .cases import VARIANTS

# Targets of the end-to-end issue (one H100, Wan2.1-1.3B unless named, 81 frames, 4 rCM steps).
TARGETS = [
    ("DiT forward, 1.3B 480p, sagesla+int8", "forward_480p", 0.110, "s", "<="),
    ("4-step sampling, 1.3B 480p", "sampling_480p", 0.45, "s", "<="),
    ("4-step sampling, 1.3B 720p", "sampling_720p", 1.5, "s", "<="),
    ("full pipeline (text + 4 steps + VAE), 1.3B 480p", "pipeline_480p", 1.2, "s", "<="),
    ("sampling speed-up vs the 50-step CFG recipe, 1.3B 480p", "speedup_480p", 100.0, "x", ">="),
    ("4-step sampling, 14B 480p", "sampling_14b_480p", 4.0, "s", "<="),
]

SUMMARY_MARKERS = ("<!-- bench:summary:start -->", "<!-- bench:summary:end -->")
E2E_MARKERS = ("<!-- bench:e2e:start -->", "<!-- bench:e2e:end -->")
README_MARKERS = ("<!-- bench:start -->", "<!-- bench:end -->")

DOC_SKELETON = """# Benchmarks

Random weights at the real sizes, one GPU, warm-up then CUDA-event timing, median of repeats.
Regenerate: `turbovid bench` (or `python benchmarks/bench_e2e.py`); raw figures are in
`benchmarks/results/*.json` (card, driver, versions, commit, command).

## Summary

{summary_start}
{summary_end}

## End to end

{e2e_start}
{e2e_end}

## Attention

## Linear layers

## VAE decode
"""


def _ok(rows, **match):
    return [r for r in rows if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())]


def _fmt_ms(v) -> str:
    return "—" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")


def _fmt_s(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def _with_unit(text: str, unit: str) -> str:
    return text if text == "—" else f"{text} {unit}"


def best_forward(result: dict, model: str, res: str, variant: str | None = None) -> dict | None:
    rows = _ok(result.get("cases", []), what="dit_forward", model=model, resolution=res, path="fast")
    rows = [r for r in rows if variant is None or r["variant"] == variant]
    return min(rows, key=lambda r: r["ms"]) if rows else None


def derived(result: dict) -> dict:
    """The original-recipe comparison and the target figures, from the measured rows."""
    out: dict = {"recipe": [], "targets": {}}
    cases = result.get("cases", [])
    models = sorted({r["model"] for r in cases if r.get("model")}, key=lambda m: (m != "Wan2.1-1.3B", m))
    steps = result.get("options", {}).get("steps", 4)
    for model in models:
        measured = {r.get("resolution") for r in cases if r.get("model") == model and r.get("status") == "ok"}
        for res in sorted(res for res in measured if res):
            best = best_forward(result, model, res)
            base = next(iter(_ok(cases, what="diffusers_forward", model=model, resolution=res)), None)
            pipe = next(iter(_ok(cases, what="pipeline", model=model, resolution=res)), None)
            sampling = pipe["sampling_s"] if pipe else (steps * best["ms"] / 1e3 if best else None)
            recipe = 100 * base["ms"] / 1e3 if base else None
            out["recipe"].append({
                "model": model, "resolution": res, "best_variant": best["variant"] if best else None,
                "forward_ms": best["ms"] if best else None, "sampling_s": sampling,
                "sampling_source": "pipeline" if pipe else f"{steps} x forward",
                "diffusers_forward_ms": base["ms"] if base else None, "original_recipe_s": recipe,
                "speedup": recipe / sampling if recipe and sampling else None,
                "pipeline_total_s": pipe["total_s"] if pipe else None,
            })
    rec = {(r["model"], r["resolution"]): r for r in out["recipe"]}
    fwd = best_forward(result, "Wan2.1-1.3B", "480p", "sagesla+int8")
    t = out["targets"]
    t["forward_480p"] = fwd["ms"] / 1e3 if fwd else None
    t["sampling_480p"] = rec.get(("Wan2.1-1.3B", "480p"), {}).get("sampling_s")
    t["sampling_720p"] = rec.get(("Wan2.1-1.3B", "720p"), {}).get("sampling_s")
    t["pipeline_480p"] = rec.get(("Wan2.1-1.3B", "480p"), {}).get("pipeline_total_s")
    t["speedup_480p"] = rec.get(("Wan2.1-1.3B", "480p"), {}).get("speedup")
    t["sampling_14b_480p"] = rec.get(("Wan2.1-14B", "480p"), {}).get("sampling_s")
    return out


def summary_markdown(result: dict) -> str:
    env = result["env"]
    d = derived(result)
    commit = (env.get("commit") or "unknown")[:10]
    lines = [
        f"Measured {env['date'][:10]} on **{env.get('card')}** (driver {env.get('driver')}, torch {env.get('torch')}, "
        f"triton {env.get('triton')}, diffusers {env.get('diffusers')}), commit `{commit}`; "
        f"raw: `{result.get('path', 'benchmarks/results')}`.",
        "",
        "| target | goal | measured | met |",
        "| --- | --- | --- | --- |",
    ]
    for label, key, goal, unit, op in TARGETS:
        v = d["targets"].get(key)
        if v is None:
            lines.append(f"| {label} | {op} {goal:g} {unit} | not measured | — |")
            continue
        met = v <= goal if op == "<=" else v >= goal
        shown = f"{v:.0f}x" if unit == "x" else f"{v:.3f} s"
        lines.append(f"| {label} | {op} {goal:g} {unit} | {shown} | {'yes' if met else 'no'} |")
    lines += ["", "| model | res | best variant | forward | 4-step sampling | full pipeline | original recipe (diffusers, 50 steps x CFG) | speed-up |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in d["recipe"]:
        speedup = "—" if r["speedup"] is None else f"{r['speedup']:.0f}x"
        lines.append(
            f"| {r['model']} | {r['resolution']} | {r['best_variant'] or '—'} | {_with_unit(_fmt_ms(r['forward_ms']), 'ms')} | "
            f"{_with_unit(_fmt_s(r['sampling_s']), 's')} | {_with_unit(_fmt_s(r['pipeline_total_s']), 's')} | "
            f"{_with_unit(_fmt_s(r['original_recipe_s']), 's')} | "
            f"{speedup} |"
        )
    return "\n".join(lines)


def e2e_markdown(result: dict) -> str:
    cases = result.get("cases", [])
    variants = [v for v in VARIANTS if any(r.get("variant") == v for r in cases)]
    lines = ["### DiT forward (ms, fast path: fused kernels + CUDA graph; floor fraction in brackets)", "",
             "| model | res | tokens | diffusers | " + " | ".join(variants) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in variants) + " |"]
    keys = sorted({(r["model"], r["resolution"], r.get("tokens")) for r in _ok(cases, what="dit_forward")},
                  key=lambda k: (k[0] != "Wan2.1-1.3B", k[0], k[2] or 0))
    for model, res, tokens in keys:
        base = next(iter(_ok(cases, what="diffusers_forward", model=model, resolution=res)), None)
        cells = []
        for v in variants:
            r = next(iter(_ok(cases, what="dit_forward", model=model, resolution=res, variant=v, path="fast")), None)
            if r is None:
                sk = next((c for c in cases if c.get("what") == "dit_forward" and c.get("model") == model
                           and c.get("resolution") == res and c.get("variant") == v), None)
                cells.append("skipped" if sk else "—")
            else:
                frac = f" ({r['floor_fraction']:.0%})" if r.get("floor_fraction") else ""
                cells.append(f"{_fmt_ms(r['ms'])}{frac}")
        lines.append(f"| {model} | {res} | {tokens} | {_fmt_ms(base['ms']) if base else '—'} | " + " | ".join(cells) + " |")
    plain = [r for r in _ok(cases, what="dit_forward", path="plain")]
    if plain:
        lines += ["", "### Fused kernels + CUDA graph vs the plain PyTorch path (same weights, same run)", "",
                  "| model | res | variant | plain (ms) | fast (ms) | gain |", "| --- | --- | --- | --- | --- | --- |"]
        for p in plain:
            f = next(iter(_ok(cases, what="dit_forward", model=p["model"], resolution=p["resolution"],
                              variant=p["variant"], path="fast")), None)
            if f:
                lines.append(f"| {p['model']} | {p['resolution']} | {p['variant']} | {_fmt_ms(p['ms'])} | "
                             f"{_fmt_ms(f['ms'])} | {p['ms'] / f['ms']:.2f}x |")
    pipes = _ok(cases, what="pipeline")
    if pipes:
        lines += ["", "### Full pipeline (s): umT5-XXL text encoding, 4 rCM steps, VAE decode", "",
                  "| model | res | variant | text | sampling | VAE decode | total | peak GiB | .mp4 encode after it (CPU) "
                  "| prompt to .mp4 file, encoded during the decode |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p in pipes:
            enc = p.get("mp4_encode_s")
            enc = "—" if enc is None else f"{_fmt_s(enc)} ({p.get('cpu_count')} cores)"
            to_file = p.get("to_file_s")
            to_file = "—" if to_file is None else f"{_fmt_s(to_file)} (VAE stage {_fmt_s(p['vae_decode_streamed_s'])})"
            lines.append(f"| {p['model']} | {p['resolution']} | {p['variant']} | {_fmt_s(p['text_encoding_s'])} | "
                         f"{_fmt_s(p['sampling_s'])} | {_fmt_s(p['vae_decode_s'])} | {_fmt_s(p['total_s'])} | "
                         f"{p.get('peak_gib')} | {enc} | {to_file} |")
    ceil = result.get("ceilings")
    if ceil:
        lines += ["", "### Ceilings measured in the same run (the floor is priced at these rates)", ""]
        for model, rows in ceil["gemm"].items():
            parts = [f"({r['K']}x{r['N']}) bf16 {r.get('bf16_tflops')} / int8 {r.get('int8_tops', '—')} / fp8 {r.get('fp8_tflops', '—')}"
                     for r in rows]
            lines.append(f"- {model} GEMMs, M={ceil['tokens']}, TFLOP/s: " + "; ".join(parts))
        if ceil.get("attention"):
            a = ceil["attention"]
            lines.append(f"- dense SDPA, {a['heads']} heads x {a['head_dim']}, L={a['L']}: {a['ms']} ms = {a['tflops']} TFLOP/s")
        lines.append(f"- device copy: {ceil.get('copy_GBps')} GB/s (read + write)")
    skips = [r for r in cases if r.get("status") == "skipped"]
    if skips:
        lines += ["", "Skipped in this run:"]
        for r in skips:
            what = " ".join(str(r.get(k)) for k in ("what", "model", "resolution", "variant", "path") if r.get(k))
            lines.append(f"- {what}: {r['reason']}")
    return "\n".join(lines)


def replace_block(text: str, markers: tuple[str, str], body: str) -> str | None:
    start, end = markers
    pat = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pat.search(text):
        return None
    return pat.sub(lambda _: f"{start}\n{body}\n{end}", text, count=1)


def update_docs(result: dict, docs: Path, readme: Path | None) -> dict:
    """Rewrite the generated blocks; other sections of docs/benchmarks.md are left as they are."""
    status = {}
    text = docs.read_text() if docs.exists() else DOC_SKELETON.format(
        summary_start=SUMMARY_MARKERS[0], summary_end=SUMMARY_MARKERS[1], e2e_start=E2E_MARKERS[0], e2e_end=E2E_MARKERS[1])
    for markers, body, name in ((SUMMARY_MARKERS, summary_markdown(result), "summary"), (E2E_MARKERS, e2e_markdown(result), "e2e")):
        new = replace_block(text, markers, body)
        if new is None:  # markers lost: put the block back at the end rather than drop it
            new = text.rstrip() + f"\n\n{markers[0]}\n{body}\n{markers[1]}\n"
        text = new
        status[name] = "updated"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(text)
    if readme is not None:
        if readme.exists():
            new = replace_block(readme.read_text(), README_MARKERS, summary_markdown(result))
            if new is None:
                status["readme"] = f"no {README_MARKERS[0]} ... {README_MARKERS[1]} block in {readme}: not changed"
            else:
                readme.write_text(new)
                status["readme"] = "updated"
        else:
            status["readme"] = f"{readme} not found"
    return status
