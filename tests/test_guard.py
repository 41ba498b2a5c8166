"""Supervised helper loops: a loop that raises or returns is restarted, logged and counted."""

from __future__ import annotations

import logging
import threading

import pytest

from common import guard
from tests.stack import wait_until


def test_a_loop_that_dies_is_restarted_and_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "RESTART_PAUSE_S", 0.01)
    seen: list[str] = []
    monkeypatch.setattr(guard, "LISTENERS", [seen.append])
    stop = threading.Event()
    runs: list[int] = []

    def loop() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise KeyError("a bug")
        if len(runs) == 2:
            return  # a loop that should never return
        stop.wait()

    before = guard.RESTARTS["test-loop"]
    with caplog.at_level(logging.ERROR):
        thread = guard.start_supervised("test-loop", loop, stop=stop)
        wait_until(lambda: len(runs) == 3, 2, "the third run")
    stop.set()
    thread.join(2)
    assert not thread.is_alive()
    assert guard.RESTARTS["test-loop"] - before == 2 and seen == ["test-loop", "test-loop"]
    assert "test-loop died; restarting it" in caplog.text and "KeyError: 'a bug'" in caplog.text
    assert "test-loop returned unexpectedly" in caplog.text


def test_a_stopped_loop_is_not_restarted() -> None:
    stop = threading.Event()
    stop.set()
    runs: list[int] = []
    guard.supervised("stopped", lambda: runs.append(1), stop=stop)()
    assert runs == []
