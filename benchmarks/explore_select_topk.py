"""Exploration (dev tool, run on the device): the block map's select step (float32 block scores + exact
top-k per query block, ascending lists) as our fused `_select_kernel` against PyTorch's batched matmul +
torch.topk + sort on the same pooled Q / K, at the sagesla shapes of the 1.3B (480p, 720p) and 14B
(480p, 720p) models. Both get the pooled tensors the key pass and query pool made; the question is
only whether the select launch should hand its top-k to torch.topk at large L.

    python3 benchmarks/explore_select_topk.py [--out r.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from attention_helpers import random_qkv  # noqa: E402
from turbovid.ops.attention import blockmap  # noqa: E402
from turbovid.ops.attention.sla_reference import keep_count  # noqa: E402

SHAPES = {"1.3B 480p": (32760, 12), "1.3B 720p": (75600, 12), "14B 480p": (32760, 40), "14B 720p": (75600, 40)}
BLKQ, BLKK = 64, 128


def ms_of(fn) -> float:
    return statistics.median(do_bench(fn, warmup=10, rep=100) for _ in range(3))


def kernel_ms(fn, reps: int = 10) -> dict[str, float]:
    """GPU time per call of each kernel `fn` launches (torch profiler)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for e in prof.key_averages():
        if e.device_time_total > 0:
            out[e.key[:60]] = round(e.device_time_total / 1000.0 / reps, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "rows": {}}
    for name, (L, H) in SHAPES.items():
        q, k, v = random_qkv(1, L, H, 128, torch.bfloat16, device="cuda", seed=7)
        stats = blockmap.block_stats(q, k, v, 0.1, BLKQ, BLKK, linear=False)
        nq, nk = triton.cdiv(L, BLKQ), triton.cdiv(L, BLKK)
        kk = keep_count(0.1, nk)
        # the pooled tensors block_stats builds (float32), rebuilt here in PyTorch
        qf = torch.nn.functional.pad(q.float(), (0, 0, 0, 0, 0, nq * BLKQ - L)).view(1, nq, BLKQ, H, 128)
        pq = (qf.sum(2) / torch.tensor([BLKQ] * (nq - 1) + [L - (nq - 1) * BLKQ], device="cuda")[None, :, None, None])
        kf = k.float() - stats.k_mean.view(1, 1, H, 128)
        kf = torch.nn.functional.pad(kf, (0, 0, 0, 0, 0, nk * BLKK - L)).view(1, nk, BLKK, H, 128)
        pk = kf.sum(2) / torch.tensor([BLKK] * (nk - 1) + [L - (nk - 1) * BLKK], device="cuda")[None, :, None, None]
        pq, pk = pq[0].transpose(0, 1).contiguous(), pk[0].transpose(0, 1).contiguous()  # (H, n, 128)

        def torch_select():
            s = torch.bmm(pq, pk.transpose(1, 2))
            idx = torch.topk(s, kk, dim=-1, sorted=False).indices
            return torch.sort(idx, dim=-1).values.to(torch.int32)

        same = bool(torch.equal(torch_select().view(-1), stats.lut.view(-1)))
        row = {"L": L, "heads": H, "nq": nq, "nk": nk, "kk": kk, "same_lut_as_ours": same,
               "block_stats_ms": ms_of(lambda: blockmap.block_stats(q, k, v, 0.1, BLKQ, BLKK, linear=False)),
               "torch_bmm_topk_sort_ms": ms_of(torch_select),
               "torch_bmm_ms": ms_of(lambda: torch.bmm(pq, pk.transpose(1, 2))),
               "block_stats_kernels_ms": kernel_ms(lambda: blockmap.block_stats(q, k, v, 0.1, BLKQ, BLKK, linear=False)),
               "torch_select_kernels_ms": kernel_ms(torch_select)}
        results["rows"][name] = row
        print(name, json.dumps(row), flush=True)
        del q, k, v, stats
        torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
