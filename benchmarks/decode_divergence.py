"""Which launch makes the fast VAE decode not repeat bitwise (dev tool, run on the device).

The decode is repeated on the same latents. Every entry point profile_vae_launches.py labels is
wrapped: after each call, the tensors it wrote (its result, the `out` / `x_out` / `history_out` /
`partial` arguments, an in-place function's first argument) are fingerprinted on the GPU (the sum of
their bit patterns as integers: one changed element changes it). A repeat's fingerprints are compared
with the first decode's, call by call: the first call that differs wrote a wrong result from equal
inputs (the calls before it agree), so its label names the launch that raced. Prints, per size, the
repeats that differed, the first differing call of each and how many calls differed per label.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/decode_divergence.py --out $OUT/divergence.json
"""
from __future__ import annotations

import argparse
import functools
import inspect
import json
from collections import Counter

import torch

from profile_vae_launches import ENTRY_POINTS, SIZES, _label
from turbovid.models.vae import build_vae

WRITTEN = ("out", "x_out", "history_out", "partial")
_INTS = {2: torch.int16, 4: torch.int32}


class Recorder:
    """The labels and fingerprints of the wrapped calls, in the order they returned."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.prints: list[torch.Tensor] = []

    def record(self, label: str, tensors: list) -> None:
        sums = [t.view(_INTS[t.element_size()]).sum(dtype=torch.int64) for t in tensors
                if isinstance(t, torch.Tensor) and t.element_size() in _INTS and t.numel()]
        if sums:
            self.labels.append(label)
            self.prints.append(torch.stack(sums).sum())

    def take(self) -> tuple[list[str], torch.Tensor]:
        labels, prints = self.labels, torch.stack(self.prints).cpu()
        self.labels, self.prints = [], []
        return labels, prints


def wrap(module, attr: str, rec: Recorder) -> None:
    fn = getattr(module, attr)
    name = f"{module.__name__.rsplit('.', 1)[-1]}.{attr}"
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        a = sig.bind(*args, **kwargs).arguments
        label = _label(name, a)
        result = fn(*args, **kwargs)
        written = [a.get(k) for k in WRITTEN]
        written += list(result) if isinstance(result, tuple) else [result]
        if attr.endswith("_"):
            written.append(next(iter(a.values())))
        rec.record(label, written)
        return result

    setattr(module, attr, wrapped)


def repeat_size(vae, rec: Recorder, size: str, repeats: int) -> dict:
    t, h, w = SIZES[size]
    z = torch.randn(1, 16, t, h, w, generator=torch.Generator().manual_seed(7)).cuda()
    with torch.no_grad():
        vae.decode(z)  # compilation, descriptors
        rec.take()
        first = vae.decode(z)
        labels, ref = rec.take()
        rows = []
        for i in range(repeats):
            video = vae.decode(z)
            got_labels, got = rec.take()
            if got_labels != labels:
                raise RuntimeError(f"repeat {i}: a different sequence of calls ({len(got_labels)} vs {len(labels)})")
            bad = (got != ref).nonzero().flatten().tolist()
            row = dict(video_worst=(video.float() - first.float()).abs().max().item(), calls_differing=len(bad))
            if bad:
                row.update(first_call=bad[0], first_label=labels[bad[0]],
                           by_label=dict(Counter(labels[j] for j in bad).most_common(8)))
            rows.append(row)
            print(size, i, row, flush=True)
    return dict(calls=len(labels), repeats=rows,
                first_labels=dict(Counter(r["first_label"] for r in rows if "first_label" in r)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="divergence.json")
    ap.add_argument("--sizes", default="480p,720p")
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args()
    rec = Recorder()
    for module, attr in ENTRY_POINTS:
        wrap(module, attr, rec)
    vae = build_vae("wan2.1", seed=0).eval().requires_grad_(False).to("cuda", torch.bfloat16)
    res = {"card": torch.cuda.get_device_name(), "sizes": {}}
    for size in args.sizes.split(","):
        r = res["sizes"][size] = repeat_size(vae, rec, size, args.repeats)
        print(size, "first differing launches:", r["first_labels"] or "none", flush=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
