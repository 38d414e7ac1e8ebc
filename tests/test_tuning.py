"""Autotune picks kept on disk (turbovid/ops/tuning.py), so a new process does not time configs again.

Each check runs in a subprocess: importing triton here would decide the JIT-vs-interpreter choice for
the test modules that need the interpreter."""
import pytest

from interpreter_helpers import ROPE_LAUNCH, run_fresh as _run


FAKE = """
    import os, sys, triton
    from pathlib import Path
    from turbovid.ops import tuning

    class FakeTuner:  # what triton.autotune returns, as far as tuning.py relies on it
        timed = 0
        def __init__(self, fn, configs):
            self.fn, self.configs, self.cache = fn, configs, {}
        def run(self, n, dtype):
            key = (n, dtype)
            if key not in self.cache:
                FakeTuner.timed += 1
                self.cache[key] = self.configs[n % len(self.configs)]
            return self.cache[key]

    class Kernel:  # a JITFunction's name and source
        __name__ = "kernel"
        def __init__(self, src):
            self.src = src

    triton.autotune = lambda configs, key, **kw: (lambda fn: FakeTuner(fn, configs))
    configs = [triton.Config({"B": b}, num_warps=4, pre_hook=print) for b in (16, 32, 64)]

    def tuner(src="def kernel(): pass", cfgs=configs):
        return tuning.autotune(cfgs, ["n"])(Kernel(src))
"""


def test_picks_survive_the_process_and_bad_files_mean_tuning_again(tmp_path):
    out = _run(FAKE + """
    first = tuner()
    assert first.run(4, "torch.int8").kwargs == {"B": 32} and FakeTuner.timed == 1
    files = list(tuning.cache_folder().glob("kernel-*.json"))
    assert len(files) == 1, files
    again = tuner()  # a new process's tuner: reads the pick, times nothing
    pick = again.run(4, "torch.int8")
    assert FakeTuner.timed == 1 and pick is again.configs[1] and pick.pre_hook is print
    assert again.run(5, "torch.int8").kwargs == {"B": 64} and FakeTuner.timed == 2  # a new key is timed
    assert len(list(tuning.cache_folder().glob("kernel-*.json"))) == 1  # and added to the same file
    tuner().run(5, "torch.int8"); assert FakeTuner.timed == 2
    # another source or config list: another file
    tuner(src="def kernel(): return 1").run(4, "torch.int8"); assert FakeTuner.timed == 3
    tuner(cfgs=configs[:2]).run(4, "torch.int8"); assert FakeTuner.timed == 4
    # a corrupt or foreign file: timed again, then rewritten
    files[0].write_text("[[1, 2")
    tuner().run(4, "torch.int8"); assert FakeTuner.timed == 5
    files[0].write_text('[[[4, "torch.int8"], 7]]')
    tuner().run(4, "torch.int8"); assert FakeTuner.timed == 6
    tuner().run(4, "torch.int8"); assert FakeTuner.timed == 6
    assert not [p for p in tuning.cache_folder().iterdir() if p.suffix == ".part"]
    os.environ["TRITON_INTERPRET"] = "1"  # the interpreter times nothing: left as it is
    plain = tuner()
    assert plain.run.__func__ is FakeTuner.run
    print("ok")
    """, TRITON_CACHE_DIR=str(tmp_path))
    assert "ok" in out


def test_a_read_only_cache_folder_only_costs_the_timing(tmp_path):
    (tmp_path / "turbovid-autotune").write_text("a file where the folder should be")
    out = _run(FAKE + """
    assert tuner().run(4, "torch.int8").kwargs == {"B": 32}
    assert tuner().run(4, "torch.int8").kwargs == {"B": 32} and FakeTuner.timed == 2
    print("ok")
    """, TRITON_CACHE_DIR=str(tmp_path))
    assert "ok" in out


def test_shipped_autotuned_kernels_keep_their_picks():
    out = _run("""
        from turbovid.ops import tuning
        from turbovid.ops.fused import rope_kernel
        from turbovid.ops.quant import int8_triton
        print(all(k.run.__func__ is tuning._persistent_run for k in (rope_kernel._rmsnorm_rope_tuned,
                                                                     int8_triton._scaled_mm_tuned)))
    """)
    assert out.split() == ["True"]


SECOND_PROCESS = ROPE_LAUNCH + """
    import sys
    import triton.runtime.autotuner as at
    if sys.argv[1] == "again":
        def no_timing(*a, **kw):
            raise AssertionError("the autotuner timed configs again")
        at.Autotuner._bench = no_timing
    from turbovid.ops.quant import int8_triton
    launch_rope()
    # the int8 GEMM's configs carry a pre_hook (tensor descriptors' block shapes)
    a = torch.randint(-127, 128, (1024, 512), device="cuda", dtype=torch.int8)
    b = torch.randint(-127, 128, (384, 512), device="cuda", dtype=torch.int8)
    a_s, b_s = torch.rand(8, 4, device="cuda") / 64, torch.rand(3, 4, device="cuda") / 64
    c = int8_triton.scaled_mm(a, a_s, b, b_s, use_tma=True)  # the Triton kernel (Hopper's default is the Gluon one)
    ref = (a.float() * a_s.repeat_interleave(128, 0).repeat_interleave(128, 1)) @ \\
          (b.float() * b_s.repeat_interleave(128, 0).repeat_interleave(128, 1)).T
    assert ((c.float() - ref).norm() / ref.norm()).item() < 1e-2
    torch.cuda.synchronize()
    print("ok")
"""


@pytest.mark.gpu
def test_a_new_process_reads_the_tuned_config_instead_of_timing(tmp_path):
    assert "ok" in _run(SECOND_PROCESS, "first", TRITON_CACHE_DIR=str(tmp_path))
    assert len(list((tmp_path / "turbovid-autotune").glob("*.json"))) == 2
    assert "ok" in _run(SECOND_PROCESS, "again", TRITON_CACHE_DIR=str(tmp_path))
