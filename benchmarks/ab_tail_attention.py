"""Cross-attention over a zero-padded prompt: the tail kernel (its rows and one padding row) against
dense SDPA over all 512 rows, one process (run on the device).

1. The op alone, B = 1, head_dim 128, bf16, Lk = 512, prompts of n rows (n = 512: no padding): SDPA
   (what ran before), and kernel configs; max error of each against float32 SDPA.
2. The graphed forward (--variant, sla+fp8 by default) with a prompt of --prompt-rows rows (the DiT pads it to 512): the kernel
   (default) against TURBOVID_TAIL_ATTENTION=0 (dense over all rows), each a fast runner whose graph
   was captured with it, timed in alternating rounds; the velocities' relative difference.

    python3 benchmarks/ab_tail_attention.py --models Wan2.1-1.3B [--configs 64x64x4,128x64x8] [--out F]
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ab_fp8_scales import ab_setup, forward_inputs, record, rel  # noqa: E402
from turbovid.bench.cases import variant_dit  # noqa: E402
from turbovid.bench.timing import cuda_ms  # noqa: E402
from turbovid.ops.attention import dense_attention, tail, tail_kernel  # noqa: E402

SHAPES = {"1.3B 480p": (32760, 12), "1.3B 720p": (75600, 12), "14B 480p": (32760, 40)}
PROMPT_ROWS = (20, 77, 200, 512)


def op_timings(configs: list[tail_kernel.Config]) -> list[dict]:
    rows = []
    bench = lambda fn: do_bench(fn, warmup=20, rep=100, return_mode="median")  # noqa: E731
    for shape, (lq, h) in SHAPES.items():
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(1, lq, h, 128, generator=g, device="cuda", dtype=torch.bfloat16)
        kv = torch.randn(2, 1, 512, h, 128, generator=g, device="cuda", dtype=torch.bfloat16)
        for n in PROMPT_ROWS:
            k, v = kv[0].clone(), kv[1].clone()
            k[:, n:], v[:, n:] = k[:, min(n, 511)].clone(), v[:, min(n, 511)].clone()  # rows n.. repeat row n
            nt = torch.tensor([n], device="cuda", dtype=torch.int32)
            want = dense_attention(q.float(), k.float(), v.float())
            sdpa = dense_attention(q, k, v)
            row = {"shape": shape, "prompt_rows": n, "sdpa_ms": bench(lambda: dense_attention(q, k, v)),
                   "sdpa_max_err": (sdpa.float() - want).abs().max().item()}
            for cfg in configs:
                name = f"{cfg.block_m}x{cfg.block_n}x{cfg.num_warps}" + ("" if cfg.num_stages == 2 else f"x{cfg.num_stages}")
                out = tail_kernel.tail_attention(q, k, v, nt, cfg)
                row[f"kernel {name} max_err"] = (out.float() - want).abs().max().item()
                row[f"kernel {name} ms"] = bench(lambda cfg=cfg: tail_kernel.tail_attention(q, k, v, nt, cfg))
            rows.append(row)
            print(row, flush=True)
            del want, sdpa
        del q, kv
        torch.cuda.empty_cache()
    return rows


def add_args(ap) -> None:
    ap.add_argument("--configs", default="64x64x4,128x64x8,64x128x4,64x32x4",
                    help="kernel configs: query rows x key rows a step x warps [x stages], comma-separated")
    ap.add_argument("--prompt-rows", type=int, default=77, help="the forward's prompt length (of 512 rows)")
    ap.add_argument("--variant", default="sla+fp8", help="the forward's variant (turbovid bench's names)")
    ap.add_argument("--skip-op", action="store_true", help="time the forwards only")
    ap.add_argument("--skip-forward", action="store_true", help="time the op only")
    ap.add_argument("--fp32-reference", action="store_true",
                    help="with --variant dense: each velocity's relative error against the model in float32")


def main() -> None:
    args, report = ab_setup(__doc__, add_args)
    configs = [tail_kernel.Config(*(int(x) for x in c.split("x"))) for c in args.configs.split(",")]
    prompt_rows = args.prompt_rows
    if not args.skip_op:
        report["op"] = op_timings(configs)
        if args.out:
            args.out.write_text(json.dumps(report, indent=1))
    for model in [] if args.skip_forward else args.models.split(","):
        lat, t, ctx = forward_inputs(args.resolution, prompt_rows)  # unpadded, as the pipeline passes it
        with torch.inference_mode():
            from turbovid.fast import make_fast

            dit = variant_dit(model, args.variant, torch.device("cuda"), torch.bfloat16, 0.1)
            runners, outs = {}, {}
            # chosen at capture; the kernel runner takes it for every prompt length (MAX_ROWS = 512, as
            # before session 21), so prompts past tail.MAX_ROWS time what the DiT's rule saves
            modes = {"tail kernel": ("1", 512), "dense over 512 rows": ("0", tail.MAX_ROWS)}
            for name, (switch, max_rows) in modes.items():
                os.environ["TURBOVID_TAIL_ATTENTION"], tail.MAX_ROWS = switch, max_rows
                runners[name] = make_fast(dit)
                runners[name](lat, t, ctx)  # eager call; the next one captures
                outs[name] = runners[name](lat, t, ctx).float()
            row = {"variant": args.variant, "resolution": args.resolution, "prompt_rows": prompt_rows,
                   "ms": {name: [] for name in runners}}
            for _ in range(args.rounds):
                for name, r in runners.items():
                    tail.MAX_ROWS = modes[name][1]  # the graph key (context padded to 256 or 512 rows)
                    row["ms"][name] += [cuda_ms(lambda: r(lat, t, ctx)) for _ in range(args.forwards)]
            os.environ.pop("TURBOVID_TAIL_ATTENTION")
            tail.MAX_ROWS = modes["dense over 512 rows"][1]
            row["median_ms"] = {name: round(statistics.median(v), 2) for name, v in row["ms"].items()}
            row["rel_diff_vs_dense"] = rel(outs["tail kernel"], outs["dense over 512 rows"])
            del runners
            torch.cuda.empty_cache()
            if args.fp32_reference and args.variant == "dense":
                from turbovid.fast import make_plain

                ref = copy.deepcopy(make_plain(dit)).float()  # the plain path in float32, dense over all rows
                os.environ["TURBOVID_TAIL_ATTENTION"] = "0"
                want = ref(lat.float(), t, ctx.float()).float()
                os.environ.pop("TURBOVID_TAIL_ATTENTION")
                row["rel_err_vs_float32"] = {name: rel(o, want) for name, o in outs.items()}
                del ref, want
            del outs, dit
            torch.cuda.empty_cache()
        record(report, f"{model} {args.resolution} {args.variant}", row, args.out)


if __name__ == "__main__":
    main()
