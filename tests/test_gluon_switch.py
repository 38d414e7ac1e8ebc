"""What every Gluon kernel shares: the switch (off in the interpreter and with TURBOVID_GLUON=0, logged once per family) and the fallback when one fails."""
from __future__ import annotations

import logging

from turbovid.ops import gluon_switch


def test_switch(monkeypatch, caplog):
    log = logging.getLogger("turbovid.test_gluon_switch")
    monkeypatch.setattr(gluon_switch, "_logged", set())
    monkeypatch.delenv("TURBOVID_GLUON", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert gluon_switch.enabled("a", log)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not gluon_switch.enabled("a", log)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("TURBOVID_GLUON", "0")
    with caplog.at_level(logging.INFO, logger="turbovid.test_gluon_switch"):
        assert not any(gluon_switch.enabled(w, log) for w in ("a", "a", "b"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["a: the Gluon kernel is off (TURBOVID_GLUON=0); the Triton kernel runs",
                     "b: the Gluon kernel is off (TURBOVID_GLUON=0); the Triton kernel runs"]


def test_attempt_returns_the_result_or_falls_back_once_per_device(monkeypatch, caplog):
    import torch

    log = logging.getLogger("turbovid.test_gluon_switch")
    monkeypatch.setattr(gluon_switch, "_broken", set())
    cpu, other = torch.device("cpu"), torch.device("meta")
    assert gluon_switch.attempt("k: the Gluon kernel", cpu, log, lambda x, y=0: x + y, 2, y=3) == 5
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("first line\nsecond line")

    with caplog.at_level(logging.WARNING, logger="turbovid.test_gluon_switch"):
        assert gluon_switch.attempt("k: the Gluon kernel", cpu, log, broken) is None
        assert gluon_switch.attempt("k: the Gluon kernel", cpu, log, broken) is None  # not tried again
        assert gluon_switch.attempt("k: the Gluon kernel", other, log, lambda: 7) == 7  # another device
        assert gluon_switch.attempt("j: the Gluon kernel", cpu, log, lambda: 8) == 8  # another kernel
    assert len(calls) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "k: the Gluon kernel failed on cpu (RuntimeError: first line); using the Triton kernel"]
