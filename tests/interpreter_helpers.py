"""Run a test script in a fresh Python: with Triton's interpreter on (TRITON_INTERPRET must be set
before triton is imported, so kernels decorated in this process cannot be reused), or without it,
to see what a new process imports and keeps."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# For fresh-process GPU scripts (indented as they are, for run_fresh's dedent): launch_rope() runs the
# autotuned fused RMSNorm + RoPE kernel at a model-like shape and checks the tuned launch ran.
ROPE_LAUNCH = """
    import torch
    from turbovid.ops.fused import rope_kernel
    def launch_rope():
        x = torch.randn(1, 4096, 1536, device="cuda", dtype=torch.bfloat16)
        w = torch.ones(1536, device="cuda", dtype=torch.bfloat16)
        cos, sin = torch.rand(4096, 64, device="cuda"), torch.rand(4096, 64, device="cuda")
        rope_kernel.rmsnorm_rope_triton(x, w, cos, sin, 1e-6, torch.bfloat16)
        assert not rope_kernel._split_failed  # the tuned launch ran, not the fallback
"""


def expect_value_error(fn, text: str) -> None:
    """fn() must raise a ValueError saying `text` (for the interpreter scripts, which run without
    pytest: include it with inspect.getsource)."""
    try:
        fn()
    except ValueError as e:
        assert text in str(e), e
        return
    raise AssertionError(f"no ValueError saying {text!r}")


def assert_runs_interpreted(script: str, done: str = "kernel ok", timeout: int = 300) -> None:
    """Run `script` with TRITON_INTERPRET=1 and the repository importable; it must exit 0 and print `done`."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0 and done in res.stdout, res.stderr[-2000:]


def run_fresh(code: str, *args: str, timeout: int = 300, **env: str) -> str:
    """Run the (dedented) `code` with `args` in a fresh Python, Triton compiling rather than
    interpreting, from the repository root with `env` added; it must exit 0. Returns its stdout."""
    full = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=full, capture_output=True,
                         text=True, timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout
