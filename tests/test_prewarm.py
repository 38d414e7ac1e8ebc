"""The helper thread that does a first video's weight-free one-time work while the weights load."""
import importlib
import logging

import pytest
import torch

from turbovid import prewarm
from turbovid.options import PipelineOptions
from turbovid.pipeline import Pipeline


def test_triton_key_is_computed_once_and_cached():
    pytest.importorskip("triton")
    try:
        from triton.runtime.cache import triton_key
    except ImportError:
        from triton.compiler.compiler import triton_key
    triton_key.cache_clear()
    prewarm._triton_key()
    assert triton_key.cache_info().currsize == 1  # the first kernel's cache key finds it done
    hits = triton_key.cache_info().hits
    triton_key()
    assert triton_key.cache_info().hits == hits + 1


def test_listed_modules_exist_in_this_triton():
    # a renamed module would make the prewarm a silent no-op
    pytest.importorskip("triton")
    for name in prewarm.MODULES:
        importlib.import_module(name)


def test_cpu_device_does_nothing(monkeypatch):
    called = []
    monkeypatch.setattr(prewarm, "_triton_key", lambda: called.append("key"))
    p = prewarm.Prewarm(torch.device("cpu")).start()
    p.join()
    assert called == [] and p._thread is None


def test_work_runs_on_a_helper_thread_and_join_waits(monkeypatch):
    import threading

    seen = []
    monkeypatch.setattr(prewarm, "_steps", lambda device: [
        lambda: seen.append((threading.current_thread().name, device.type))])
    p = prewarm.Prewarm(torch.device("cuda")).start()
    p.join()
    assert seen == [("turbovid-prewarm", "cuda")]
    p.join()  # a second join is a no-op


def test_errors_are_logged_not_raised(monkeypatch, caplog):
    def boom():
        raise RuntimeError("no driver")

    monkeypatch.setattr(prewarm, "_steps", lambda device: [boom])
    with caplog.at_level(logging.DEBUG, logger="turbovid.prewarm"):
        prewarm.Prewarm(torch.device("cuda")).start().join()
    assert "prewarm step skipped: RuntimeError: no driver" in caplog.text


def test_loading_starts_the_prewarm_first_and_waits_for_it(monkeypatch):
    events = []

    class Recorder:
        def __init__(self, device, tasks=()):
            events.append(("init", device.type))

        def start(self):
            events.append("start")
            return self

        def join(self):
            events.append("join")

    real_build = Pipeline._build_tiny

    def build(*a, **kw):
        events.append("load")
        return real_build(*a, **kw)

    monkeypatch.setattr("turbovid.pipeline.Prewarm", Recorder)
    monkeypatch.setattr(Pipeline, "_build_tiny", staticmethod(build))
    Pipeline.from_options(PipelineOptions(model="tiny-random", device="cpu"))
    assert events == [("init", "cpu"), "start", "load", "join"]


def test_tasks_run_after_the_common_work_and_one_failing_skips_only_itself(monkeypatch):
    order = []
    monkeypatch.setattr(prewarm, "_steps", lambda device: [lambda: order.append("common")])

    def bad():
        raise ValueError("no fp8 here")

    prewarm.Prewarm(torch.device("cuda"), [lambda: order.append("a"), bad, lambda: order.append("b")]).start().join()
    assert order == ["common", "a", "b"]
    order.clear()
    prewarm.Prewarm(torch.device("cpu"), [lambda: order.append("a")]).start().join()
    assert order == ["common"]  # model tasks warm GPU kernels only


