"""Does umT5's token-embedding table in CPU memory slow the text encoding? (dev tool, run on the device)

Writes bench_load.py's checkpoints if missing, then in fresh processes, alternated: warm the encoder's
GPU kernels on a toy encoder (as the CLI's prewarm thread does), load umT5-XXL to the GPU (its table
stays in CPU memory) and, for "gpu", move the table up too; then time the first encode of the process
and 5 more. Prints one JSON line per process.

    python benchmarks/explore_text_table.py --tokenizer TOKENIZER_DIR [--dir /tmp/ck] [--trials 3]
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
import json, sys, time, torch
from turbovid.loading import load_text_encoder
from turbovid.models.t5 import warm_up_kernels
path, tok, table = sys.argv[1:4]
dev = torch.device("cuda")
warm_up_kernels(dev, torch.bfloat16)
te = load_text_encoder(path, tokenizer=tok, device=dev)
if table == "gpu":
    te.model.token_embedding.to(dev)
prompt = "A red fox trotting through fresh snow at dawn, cinematic lighting, wide aerial view"
times = []
for i in range(6):
    torch.cuda.synchronize(); t0 = time.perf_counter()
    te.encode([prompt + " " + str(i)])
    torch.cuda.synchronize(); times.append(round(time.perf_counter() - t0, 4))
print(json.dumps({"table": table, "first_s": times[0], "later_s": times[1:]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, type=Path)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/ck"))
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    from bench_load import T5, last_line, run_python, write_checkpoints

    write_checkpoints(args.dir.resolve(), "Wan2.1-1.3B", torch.device("cuda"))
    for trial in range(args.trials):
        for table in (("cpu", "gpu") if trial % 2 == 0 else ("gpu", "cpu")):
            p = run_python(CHILD, [str(args.dir.resolve() / T5), str(args.tokenizer.resolve()), table])
            print(last_line(p, table), flush=True)


if __name__ == "__main__":
    main()
