"""What a `./predict.sh` run costs with checkpoints of the released sizes, from a cold and a warm page cache
(dev tool, run on the device; writes ~15 GB under --dir the first time).

Writes random-weight checkpoints of the released sizes and dtypes once: TurboWan2.1-T2V-1.3B-480P.pth
(TurboWan key layout, bf16, proj_l float32), models_t5_umt5-xxl-enc-bf16.pth (Wan's key layout, bf16) and
Wan2.1_VAE.pth (float32; turbovid's key names, the official file's sizes). Then it measures the floors
(the disk's cold sequential read, pageable and pinned host-to-GPU copies) and times whole CLI processes,
`turbovid generate ...` with the default options, for each variant (new: this tree; plain: this tree with
TURBOVID_FAST_LOAD=0; base: the tree at --base-tree) from a cold page cache (the files dropped with
posix_fadvise DONTNEED) and a warm one, variants alternated per trial. Each process's time is split into
interpreter start, `import torch`, main() (load, video, write) and exit.

    python benchmarks/bench_load.py --tokenizer TOKENIZER_DIR [--dir /tmp/turbovid-ckpt] [--trials 2]
        [--out DIR] [--name NAME.json] [--quant auto|fp8|int8] [--commit HASH] [--variants new,plain,base
        --base-tree DIR]

TOKENIZER_DIR: any umT5-compatible tokenizer folder (the tests' SentencePiece fixture will do: ids < 256).
`--model tiny-random --cli-args "..."` runs the same plumbing on the CPU with test-sized files (the CPU test).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

DIT, T5, VAE = "TurboWan2.1-T2V-1.3B-480P.pth", "models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth"
PROMPT = "A red fox trotting through fresh snow at dawn"


def _save(sd: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.cpu() for k, v in sd.items()}, tmp)
    tmp.rename(path)


def write_checkpoints(folder: Path, model: str, dev: torch.device) -> dict[str, float]:
    """Random weights drawn on `dev`, saved in the released layouts; skips files already there."""
    from helpers_ckpt import official_shapes, turbodiffusion_sd

    from turbovid.bench.cases import default_dtype_device
    from turbovid.configs import DIT_PRESETS, T5_PRESETS, VAE_PRESETS
    from turbovid.models.t5 import UMT5Encoder, init_weights
    from turbovid.models.vae import build_vae

    folder.mkdir(parents=True, exist_ok=True)
    text, vae = ("umt5-xxl", "wan2.1") if model != "tiny-random" else (model, model)
    seconds = {}
    if not (folder / DIT).exists():
        t0 = time.perf_counter()
        cfg = DIT_PRESETS[model]
        sd = {k: (torch.randn(shape, device=dev) * 0.02).bfloat16() for k, shape in official_shapes(cfg).items()}
        proj_l = {f"blocks.{i}.self_attn.proj_l.{p}": torch.zeros(shape, device=dev)
                  for i in range(cfg.num_layers) for p, shape in (("weight", (cfg.head_dim,) * 2), ("bias", (cfg.head_dim,)))}
        _save(turbodiffusion_sd(sd, proj_l), folder / DIT)
        seconds["dit"] = time.perf_counter() - t0
    if not (folder / T5).exists():
        t0 = time.perf_counter()
        with default_dtype_device(torch.bfloat16, dev):
            model = init_weights(UMT5Encoder(T5_PRESETS[text]), 0)
        sd = {k.replace(".ffn.gate.", ".ffn.gate.0."): v for k, v in model.state_dict().items()}
        del model
        _save(sd, folder / T5)
        del sd
        seconds["text_encoder"] = time.perf_counter() - t0
    if not (folder / VAE).exists():
        t0 = time.perf_counter()
        _save(build_vae(VAE_PRESETS[vae], device=dev, dtype=torch.float32, seed=0).state_dict(), folder / VAE)
        seconds["vae"] = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    os.sync()
    return seconds


def drop_cache(files: list[Path]) -> None:
    os.sync()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_rate(path: Path) -> float:
    """GB/s of one sequential pass over the file in 16 MiB reads."""
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    t0 = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total / (time.perf_counter() - t0) / 1e9


def copy_rates(gib: int = 2) -> dict[str, float]:
    """Host-to-GPU GB/s of one large copy from pageable and from pinned memory."""
    n = gib << 30
    out = {}
    for name, pinned in (("pageable", False), ("pinned", True)):
        src = torch.empty(n, dtype=torch.uint8, pin_memory=pinned)
        src.fill_(1)
        dst = torch.empty(n, dtype=torch.uint8, device="cuda")
        dst.copy_(src, non_blocking=pinned)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=pinned)
        torch.cuda.synchronize()
        out[name] = n / (time.perf_counter() - t0) / 1e9
        del src, dst
    torch.cuda.empty_cache()
    return out


# The CLI under a wrapper that stamps the clock after `import torch` and after main() returns, so the
# process's time splits into interpreter start, torch import, main (load + video + write) and exit (as the
# console script ends it); it also reports the process's peak of PyTorch's GPU allocator.
WRAPPER = """
import sys, time
t0 = time.time()
import torch
t1 = time.time()
from turbovid import cli
rc = cli.main(sys.argv[1:])
t2 = time.time()
peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_initialized() else 0.0
print("TIMES", t0, t1, t2, peak, flush=True)
getattr(cli, "exit_process", sys.exit)(rc)  # how the console script ends (trees before it: sys.exit)
"""


def run_python(code: str, argv: list[str], tree: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -c code *argv` in a fresh process, `tree` first on PYTHONPATH, output captured."""
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, cwd=tree)


