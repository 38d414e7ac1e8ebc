"""End-to-end benchmark run as recorded in docs/benchmarks.md: `turbovid bench` with the docs outputs.

    python benchmarks/bench_e2e.py [--commit HASH] [--budget-s 300] [any `turbovid bench` flag]

Writes benchmarks/results/<date>-e2e-<card>.json (or $OUT when set, for runs on a lent machine)
and regenerates the summary / "End to end" blocks of docs/benchmarks.md and the README's
<!-- bench:start/end --> block.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from turbovid.bench import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", os.environ.get("OUT") or str(ROOT / "benchmarks" / "results")]
    if "--docs" not in args:
        args += ["--docs", str(ROOT / "docs" / "benchmarks.md"), "--readme", str(ROOT / "README.md")]
    sys.exit(main(args))
