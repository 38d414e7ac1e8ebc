"""The one switch for every Gluon kernel: off in the interpreter and with TURBOVID_GLUON=0 (logged once per family)."""
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
