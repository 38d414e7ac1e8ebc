"""The VAE's convs to 384 channels: ops/conv_gluon_coop.py's Gluon kernel (consumers sharing each
tile) against the Triton kernel (ops/causal_conv.py) it replaces, at the decode's shapes, in one
process: explore_conv192_ws.py's checks and timings (errors against the float32 conv, nothing
outside the output written, the history, an odd shape with the history below, above and missing,
bitwise repeats, do_bench medians with the Triton kernel timed before and after).
JSON to --out; exit status 1 if any check fails.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/explore_conv384.py --out $OUT/explore_conv384.json
"""
from __future__ import annotations

from explore_conv192_ws import Spec, main

from turbovid.ops import conv_gluon_coop

# 480p: the 4-frame chunks at 120 x 208, the latents' 21 frames at 60 x 104; 720p: 4 frames at 180 x 320
SPECS = (Spec(conv_gluon_coop, 384, 384, ((4, 120, 208), (21, 60, 104), (4, 180, 320))),
         Spec(conv_gluon_coop, 192, 384, ((4, 120, 208),), odd=(3, 22, 40)))

if __name__ == "__main__":
    main(SPECS, __doc__)
