"""Where a checkpoint load's seconds go (dev tool, run on the device after bench_load.py wrote its files).

For one large file (default: the umT5 .pth bench_load.py writes) it times, from a warm and from a cold
page cache: torch.load(mmap=True) alone; the memory-mapped tensors copied to the GPU one by one (plain
.to) and through turbovid's pinned stager; the whole file read into pinned memory by 1 and by N threads
(pread, 64 MiB pieces) and copied up in one piece; torch.load without mmap. Prints one JSON object.

    python benchmarks/explore_load.py [--file /tmp/ck/models_t5_umt5-xxl-enc-bf16.pth] [--threads 8]
    python benchmarks/explore_load.py --cli TOKENIZER_DIR [--profile FILE]

--cli times one CLI process (bench_load.py's files, warm cache) in parts: interpreter start and imports,
main() itself (cProfile of it written to FILE), and the exit after main returned.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_load import drop_cache  # noqa: E402

PIECE = 64 << 20


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def pread_all(path: Path, threads: int) -> torch.Tensor:
    size = path.stat().st_size
    buf = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    view = memoryview(buf.numpy())
    fd = os.open(path, os.O_RDONLY)
    try:
        def read(off: int) -> None:
            n, got = min(PIECE, size - off), 0
            while got < n:
                got += os.preadv(fd, [view[off + got:off + n]], off + got)

        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(read, range(0, size, PIECE)))
    finally:
        os.close(fd)
    return buf


CHILD = """
import cProfile, pstats, sys, time
t_start = float(sys.argv[1])
t0 = time.time()
import torch
t_torch = time.time()
from turbovid import cli
t_cli = time.time()
prof = cProfile.Profile()
prof.enable()
rc = cli.main(sys.argv[3:])
prof.disable()
t_main = time.time()
with open(sys.argv[2], "w") as f:
    pstats.Stats(prof, stream=f).sort_stats("cumulative").print_stats(80)
print("TIMES", t0 - t_start, t_torch - t0, t_cli - t_torch, t_main - t_cli, time.time(), flush=True)
"""


def cli_parts(tokenizer: str, profile: str) -> dict:
    import subprocess

    from bench_load import DIT, PROMPT, T5, VAE

    ck = Path("/tmp/ck")
    drop_cache([])  # sync only
    pread_all(ck / T5, 8)
    args = ["generate", "--prompt", PROMPT, "--quiet", "--offline", "--dit_path", str(ck / DIT), "--text_encoder_path",
            str(ck / T5), "--vae_path", str(ck / VAE), "--tokenizer_path", tokenizer, "--output", "/tmp/cli-parts.mp4"]
    t_start = time.time()
    p = subprocess.run([sys.executable, "-c", CHILD, repr(t_start), profile, *args], capture_output=True, text=True)
    t_end = time.time()
    line = next(x for x in p.stdout.splitlines() if x.startswith("TIMES"))
    start, torch_s, cli_s, main_s, t_main_end = map(float, line.split()[1:])
    return {"interpreter_start_s": start, "import_torch_s": torch_s, "import_cli_s": cli_s, "main_s": main_s,
            "exit_after_main_s": t_end - t_main_end, "process_s": t_end - t_start, "summary": p.stdout.splitlines()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=Path("/tmp/ck/models_t5_umt5-xxl-enc-bf16.pth"))
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--cli", metavar="TOKENIZER_DIR")
    ap.add_argument("--profile", default="/tmp/cli-profile.txt")
    args = ap.parse_args()
    if args.cli:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in cli_parts(args.cli, args.profile).items()}))
        return
    from turbovid.loading.transfer import _Stager

    path, gb = args.file, args.file.stat().st_size / 1e9
    out: dict = {"file": str(path), "GB": round(gb, 3), "torch_threads": torch.get_num_threads()}
    torch.empty(1, device="cuda")
    for cache in ("warm", "cold"):
        r: dict = {}

        def fresh():
            if cache == "cold":
                drop_cache([path])
            else:
                pread_all(path, args.threads)  # into the page cache

        fresh()
        s, sd = timed(lambda: torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        r["torch_load_mmap_s"] = s
        s, gpu = timed(lambda: {k: v.to("cuda") for k, v in sd.items()})
        r["mmap_plain_to_s"] = s
        del gpu, sd
        fresh()
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        stager = _Stager(torch.device("cuda"))
        s, gpu = timed(lambda: [stager(v) for v in sd.values()] and stager.finish())
        r["mmap_staged_s"] = s
        del gpu, sd
        fresh()
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        s, cpu = timed(lambda: [v.clone() for v in sd.values()])
        r["mmap_clone_cpu_s"] = s
        del cpu, sd
        for n in (1, args.threads, 2 * args.threads):
            fresh()
            s, buf = timed(lambda: pread_all(path, n))
            r[f"pread_pinned_{n}threads_s"] = s
            s, _ = timed(lambda: buf.to("cuda", non_blocking=True))
            r["pinned_to_gpu_s"] = s
            del buf
        fresh()
        s, sd = timed(lambda: torch.load(path, map_location="cpu", weights_only=True))
        r["torch_load_no_mmap_s"] = s
        del sd
        torch.cuda.empty_cache()
        out[cache] = {k: round(v, 3) for k, v in r.items()}
        out[cache].update({k.replace("_s", "_GBps"): round(gb / v, 2) for k, v in r.items()
                           if k.startswith(("pread", "mmap", "torch_load_no"))})
        print(json.dumps({cache: out[cache]}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
