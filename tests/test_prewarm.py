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
    monkeypatch.setattr(prewarm, "_work", lambda device: seen.append((threading.current_thread().name, device.type)))
    p = prewarm.Prewarm(torch.device("cuda")).start()
    p.join()
    assert seen == [("turbovid-prewarm", "cuda")]
    p.join()  # a second join is a no-op


def test_errors_are_logged_not_raised(monkeypatch, caplog):
    def boom(device):
        raise RuntimeError("no driver")

    monkeypatch.setattr(prewarm, "_work", boom)
    with caplog.at_level(logging.DEBUG, logger="turbovid.prewarm"):
        prewarm.Prewarm(torch.device("cuda")).start().join()
    assert "prewarm skipped: no driver" in caplog.text


def test_loading_starts_the_prewarm_first_and_waits_for_it(monkeypatch):
    events = []

    class Recorder:
        def __init__(self, device):
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
