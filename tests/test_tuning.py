"""Autotune results kept on disk (turbovid/ops/tuning.py), so a new process does not time configs again.

Each check runs in a subprocess: importing triton here would decide the JIT-vs-interpreter choice for
the test modules that need the interpreter."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, *args: str, **env) -> str:
    full = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=full, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _supported() -> bool:
    return _run("import inspect, triton; print('cache_results' in inspect.signature(triton.autotune).parameters)"
                ).strip() == "True"


def test_shipped_autotuned_kernels_keep_their_results_on_disk():
    if not _supported():
        pytest.skip("this Triton's autotuner cannot cache its results")
    out = _run("""
        from turbovid.ops.fused import rope_kernel
        from turbovid.ops.quant import int8_triton
        print(rope_kernel._rmsnorm_rope_tuned.cache_results, int8_triton._scaled_mm_tuned.cache_results)
    """)
    assert out.split() == ["True", "True"]


def test_cached_except_in_the_interpreter():
    out = _run("""
        import os
        from turbovid.ops import tuning
        seen = {}
        def fake_autotune(configs, key, warmup=None, cache_results=False):  # a Triton that can cache
            seen.update(warmup=warmup, cache_results=cache_results)
            return lambda fn: fn
        tuning.triton.autotune = fake_autotune
        os.environ["TRITON_INTERPRET"] = "1"
        tuning.autotune([], ["N"], warmup=5)
        print(seen["warmup"], seen["cache_results"])
        del os.environ["TRITON_INTERPRET"]
        tuning.autotune([], ["N"])
        print(seen["cache_results"])
    """)
    assert out.split() == ["5", "False", "True"]


SECOND_PROCESS = """
    import sys, torch
    import triton.runtime.autotuner as at
    if sys.argv[1] == "again":
        def no_timing(*a, **kw):
            raise AssertionError("the autotuner timed configs again")
        at.Autotuner._bench = no_timing
    from turbovid.ops.fused import rope_kernel
    x = torch.randn(1, 4096, 1536, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(1536, device="cuda", dtype=torch.bfloat16)
    cos, sin = torch.rand(4096, 64, device="cuda"), torch.rand(4096, 64, device="cuda")
    rope_kernel.rmsnorm_rope_triton(x, w, cos, sin, 1e-6, torch.bfloat16)
    assert not rope_kernel._split_failed  # the tuned launch ran, not the fallback
    torch.cuda.synchronize()
    print("ok")
"""


@pytest.mark.gpu
def test_a_new_process_reads_the_tuned_config_instead_of_timing(tmp_path):
    if not _supported():
        pytest.skip("this Triton's autotuner cannot cache its results")
    assert "ok" in _run(SECOND_PROCESS, "first", TRITON_CACHE_DIR=str(tmp_path))
    assert any(f.endswith(".autotune.json") for _, _, files in os.walk(tmp_path) for f in files)
    assert "ok" in _run(SECOND_PROCESS, "again", TRITON_CACHE_DIR=str(tmp_path))
