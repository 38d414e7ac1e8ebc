"""Op-level profile of one fast 480p VAE decode (dev tool): which PyTorch ops, at which shapes,
spend the GPU time outside the convolutions. Random weights with the real config, bf16.

    PYTHONPATH=$PWD python3 benchmarks/profile_vae_ops.py > $OUT/vae_ops.txt
"""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from turbovid.configs import VAE_PRESETS
from turbovid.models.vae import build_vae


def main() -> None:
    vae = build_vae(VAE_PRESETS["wan2.1"], seed=0).eval().requires_grad_(False).to("cuda", torch.bfloat16)
    z = torch.randn(1, 16, 21, 60, 104, device="cuda")
    with torch.no_grad():
        vae.decode(z)  # warm-up: cuDNN plans, Triton compilation
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as p:
            vae.decode(z)
            torch.cuda.synchronize()
    avg = p.key_averages(group_by_input_shape=True)
    print(avg.table(sort_by="cuda_time_total", row_limit=60, max_name_column_width=40, max_shapes_column_width=90))


if __name__ == "__main__":
    main()
