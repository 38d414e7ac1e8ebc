"""The VAE's middle attention (one head, d = 384, attention within each latent frame) three ways,
at the 480p / 720p decodes' shapes (21 latent frames of 60 x 104 / 90 x 160 tokens), one process.

- sdpa: F.scaled_dot_product_attention over groups of frames, as models/vae_fast.py runs it (no
  flash kernel takes d = 384: PyTorch picks its memory-efficient sm80 kernel);
- explicit: the scores in float32 from a bf16 GEMM (torch.bmm out_dtype), softmax in float32,
  probabilities rounded to bf16, a second GEMM; over the same groups of frames;
- explicit_bf16_scores: the same with the scores rounded to bf16 by the GEMM (for scale: the
  error a bf16 score costs);
- triton: ops/wide_attention.py, every frame in one launch, over a grid of launch configs.
Error: relative L2 against float32 attention of the same bf16 inputs. Times: do_bench medians, ms.

    PYTHONPATH=$PWD python3 benchmarks/explore_vae_attention.py --out $OUT/explore_vae_attention.json
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from turbovid.bench.timing import sweep_shapes
from turbovid.ops import wide_attention

SHAPES = {"480p": (21, 60, 104), "720p": (21, 90, 160)}
D = 384
# (block_m, block_n, num_warps, num_stages) of the kernel
CONFIGS = ((64, 32, 8, 2), (64, 32, 4, 2), (64, 32, 8, 3), (64, 16, 4, 3), (64, 16, 8, 3), (128, 32, 8, 2),
           (64, 64, 8, 1), (128, 16, 8, 2))


def bench(fn) -> float:
    return float(do_bench(fn, warmup=3, rep=30, return_mode="median"))


def group_of(tokens: int) -> int:
    return max(1, (1 << 28) // tokens ** 2)  # vae_fast.FastAttention's bound on a materialised score matrix


def sdpa(q, k, v, out):
    g = group_of(q.shape[-2])
    for s in range(0, q.shape[0], g):
        out[s:s + g] = F.scaled_dot_product_attention(q[s:s + g], k[s:s + g], v[s:s + g])
    return out


def explicit(q, k, v, out, fp32_scores: bool = True):
    g = group_of(q.shape[-2])
    scale = q.shape[-1] ** -0.5
    for s in range(0, q.shape[0], g):
        qs, ks, vs = q[s:s + g, 0], k[s:s + g, 0], v[s:s + g, 0]
        if fp32_scores:
            scores = torch.bmm(qs, ks.transpose(1, 2), out_dtype=torch.float32)
        else:
            scores = torch.bmm(qs, ks.transpose(1, 2)).float()
        p = torch.softmax(scores.mul_(scale), dim=-1).to(q.dtype)
        del scores
        out[s:s + g, 0] = torch.bmm(p, vs)
    return out


def one(frames: int, h: int, w: int) -> dict:
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    n = h * w
    q, k, v = (torch.randn(frames, 1, n, D, device=dev, generator=gen).bfloat16() for _ in range(3))
    out = torch.empty_like(q)
    res = {"frames": frames, "tokens": n, "group": group_of(n)}
    ref = torch.empty(frames, 1, n, D, device=dev)
    for f in range(frames):  # float32 attention of the same bf16 inputs, a frame at a time
        ref[f] = F.scaled_dot_product_attention(q[f:f + 1].float(), k[f:f + 1].float(), v[f:f + 1].float())[0]
    cases = [("sdpa", lambda: sdpa(q, k, v, out)), ("explicit", lambda: explicit(q, k, v, out)),
             ("explicit_bf16_scores", lambda: explicit(q, k, v, out, False)),
             ("triton_default", lambda: wide_attention.attention(q[:, 0], k[:, 0], v[:, 0], out=out[:, 0]))]
    for bm, bn, warps, stages in CONFIGS:
        cfg = wide_attention.Config(bm, bn, warps, stages)
        cases.append((f"triton_{bm}x{bn}_w{warps}_s{stages}",
                      lambda cfg=cfg: wide_attention.attention(q[:, 0], k[:, 0], v[:, 0], out=out[:, 0], config=cfg)))
    for name, fn in cases:
        try:
            out.fill_(float("nan"))  # a launch that writes nothing must not inherit the last one's result
            fn()
            torch.cuda.synchronize()
            err = ((out.float() - ref).norm() / ref.norm()).item()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ms = bench(fn)
            res[name] = {"ms": ms, "rel_err": err, "extra_peak_gib": (torch.cuda.max_memory_allocated() - base) / 2**30,
                         "tflops": 4 * frames * n * n * D / ms / 1e9}
        except Exception as e:  # noqa: BLE001 - e.g. bmm without out_dtype in this torch
            res[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        print(f"  {name:22s} {res[name]}", flush=True)
    return res


def main() -> None:
    sweep_shapes(__doc__.splitlines()[0], "explore_vae_attention.json", SHAPES, one)


if __name__ == "__main__":
    main()
