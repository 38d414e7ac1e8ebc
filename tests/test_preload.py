"""The list of Triton kernels a video loaded, kept so the next process loads them ahead
(turbovid/ops/preload.py). The GPU test runs real kernels in two processes."""
import json
import sys
import types

import pytest

from interpreter_helpers import ROPE_LAUNCH, run_fresh

pytest.importorskip("triton")

from turbovid.ops import preload  # noqa: E402


class Info:  # what Triton passes as `fn` to its compile hooks
    def __init__(self, module, name):
        self.module, self.name, self.jit_function = module, name, None


def _call(hook, module, name, data):
    hook(key="k", repr="r", fn=Info(module, name), compile={"key": "k", "specialization_data": data},
         is_manual_warmup=False, already_compiled=False)


def test_recording_keeps_new_turbovid_kernels_and_chains_the_previous_hook(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    runtime = preload._runtime_knobs()
    before = []
    monkeypatch.setattr(runtime, "jit_post_compile_hook", lambda **kw: before.append(kw["fn"].name))
    previous = runtime.jit_post_compile_hook
    with preload.recording() as seen:
        hook = runtime.jit_post_compile_hook
        assert hook is not previous
        _call(hook, "turbovid.ops.fused.layernorm_kernel", "_norm_kernel", '{"a": 1}')
        _call(hook, "some_other_library", "kernel", '{"b": 2}')  # not ours: not kept
    assert runtime.jit_post_compile_hook is previous  # restored
    assert before == ["_norm_kernel", "kernel"]  # the previous hook saw both
    assert [e["name"] for e in seen] == ["_norm_kernel"]
    path = preload.list_file()
    assert json.loads(path.read_text()) == [{"module": "turbovid.ops.fused.layernorm_kernel",
                                             "name": "_norm_kernel", "data": '{"a": 1}'}]
    with preload.recording():  # the same kernel again, and a new one: added once each
        _call(runtime.jit_post_compile_hook, "turbovid.ops.fused.layernorm_kernel", "_norm_kernel", '{"a": 1}')
        _call(runtime.jit_post_compile_hook, "turbovid.ops.rms_silu", "_k", '{"c": 3}')
        _call(runtime.jit_post_compile_hook, "turbovid.ops.rms_silu", "_k", '{"c": 3}')
    assert [e["data"] for e in json.loads(path.read_text())] == ['{"a": 1}', '{"c": 3}']
    assert not [p for p in path.parent.iterdir() if p.suffix == ".part"]


def test_a_corrupt_list_is_replaced_and_the_list_is_capped(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    path = preload.list_file()
    path.parent.mkdir(parents=True)
    path.write_text("[{")
    assert preload._read(path) == [] and preload.load_all() == 0
    monkeypatch.setattr(preload, "MAX_ENTRIES", 3)
    with preload.recording():
        for i in range(5):
            _call(preload._runtime_knobs().jit_post_compile_hook, "turbovid.x", "k", str(i))
    assert [e["data"] for e in json.loads(path.read_text())] == ["2", "3", "4"]  # the latest kept


def test_load_all_preloads_through_wrappers_and_skips_bad_entries(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    calls = []

    class Compiled:
        def _init_handles(self):
            calls.append("init")

    class Jit:  # a JITFunction: preload(specialization data) -> the compiled kernel
        def preload(self, data):
            calls.append(data)
            return Compiled()

    class Autotuner:  # wrappers keep the JITFunction in .fn
        def __init__(self, fn):
            self.fn = fn

    fake = types.ModuleType("turbovid_fake_kernels")
    fake.tuned = Autotuner(Autotuner(Jit()))
    monkeypatch.setitem(sys.modules, "turbovid_fake_kernels", fake)
    preload._write(preload.list_file(), [
        {"module": "turbovid_fake_kernels", "name": "tuned", "data": "spec"},
        {"module": "turbovid_fake_kernels", "name": "renamed", "data": "gone"},
        {"module": "turbovid.no_such_module", "name": "k", "data": "x"},
    ])
    assert preload.load_all() == 1
    assert calls == ["spec", "init"]


def test_turbovid_preload_0_turns_recording_and_loading_off(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    preload._write(preload.list_file(), [{"module": "turbovid.no_such_module", "name": "k", "data": "x"}])
    loaded = []
    monkeypatch.setattr(preload, "_jit_function", lambda m, n: loaded.append(n))
    monkeypatch.setenv("TURBOVID_PRELOAD", "0")
    runtime = __import__("triton").knobs.runtime
    previous = runtime.jit_post_compile_hook
    with preload.recording() as seen:
        assert runtime.jit_post_compile_hook is previous  # no hook installed
    assert seen == [] and preload.load_all() == 0 and loaded == []
    monkeypatch.setenv("TURBOVID_PRELOAD", "1")
    preload.load_all()
    assert loaded == ["k"]  # on again: the entry is tried


def test_no_hooks_in_this_triton_means_nothing_recorded(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(preload, "_runtime_knobs", lambda: None)
    with preload.recording() as seen:
        pass
    assert seen == [] and not preload.list_file().exists()


TWO_PROCESSES = ROPE_LAUNCH + """
    import sys
    from turbovid.ops import preload
    if sys.argv[1] == "again":  # the prewarm thread, as Pipeline.from_options starts it
        from turbovid.prewarm import Prewarm
        Prewarm(torch.device(sys.argv[2])).start().join()
        import triton.runtime.jit as jit
        def no_loading(*a, **kw):
            raise AssertionError("a listed kernel was loaded on its launch")
        jit.JITFunction._do_compile = no_loading
    with preload.recording() as seen:
        launch_rope()
    torch.cuda.synchronize()
    print("seen", len(seen))
"""


@pytest.mark.gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_a_new_process_loads_the_listed_kernels_before_their_launch(tmp_path, device):
    first = run_fresh(TWO_PROCESSES, "first", TRITON_CACHE_DIR=str(tmp_path))
    assert "seen 0" not in first
    again = run_fresh(TWO_PROCESSES, "again", device, TRITON_CACHE_DIR=str(tmp_path))
    assert "seen 0" in again  # nothing left to load on launch
