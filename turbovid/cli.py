"""Command line: `turbovid generate`, `turbovid serve`, `turbovid convert`.

Every bad input ends in one line on stderr naming the fix and exit code 2, with no output file.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from turbovid.options import GenerationRequest, PipelineOptions, field_types

log = logging.getLogger("turbovid")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_OUTPUT = "outputs/generated_video.mp4"


_METAVARS = {str: "TEXT", int: "N", float: "X"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's full usage block
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, title: str) -> None:
    """One flag per field: --field_name (and --field-name), help and choices from the field metadata."""
    group = parser.add_argument_group(title)
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        if f.name == "checkpoint_dir" or f.name == "vae_tiling":  # spelled with a hyphen in the docs
            flags.reverse()
        meta, tp = f.metadata, types[f.name]
        if tp is bool:
            group.add_argument(*flags, dest=f.name, action="store_true", default=f.default, help=meta.get("help"))
            continue
        default_note = "" if f.default is None or "default" in meta.get("help", "") else f" (default: {f.default})"
        group.add_argument(
            *flags, dest=f.name, type=tp, default=f.default, choices=meta.get("choices"),
            metavar=None if meta.get("choices") else meta.get("metavar", _METAVARS.get(tp, tp.__name__.upper())),
            help=meta.get("help", "") + default_note,
        )


def dataclass_from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def build_parser() -> argparse.ArgumentParser:
    from turbovid import __version__

    parser = _Parser(prog="turbovid", description="Few-step text-to-video on Wan2.1 (TurboDiffusion rCM).")
    parser.add_argument("--version", action="version", version=f"turbovid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="generate a video from a prompt", description="Generate a video from a prompt.")
    gen.add_argument("--output", "-o", default=DEFAULT_OUTPUT,
                     help=f"video file: .mp4 (H.264), .webm or .gif; a .json sidecar goes next to it (default: {DEFAULT_OUTPUT})")
    gen.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")
    add_dataclass_arguments(gen, GenerationRequest, "generation")
    add_dataclass_arguments(gen, PipelineOptions, "model")

    srv = sub.add_parser("serve", help="keep the model loaded and serve a web page + HTTP API",
                         description="Serve the job API (POST /v1/videos) and a web page at /.")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    srv.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    srv.add_argument("--output-dir", "--output_dir", dest="output_dir", default="outputs/server",
                     help="where finished videos are kept (default: outputs/server)")
    srv.add_argument("--max-queue", "--max_queue", dest="max_queue", type=int, default=16,
                     help="jobs waiting at most; more are refused with 503 (default: 16)")
    srv.add_argument("--resolution", default="480p", choices=("480p", "720p"),
                     help="which weights to fetch where a model has both (14B), and the warm-up video's size; "
                          "requests still pick any size")
    srv.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                     help="generate one video before serving, so the first request is as fast as the rest "
                          "(the first start after installing compiles the kernels: about half a minute) (default: on)")
    add_dataclass_arguments(srv, PipelineOptions, "model")

    conv = sub.add_parser("convert", help="quantize a DiT checkpoint offline (int8 / fp8 block-scaled)",
                          description="Quantize the block linears of a float DiT checkpoint into a .safetensors file.")
    conv.add_argument("src", help="source checkpoint")
    conv.add_argument("dst", help="destination file (.safetensors)")
    conv.add_argument("--format", default="int8", help="int8 (TurboDiffusion's -quant layout) or fp8 (default: int8)")
    conv.add_argument("--model", default=None, help="model preset, when it cannot be inferred from the weights")
    # listed for --help only: main() hands `bench` and its own flags to turbovid.bench.main
    sub.add_parser("bench", help="time the DiT, diffusers' baseline and the full pipeline on this GPU (turbovid bench --help)")
    return parser


def output_paths(output: str | Path, num_samples: int) -> list[Path]:
    """NAME.mp4 for one sample, NAME_0.mp4, NAME_1.mp4, ... for several."""
    output = Path(output)
    if num_samples == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(num_samples)]


def sidecar_path(video: Path) -> Path:
    return video.with_suffix(".json")


class _Bars:
    """tqdm bars for the pipeline's progress events, one per stage."""

    LABELS = {"load": "loading", "encode": "text", "sample": "sampling", "decode": "decoding"}
    UNITS = {"decode": "frame"}

    def __init__(self, enabled: bool):
        self.enabled, self.bars = enabled, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=self.LABELS.get(stage, stage),
                                          unit=self.UNITS.get(stage, "step"), file=sys.stderr, leave=False,
                                          dynamic_ncols=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def summary_line(paths: list[Path], result, load_s: float) -> str:
    t, req = result.timings, result.request
    h, w = result.frames.shape[1:3]
    n = len(t["steps"])
    where = str(paths[0]) if len(paths) == 1 else f"{paths[0]} .. {paths[-1].name}"
    note = " [tiny-random: random weights, noise]" if result.settings.get("model") == "tiny-random" else ""
    return (
        f"saved {where}{note} ({req.num_frames} frames {w}x{h}) | load {load_s:.1f} s | text {t['text_encoding']:.2f} s | "
        f"sampling {n} steps {t['sampling']:.2f} s ({t['sampling'] / n:.2f} s/step) | decode {t['vae_decode']:.2f} s | "
        f"total {t['total']:.2f} s"
    )


