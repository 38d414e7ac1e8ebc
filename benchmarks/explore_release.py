"""What letting go of umT5 costs, read through its memory map or with pread (dev tool, run on the device).

The CLI's text-encoding stage frees the 11.4 GB text encoder after one prompt, and that stage took 0.3-0.8 s
where the encode itself takes ~0.05 s. In fresh processes, alternated: load umT5-XXL to the GPU with
turbovid's loader (transfer.FILE_READS on: pread; off: copies through the map), encode one prompt, then
time dropping the encoder (its GPU tensors and the file mapping) and torch.cuda.empty_cache() apart.
Writes bench_load.py's checkpoints if missing; prints one JSON line per process.

    python benchmarks/explore_release.py --tokenizer TOKENIZER_DIR [--dir /tmp/ck] [--trials 2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CHILD = """
import gc, json, sys, time, torch
from turbovid.loading import load_text_encoder, transfer
from turbovid.models.t5 import warm_up_kernels
path, tok, mode = sys.argv[1:4]
transfer.FILE_READS = mode == "pread"
dev = torch.device("cuda")
warm_up_kernels(dev, torch.bfloat16)
t0 = time.perf_counter()
te = load_text_encoder(path, tokenizer=tok, device=dev)
torch.cuda.synchronize(); t1 = time.perf_counter()
te.encode(["A red fox trotting through fresh snow at dawn"])
torch.cuda.synchronize(); t2 = time.perf_counter()
del te
gc.collect(); t3 = time.perf_counter()
torch.cuda.empty_cache(); t4 = time.perf_counter()
print(json.dumps({"mode": mode, "load_s": round(t1 - t0, 3), "encode_s": round(t2 - t1, 3), "drop_s": round(t3 - t2, 3),
                  "empty_cache_s": round(t4 - t3, 3)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, type=Path)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/ck"))
    ap.add_argument("--trials", type=int, default=2)
    args = ap.parse_args()
    from bench_load import T5, drop_cache, last_line, run_python, write_checkpoints

    write_checkpoints(args.dir.resolve(), "Wan2.1-1.3B", torch.device("cuda"))
    t5 = args.dir.resolve() / T5
    for trial in range(args.trials):
        for mode in (("pread", "map") if trial % 2 == 0 else ("map", "pread")):
            for cache in ("cold", "warm"):
                if cache == "cold":
                    drop_cache([t5])
                print(cache, last_line(run_python(CHILD, [str(t5), str(args.tokenizer.resolve()), mode]), mode), flush=True)


if __name__ == "__main__":
    main()