def last_line(proc: subprocess.CompletedProcess, what: str) -> str:
    """A child's last line of output, or why it failed."""
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 else f"{what}: failed\n{proc.stderr[-2000:]}"


def run_cli(folder: Path, tokenizer: Path, out_dir: Path, variant: str, args: argparse.Namespace, tag: str) -> dict:
    """One `turbovid generate` process. variant: new (this tree), plain (TURBOVID_FAST_LOAD=0), base (--base-tree)."""
    video = out_dir / f"{tag}.mp4"
    cli = ["generate", "--prompt", PROMPT, "--quiet", "--offline", "--model", args.model, *args.cli_args.split(),
           "--dit_path", str(folder / DIT), "--text_encoder_path", str(folder / T5), "--vae_path", str(folder / VAE),
           "--tokenizer_path", str(tokenizer), "--quant", args.quant, "--output", str(video)]
    tree = args.base_tree if variant == "base" else ROOT
    start = time.time()
    proc = run_python(WRAPPER, cli, tree, {"TURBOVID_FAST_LOAD": "0" if variant == "plain" else "1"})
    end = time.time()
    if proc.returncode:
        raise SystemExit(f"{tag}: the CLI failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    t0, t1, t2, peak = map(float, lines[-1].split()[1:])
    side = json.loads(video.with_suffix(".json").read_text())
    t = side["timings"]
    return {"tag": tag, "variant": variant, "process_s": round(end - start, 3),
            "parts_s": {"interpreter": round(t0 - start, 3), "import_torch": round(t1 - t0, 3), "main": round(t2 - t1, 3),
                        "exit": round(end - t2, 3)},
            "gpu_peak_gib": round(peak, 2), "load_s": round(t["load"], 3), "load_parts_s": {k: round(v, 3) for k, v in t.get("load_parts", {}).items()},
            **{f"{k}_s": round(t[k], 3) for k in ("text_encoding", "sampling", "vae_decode", "total", "write")},
            "summary": lines[-2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, type=Path)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/turbovid-ckpt"))
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--quant", default="auto", choices=("auto", "fp8", "int8", "none"))
    ap.add_argument("--model", default="Wan2.1-1.3B", choices=("Wan2.1-1.3B", "tiny-random"))
    ap.add_argument("--cli-args", default="", help="more `turbovid generate` options, one string")
    ap.add_argument("--commit", help="the tree's commit (default: git rev-parse)")
    ap.add_argument("--variants", default="new,plain", help="comma list of new, plain, base")
    ap.add_argument("--base-tree", type=Path, help="another checkout of turbovid (variant base), e.g. the previous release")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--name", default=f"{datetime.date.today()}-load.json")
    args = ap.parse_args()
    args.tokenizer, args.dir, args.out = args.tokenizer.resolve(), args.dir.resolve(), args.out.resolve()  # base runs elsewhere
    args.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    written = write_checkpoints(args.dir, args.model, dev)
    files = [args.dir / f for f in (DIT, VAE, T5)]
    sizes = {f.name: round(f.stat().st_size / 1e9, 3) for f in files}
    print("checkpoints:", sizes, "written in", {k: round(v, 1) for k, v in written.items()}, flush=True)
    drop_cache(files)
    floors = {"cold_read_GBps": round(read_rate(args.dir / T5), 2), "warm_read_GBps": round(read_rate(args.dir / T5), 2),
              **({f"h2d_{k}_GBps": round(v, 2) for k, v in copy_rates().items()} if dev.type == "cuda" else {})}
    print("floors:", floors, flush=True)
    videos = args.out / "load-videos"
    videos.mkdir(exist_ok=True)
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True).stdout.strip()
    report = {
        "date": str(datetime.date.today()), "card": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "commit": commit,
        "command": " ".join(sys.argv), "cpu_count": os.cpu_count(), "checkpoint_GB": sizes, "floors": floors, "runs": [],
    }

    def record(run: dict) -> None:  # rewritten after every run: a time limit keeps what was measured
        report["runs"].append(run)
        (args.out / args.name).write_text(json.dumps(report, indent=1))
        print(json.dumps(run), flush=True)

    variants = args.variants.split(",")
    for v in dict.fromkeys(["new", *variants]):  # Triton cache, autotune picks, each tree's bytecode
        record(run_cli(args.dir, args.tokenizer, videos, v, args, f"warmup-{v}"))
    for trial in range(args.trials):
        for v in (variants if trial % 2 == 0 else variants[::-1]):
            for cache in ("cold", "warm"):
                if cache == "cold":
                    drop_cache(files)
                tag = f"t{trial}-{cache}-{v}"
                record({**run_cli(args.dir, args.tokenizer, videos, v, args, tag), "cache": cache, "trial": trial})
    print("wrote", args.out / args.name)


if __name__ == "__main__":
    main()
