"""Run a test script in a fresh Python with Triton's interpreter on (TRITON_INTERPRET must be set
before triton is imported, so kernels decorated in this process cannot be reused)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def assert_runs_interpreted(script: str, done: str = "kernel ok", timeout: int = 300) -> None:
    """Run `script` with TRITON_INTERPRET=1 and the repository importable; it must exit 0 and print `done`."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0 and done in res.stdout, res.stderr[-2000:]