@pytest.mark.parametrize("scales", ["tensor", "block"])
def test_pipeline_prewarm_tasks(monkeypatch, scales):
    """fp8 probes the cuBLAS GEMM of the layers' scale layout (TURBOVID_FP8_SCALES) ahead."""
    from turbovid.models import t5
    from turbovid.ops.quant import fp8_cublas, fp8_tensor

    seen = []
    monkeypatch.setenv("TURBOVID_FP8_SCALES", scales)
    monkeypatch.setattr(t5, "warm_up_kernels", lambda device, dtype: seen.append(("t5", device.type, dtype)))
    monkeypatch.setattr(fp8_cublas, "available", lambda device: seen.append(("block", device.type)))
    monkeypatch.setattr(fp8_tensor, "cublas_available", lambda device: seen.append(("tensor", device.type)))
    dev = torch.device("cuda")
    for quant in ("none", "int8", "fp8"):
        for task in Pipeline._prewarm_tasks(PipelineOptions(quant=quant), dev, torch.bfloat16):
            task()
    assert seen == [("t5", "cuda", torch.bfloat16)] * 3 + [(scales, "cuda")]


def test_text_encoder_warm_up_runs_the_real_encoders_ops(monkeypatch):
    from turbovid.configs import T5_PRESETS
    from turbovid.models import t5

    built = []
    real = t5.build_text_encoder
    monkeypatch.setattr(t5, "build_text_encoder", lambda cfg, *a, **kw: built.append(cfg) or real(cfg, *a, **kw))
    t5.warm_up_kernels(torch.device("cpu"), torch.float32)
    (cfg,) = built
    xxl = T5_PRESETS["umt5-xxl"]
    assert cfg.dim_attn // cfg.num_heads == xxl.dim_attn // xxl.num_heads  # same attention kernels
    assert cfg.text_len == xxl.text_len and cfg.num_layers == 1


def test_each_common_step_runs_even_when_an_earlier_one_fails(monkeypatch, caplog):
    pytest.importorskip("triton")
    ran = []

    def failing(name):
        def step(*a):
            ran.append(name)
            raise RuntimeError(name)
        return step

    monkeypatch.setattr(prewarm, "_triton_key", failing("key"))
    monkeypatch.setattr(prewarm, "_load_driver", failing("driver"))
    monkeypatch.setattr(prewarm, "_import_modules", lambda: ran.append("modules"))
    monkeypatch.setattr(prewarm, "_preload", lambda: ran.append("preload"))
    monkeypatch.setattr(prewarm, "_cublas", lambda device: ran.append(("cublas", str(device))))
    monkeypatch.setattr(prewarm, "_context", lambda device: ran.append(("context", str(device))))
    monkeypatch.setattr(torch.cuda, "set_device", failing("set_device"))
    with caplog.at_level(logging.DEBUG, logger="turbovid.prewarm"):
        prewarm.Prewarm(torch.device("cuda:1")).start().join()
    assert ran == ["set_device", ("context", "cuda:1"), "key", "driver", "modules", "preload", ("cublas", "cuda:1")]
    assert "prewarm step skipped: RuntimeError: driver" in caplog.text
    ran.clear()
    prewarm.Prewarm(torch.device("cuda")).start().join()  # no index: the thread keeps the default device
    assert ran[0] == ("context", "cuda")


def test_the_switch_interval_is_short_while_the_steps_run_and_restored_after(monkeypatch):
    import sys

    seen = []
    monkeypatch.setattr(prewarm, "_steps", lambda device: [lambda: seen.append(sys.getswitchinterval())])
    before = sys.getswitchinterval()
    try:
        p = prewarm.Prewarm(torch.device("cuda")).start()  # no CUDA call: the step is a stand-in
        p.join()
        assert seen == [pytest.approx(prewarm.SWITCH_INTERVAL, rel=0.05)] and sys.getswitchinterval() == before
        sys.setswitchinterval(1e-4)  # a shorter one set by the application stays
        mine = sys.getswitchinterval()  # CPython keeps whole microseconds: 9.9e-05
        prewarm.Prewarm(torch.device("cuda")).start().join()
        assert seen[-1] == mine and sys.getswitchinterval() == mine
    finally:
        sys.setswitchinterval(before)
