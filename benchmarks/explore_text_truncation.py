"""Exploration (dev tool, run on the device): what encoding only a prompt's tokens saves over encoding
all 512 positions, as the reference does (umT5-XXL, random weights, bf16, one prompt). Times
TextEncoder.encode_ids (which stops at the batch's last token) against the same model over all
positions with the padded rows zeroed afterwards (what encode_ids did before), on the GPU and on the
CPU (--text-encoder-cpu), and how far each lies from the float32 model on the prompt's rows.

    python3 benchmarks/explore_text_truncation.py [--out r.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovid.configs import T5_PRESETS  # noqa: E402
from turbovid.models.t5 import build_text_encoder  # noqa: E402


def _median_s(fn, device: torch.device, reps: int) -> float:
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    gpu = torch.device("cuda")
    te = build_text_encoder(T5_PRESETS["umt5-xxl"], None, device=gpu, dtype=torch.bfloat16, seed=0)
    out = {"device": torch.cuda.get_device_name(), "cpu_threads": torch.get_num_threads(), "cases": []}
    for prompt in ("A red fox in the snow", "A red fox trotting through fresh snow at dawn, cinematic light"):
        ids, mask = te.tokenizer([prompt])  # byte tokenizer: one token a byte, EOS included

        def full():
            o = te.model(ids.to(te.device), mask.to(te.device))
            return torch.where(mask.to(te.device).bool()[..., None], o, o.new_zeros(()))

        case = {"tokens": int(mask.sum())}
        # how far each bf16 result lies from float32 over all positions (the weights are bf16 values)
        keep = mask.bool()
        ours, old = te.encode_ids(ids, mask).cpu().float()[keep], full().cpu().float()[keep]
        te.to(dtype=torch.float32)
        ref = full().cpu()[keep]
        te.to(dtype=torch.bfloat16)
        case["prompt_tokens_vs_fp32_rel_l2"] = ((ours - ref).norm() / ref.norm()).item()
        case["all_512_vs_fp32_rel_l2"] = ((old - ref).norm() / ref.norm()).item()
        for where, reps in (("gpu", 20), ("cpu", 1)):
            dev = torch.device(where if where == "cpu" else "cuda")
            te.to(dev)
            a, b = te.encode_ids(ids, mask).cpu().float(), full().cpu().float()  # also the warm-up
            keep = mask.bool()
            case[f"{where}_rel_l2"] = ((a[keep] - b[keep]).norm() / b[keep].norm()).item()
            case[f"{where}_padded_rows_zero"] = bool(torch.all(a[~keep] == 0))
            case[f"{where}_prompt_tokens_s"] = round(_median_s(lambda: te.encode_ids(ids, mask), dev, reps), 4)
            case[f"{where}_all_512_s"] = round(_median_s(full, dev, reps), 4)
            te.to(gpu)
        out["cases"].append(case)
        print(case, flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
