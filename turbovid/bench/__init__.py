"""`turbovid bench`: how long a video takes on this GPU, against what users run today.

    python -m turbovid.bench                       # everything, writes benchmarks/results/*.json
    python -m turbovid.bench --models tiny-random --resolutions 256p --frames 5   # CPU plumbing check

One process measures, with random weights at the real sizes: the GEMM / attention / copy ceilings;
our DiT forward per variant (dense | sla | sagesla, the sparse two also with int8 / fp8 linears),
fast path (fused kernels + CUDA graph) and, for the first model, the plain PyTorch path; diffusers'
WanTransformer3DModel forward; and the full pipeline (umT5-XXL, 4 rCM steps, VAE decode) with the
fastest variant. What cannot run is recorded with the reason. The JSON is rewritten after every
case, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from turbovid.configs import DIT_PRESETS

from .cases import VARIANTS, build_dit, diffusers_case, dit_case, latent_shape, pipeline_case, quantize, skipped, split_variant, tokens_of, variant_dit
from .report import derived, update_docs
from .timing import environment, measure_ceilings

log = logging.getLogger("turbovid.bench")

__all__ = ["BenchOptions", "run", "main"]


@dataclass
class BenchOptions:
    models: list[str] = field(default_factory=lambda: ["Wan2.1-1.3B", "Wan2.1-14B"])
    resolutions: list[str] = field(default_factory=lambda: ["480p", "720p"])
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    frames: int = 81
    steps: int = 4
    topk: float = 0.1
    warmup: int = 1
    repeats: int = 5
    max_case_seconds: float = 15.0  # fewer repeats for slow cases
    plain_models: list[str] | None = None  # also time the plain path (default: the first model)
    plain_resolutions: list[str] | None = None  # ... at these resolutions (default: all)
    skip_cases: list[str] = field(default_factory=list)  # "model/resolution/variant" DiT cases not to run
    baseline: bool = True  # diffusers' forward
    baseline_resolutions: list[str] | None = None  # default: all for the first model, 480p for the others
    pipeline: bool = True
    pipeline_models: list[str] | None = None  # default: the first model
    ceilings: bool = True
    budget_s: float = 0.0  # stop starting new cases after this many seconds (0: no limit)
    device: str | None = None
    commit: str | None = None
    out: str = "benchmarks/results"
    name: str | None = None  # JSON file name (default: <date>-e2e-<card>.json)
    docs: str | None = None  # regenerate this docs/benchmarks.md
    readme: str | None = None  # and the block between <!-- bench:start/end --> of this README


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")[:40]


def run(opts: BenchOptions, command: str = "") -> dict:
    for m in opts.models:
        if m not in DIT_PRESETS:
            raise ValueError(f"unknown model {m!r}; choose from {', '.join(DIT_PRESETS)}")
    for v in opts.variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    for r in opts.resolutions:
        latent_shape(r, opts.frames)  # raises on a bad resolution / frame count
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    start = time.monotonic()
    time_left = (lambda: opts.budget_s - (time.monotonic() - start)) if opts.budget_s else (lambda: float("inf"))
    env = environment(device, opts.commit, command)
    name = opts.name or f"{env['date'][:10]}-e2e-{_slug(env.get('card') or device.type)}.json"
    path = Path(opts.out) / name
    result: dict = {"schema": 1, "path": str(path), "env": env, "options": dataclasses.asdict(opts),
                    "dtype": str(dtype).removeprefix("torch."), "ceilings": None, "cases": []}

    def save() -> None:
        result["derived"] = derived(result)
        result["elapsed_s"] = round(time.monotonic() - start, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))

    def add(row: dict) -> None:
        result["cases"].append(row)
        if row.get("status") == "ok" and "ms" in row:
            log.info("%s %s %s %s %s: %.1f ms", row["what"], row["model"], row.get("resolution"), row.get("variant", ""),
                     row.get("path", ""), row["ms"])
        save()

    if opts.ceilings and device.type == "cuda":
        cfg = DIT_PRESETS[opts.models[0]]
        tokens = tokens_of(cfg, latent_shape(opts.resolutions[0], opts.frames))
        try:
            result["ceilings"] = measure_ceilings({m: DIT_PRESETS[m] for m in opts.models}, tokens, device)
        except Exception as e:  # noqa: BLE001
            result["ceilings"] = {"error": f"{type(e).__name__}: {e}"}
        save()

    plain_models = opts.plain_models if opts.plain_models is not None else opts.models[:1]
    pipeline_models = opts.pipeline_models if opts.pipeline_models is not None else opts.models[:1]
    for model in opts.models:
        _dit_cases(model, opts, device, dtype, model in plain_models, result.get("ceilings"), add, time_left)
        if opts.baseline:
            res = opts.baseline_resolutions or (opts.resolutions if model == opts.models[0] else opts.resolutions[:1])
            for row in diffusers_case(model, res, opts.frames, device, dtype, opts.warmup, opts.repeats,
                                      opts.max_case_seconds, time_left):
                add(row)
        if opts.pipeline and model in pipeline_models:
            _pipeline(model, opts, device, dtype, result, add, time_left)
    save()
    if opts.docs:
        result["docs_status"] = update_docs(result, Path(opts.docs), Path(opts.readme) if opts.readme else None)
        save()
    return result


def _groups(variants: list[str]) -> list[tuple[str, list[str]]]:
    """Variants grouped by weight format, bf16 first: one model build per group."""
    order = ["bf16", "int8", "fp8"]
    groups: dict[str, list[str]] = {}
    for v in variants:
        groups.setdefault(split_variant(v)[1], []).append(v)
    return [(q, groups[q]) for q in order if q in groups]


def _dit_cases(model, opts, device, dtype, with_plain, ceilings, add, time_left) -> None:
    from turbovid.fast import make_fast, make_plain

    for quant, variants in _groups(opts.variants):
        rows = [dict(what="dit_forward", model=model, resolution=r, variant=v, path="fast")
                for r in opts.resolutions for v in variants]
        if time_left() < 0:
            for row in rows:
                add(skipped("time budget spent", **row))
            continue
        try:
            dit = build_dit(model, device, dtype)
            if quant != "bf16":
                quantize(dit, quant)
        except (ImportError, AttributeError, NotImplementedError, torch.cuda.OutOfMemoryError) as e:
            for row in rows:
                add(skipped(f"{quant} weights unavailable ({type(e).__name__}: {str(e)[:160]})", **row))
            continue
        for res in opts.resolutions:
            for variant in variants:
                plain_here = with_plain and res in (opts.plain_resolutions or opts.resolutions)
                for path in ("fast", "plain") if plain_here else ("fast",):
                    if f"{model}/{res}/{variant}" in opts.skip_cases:
                        add(skipped("excluded with --skip-cases (time limit of the recorded run)", what="dit_forward",
                                    model=model, resolution=res, variant=variant, path=path))
                        continue
                    if time_left() < 0:
                        add(skipped("time budget spent", what="dit_forward", model=model, resolution=res,
                                    variant=variant, path=path))
                        continue
                    runner = make_fast(dit) if path == "fast" else make_plain(dit)
                    add(dit_case(runner, dit, model=model, resolution=res, frames=opts.frames, variant=variant, path=path,
                                 topk=opts.topk, device=device, dtype=dtype, warmup=opts.warmup, repeats=opts.repeats,
                                 max_seconds=opts.max_case_seconds, ceilings=ceilings))
                    make_plain(runner)
        del dit
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _pipeline(model, opts, device, dtype, result, add, time_left) -> None:
    """The full pipeline with the fastest variant measured for this model at the first resolution."""
    from turbovid.fast import make_fast, make_plain

    from .report import best_forward

    best = best_forward(result, model, opts.resolutions[0])
    if best is None:
        add(skipped("no DiT variant ran", what="pipeline", model=model))
        return
    dit = variant_dit(model, best["variant"], device, dtype, opts.topk)
    runner = make_fast(dit)
    for row in pipeline_case(runner, model, opts.resolutions, opts.frames, opts.steps, device, dtype,
                             best["variant"], repeats=2 if device.type == "cuda" else 1, time_left=time_left):
        add(row)
    make_plain(runner)
    del dit, runner
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turbovid bench", description=__doc__.split("\n\n")[0])
    d = BenchOptions()
    p.add_argument("--models", type=_csv, default=d.models, help=f"comma-separated presets (default: {','.join(d.models)})")
    p.add_argument("--resolutions", type=_csv, default=d.resolutions, help="comma-separated (default: 480p,720p)")
    p.add_argument("--variants", type=_csv, default=d.variants, help=f"comma-separated of {','.join(VARIANTS)}")
    p.add_argument("--frames", type=int, default=d.frames)
    p.add_argument("--steps", type=int, default=d.steps, help="rCM steps of the pipeline (default: 4)")
    p.add_argument("--topk", type=float, default=d.topk, help="SLA key-block fraction (default: 0.1)")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--max-case-seconds", type=float, default=d.max_case_seconds)
    p.add_argument("--plain-models", type=_csv, default=None, help="models also timed on the plain path (default: the first)")
    p.add_argument("--plain-resolutions", type=_csv, default=None, help="resolutions of the plain-path cases (default: all)")
    p.add_argument("--skip-cases", type=_csv, default=[], help="DiT cases not to run, as model/resolution/variant")
    p.add_argument("--pipeline-models", type=_csv, default=None, help="models run end to end (default: the first)")
    p.add_argument("--baseline-resolutions", type=_csv, default=None)
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip diffusers")
    p.add_argument("--no-pipeline", dest="pipeline", action="store_false", help="skip the full pipeline")
    p.add_argument("--no-ceilings", dest="ceilings", action="store_false", help="skip the GEMM/attention/copy ceilings")
    p.add_argument("--budget-s", type=float, default=0.0, help="start no case after this many seconds (0: no limit)")
    p.add_argument("--device", default=None)
    p.add_argument("--commit", default=None, help="commit to record (the device copy has no .git)")
    p.add_argument("--out", default=d.out, help="results folder (default: benchmarks/results)")
    p.add_argument("--name", default=None, help="JSON file name")
    p.add_argument("--docs", default=None, help="regenerate the tables of this docs/benchmarks.md")
    p.add_argument("--readme", default=None, help="and the <!-- bench:start/end --> block of this README")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    opts = BenchOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BenchOptions)})
    try:
        result = run(opts, command="turbovid bench " + shlex.join(argv))
    except ValueError as e:
        print(f"turbovid bench: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result["derived"], indent=1))
    print(f"wrote {result['path']}")
    return 0
