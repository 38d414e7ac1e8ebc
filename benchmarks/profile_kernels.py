"""Run each hot kernel once inside a profiler window, for Nsight Compute (dev tool).

Warm-up (compilation, autotuning) happens before cudaProfilerStart, so with
`ncu --profile-from-start off` every kernel of one sla op, one sagesla op and one int8 linear
(1536 -> 8960) at 480p size (B=1, L=32760, 12 heads x 128) is profiled exactly once:

    ncu --profile-from-start off --clock-control none --section SpeedOfLight ... \\
        python3 benchmarks/profile_kernels.py
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from attention_helpers import proj_params, random_qkv  # noqa: E402

from turbovid.ops.attention import sagesla_kernel, sla_kernel  # noqa: E402
from turbovid.ops.quant import int8_triton as kq  # noqa: E402
from turbovid.ops.quant.int8 import quantize_blockwise  # noqa: E402


def main() -> None:
    L, H, D = 32760, 12, 128
    q, k, v = random_qkv(1, L, H, D, torch.bfloat16, device="cuda", seed=1)
    w, b = proj_params(D, "cuda")
    x = torch.randn(L, 1536, device="cuda", dtype=torch.bfloat16)
    wq, ws = quantize_blockwise(torch.randn(8960, 1536, device="cuda") * 0.02)
    ops = [
        lambda: sla_kernel.sla_forward(q, k, v, 0.1, w, b),
        lambda: sagesla_kernel.sagesla_forward(q, k, v, 0.1, w, b),
        lambda: kq.linear(x, wq, ws),
    ]
    for op in ops:  # compile + autotune outside the window
        op()
        op()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for op in ops:
        op()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print("profiled", len(ops), "ops")


if __name__ == "__main__":
    main()
