"""The one decision of whether anybody still reads a job's events."""

from __future__ import annotations

from worker.readers import NO_READER_S, Readers, nobody_reading


def test_a_channel_is_abandoned_only_after_its_events_reached_nobody_for_the_grace() -> None:
    readers = Readers()
    readers.heard("web-a", 0, 100.0)
    assert not readers.abandoned("web-a", 100.0 + NO_READER_S - 0.1)
    readers.heard("web-a", 0, 101.0)  # still nobody: the first silence counts
    assert readers.abandoned("web-a", 100.0 + NO_READER_S)


def test_a_reader_coming_back_clears_the_silence() -> None:
    readers = Readers()
    readers.heard("web-a", 0, 100.0)
    readers.heard("web-a", 1, 101.0)  # resubscribed
    assert not readers.abandoned("web-a", 200.0)
    assert not readers.abandoned("never-published", 200.0)


def test_the_decision() -> None:
    assert nobody_reading(None, 1e9) is False
    assert nobody_reading(10.0, 10.0 + NO_READER_S) is True
    assert nobody_reading(10.0, 10.0 + NO_READER_S - 0.01) is False
