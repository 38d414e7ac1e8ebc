"""Does the card slow its clock during a sustained DiT forward? (dev tool, run on the device)

The 14B forward's GEMMs ran ~15% below the same GEMMs timed alone (docs/benchmarks.md). This samples
nvidia-smi (SM clock, power, throttle reasons) every 50 ms while the card runs, in turn: nothing, one of
the model's GEMMs (its FFN up-projection, quantized as the variant says) back to back, and the graphed
fast forward back to back. Prints one JSON object per phase and writes them all to --out.

    python3 benchmarks/explore_clocks.py --model Wan2.1-14B --variant sagesla+fp8 [--seconds 6] [--out F]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_forward import build_forward  # noqa: E402
from turbovid.bench.timing import cuda_ms  # noqa: E402

QUERY = "clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active"


class Sampler:
    """nvidia-smi in the background; samples tagged with the phase running when they arrived."""

    def __init__(self, ms: int = 50):
        self.proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                                      f"-lms={ms}"], stdout=subprocess.PIPE, text=True)
        self.samples: list[tuple[float, str]] = []
        import threading

        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.samples.append((time.monotonic(), line.strip()))

    def window(self, t0: float, t1: float) -> dict:
        rows = []
        for t, line in self.samples:
            if t0 <= t <= t1:
                parts = [p.strip() for p in line.split(",")]
                try:
                    rows.append((float(parts[0]), float(parts[1]), float(parts[2]), float(parts[3]), parts[4]))
                except (ValueError, IndexError):
                    continue
        if not rows:
            return {"samples": 0}
        sm = [r[0] for r in rows]
        power = [r[2] for r in rows]
        reasons: dict[str, int] = {}
        for r in rows:
            reasons[r[4]] = reasons.get(r[4], 0) + 1
        return {"samples": len(rows), "sm_mhz_median": statistics.median(sm), "sm_mhz_min": min(sm),
                "sm_mhz_max": max(sm), "mem_mhz_median": statistics.median(r[1] for r in rows),
                "power_w_median": statistics.median(power), "power_w_max": max(power),
                "temp_c_max": max(r[3] for r in rows), "throttle_reasons": reasons}

    def stop(self) -> None:
        self.proc.terminate()


def loop(fn, seconds: float) -> tuple[float, float, list[float]]:
    """Run fn back to back for `seconds`; (start, end, per-call ms from CUDA events)."""
    times = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        times.append(cuda_ms(fn))
    return t0, time.monotonic(), times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Wan2.1-14B")
    ap.add_argument("--variant", default="sagesla+fp8")
    ap.add_argument("--resolution", default="480p")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from turbovid.fast import FastOptions, make_fast

    dev = torch.device("cuda")
    dit, lat, t, ctx = build_forward(args.model, args.variant, args.resolution, 81)
    up = dit.blocks[0].ffn[0]
    x = torch.randn(1, 32760, dit.cfg.dim, device=dev).bfloat16()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()},
              "gemm": f"{type(up).__name__} {dit.cfg.dim} -> {dit.cfg.ffn_dim}, M = 32760", "phases": {}}
    sampler = Sampler()
    try:
        with torch.inference_mode():
            runner = make_fast(dit, FastOptions())
            for _ in range(3):  # eager call, graph capture, one replay
                runner(lat, t, ctx)
            torch.cuda.synchronize()
            up(x)
            time.sleep(2.0)  # let the clock settle back
            t0 = time.monotonic()
            time.sleep(1.5)
            report["phases"]["idle"] = sampler.window(t0, time.monotonic())
            for name, fn in (("gemm", lambda: up(x)), ("forward", lambda: runner(lat, t, ctx)),
                             ("gemm_after", lambda: up(x))):
                s, e, ms = loop(fn, args.seconds)
                phase = sampler.window(s + 0.5, e)  # the first half second: ramping
                phase.update({"calls": len(ms), "ms_median": round(statistics.median(ms), 3),
                              "ms_first": round(ms[0], 3), "ms_last": round(ms[-1], 3)})
                report["phases"][name] = phase
                print(name, json.dumps(phase), flush=True)
                time.sleep(1.0)
    finally:
        sampler.stop()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