def run_generate(args: argparse.Namespace) -> int:
    import time

    from turbovid.io import check_output_path, write_json
    from turbovid.pipeline import Pipeline, UsageError, check_options, resolve_request

    request = dataclass_from_args(GenerationRequest, args)
    options = dataclass_from_args(PipelineOptions, args)
    # 1. everything that can be checked without loading a model
    check_options(options)
    request = resolve_request(request, options.model, options.sampler)
    paths = output_paths(args.output, request.num_samples)
    for p in paths:
        try:
            check_output_path(p)
        except ValueError as e:
            raise UsageError(str(e)) from None
    # 2. load, generate; each video is encoded while the VAE decodes the rest of it, into a temp
    # file that becomes the output only when complete (nothing half-written on an error or Ctrl-C)
    bars = _Bars(enabled=not args.quiet)
    try:
        pipe = Pipeline.from_options(options, progress=bars, resolution=request.resolution)
        pipe.for_one_request()  # frees the text encoder after encoding; no CUDA graph for a few forwards
        result, writers = pipe.generate_into(request, paths, progress=bars)
    finally:
        bars.close()
    # 3. finish the files: "write" is the encoding left after the decode
    for i, path in enumerate(paths):
        start = time.perf_counter()
        try:
            writers[i].close()
        except BaseException as e:
            for w in writers[i + 1:]:
                w.abort()
            if isinstance(e, OSError):  # disk full, folder removed meanwhile
                raise UsageError(f"writing {path} failed ({e}); free disk space or choose another --output") from None
            raise
        timings = {"load": pipe.load_seconds, "load_parts": pipe.load_timings, "write": time.perf_counter() - start}
        write_json(result.metadata(i, path.name, timings), sidecar_path(path))
    print(summary_line(paths, result, pipe.load_seconds))
    return 0


def _warm_up(pipe, resolution: str) -> None:
    from turbovid.pipeline import OutOfMemory

    log.info("warming up: one %s video before serving (--no-warmup skips it)", resolution)
    try:
        seconds = pipe.warmup(GenerationRequest(prompt="warm-up", resolution=resolution))
    except OutOfMemory as e:  # smaller requests may still fit: serve them, and say why this one did not
        log.warning("warm-up skipped: %s", e)
        return
    log.info("warm-up done in %.1f s", seconds)


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise SystemExit("turbovid serve: error: needs the server extras; pip install 'turbovid[server]'") from None
    from turbovid.pipeline import Pipeline, check_options
    from turbovid.server import create_app

    options = dataclass_from_args(PipelineOptions, args)
    check_options(options)
    bars = _Bars(enabled=True)
    try:
        pipe = Pipeline.from_options(options, progress=bars, resolution=args.resolution)
    finally:
        bars.close()
    if args.warmup:
        _warm_up(pipe, args.resolution)
    app = create_app(pipe, output_dir=args.output_dir, max_queue=args.max_queue)
    log.info("serving on http://%s:%d/", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from turbovid.loading.common import CheckpointError
    from turbovid.loading.convert import convert_checkpoint
    from turbovid.pipeline import UsageError

    if not Path(args.src).exists():
        raise UsageError(f"{args.src}: file not found")
    try:
        convert_checkpoint(args.src, args.dst, args.format, args.model)
    except CheckpointError:
        raise
    except ValueError as e:  # unknown format or model, dst == src
        raise UsageError(str(e)) from None
    print(f"wrote {args.dst}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from turbovid.loading.common import CheckpointError
    from turbovid.pipeline import UsageError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from turbovid.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="turbovid: %(message)s")
    run = {"generate": run_generate, "serve": run_serve, "convert": run_convert}[args.command]
    try:
        return run(args)
    except (UsageError, CheckpointError) as e:  # CheckpointError covers missing and mismatched weights
        print(f"turbovid {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"turbovid {args.command}: interrupted (no output written)", file=sys.stderr)
        return EXIT_INTERRUPTED


def exit_process(code: int) -> NoReturn:
    """End a `turbovid` process: flush the logs and output streams, then `os._exit`, which skips the
    interpreter's teardown (garbage-collecting modules and tensors, destroying the CUDA context; 0.7-0.9 s
    after a video on an H100 host, benchmarks/bench_load.py). Every output file is closed by then. A
    normal exit where a profiler or tracer is attached (cProfile, coverage, debuggers) or with
    TURBOVID_FAST_EXIT=0, since those finish their work in atexit handlers."""
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+: coverage's sys.monitoring core
    traced = sys.getprofile() or sys.gettrace() or (
        monitoring is not None and any(monitoring.get_tool(i) for i in range(6)))
    if os.environ.get("TURBOVID_FAST_EXIT", "1") == "0" or traced:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


def entry() -> NoReturn:
    """The `turbovid` console script and `python -m turbovid`: main(), then a fast exit."""
    exit_process(main())


if __name__ == "__main__":
    entry()
