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


def test_unread_channels_are_forgotten_after_a_while_and_never_pile_up() -> None:
    from worker import readers as module

    readers = module.Readers()
    readers.heard("dead-web", 0, 0.0)
    assert readers.abandoned("dead-web", module.NO_READER_S)
    readers.heard("another", 0, module.FORGET_S + 1)  # the dead web's entry is old now: dropped
    assert not readers.abandoned("dead-web", module.FORGET_S + 1)
    for i in range(module.MAX_UNREAD + 50):
        readers.heard(f"web-{i}", 0, module.FORGET_S + 2)
    assert len(readers._unread_since) <= module.MAX_UNREAD


def test_jobs_whose_events_were_lost_are_remembered_boundedly() -> None:
    import asyncio
    import time

    from common.events import Ping, encode
    from worker import publisher as module

    loop = asyncio.new_event_loop()  # never run: the sending loop is not needed here
    try:
        publisher = module.Publisher("redis://127.0.0.1:1/0", loop)
        publisher._failing_since = time.monotonic() - module.RETRY_S - 1  # failing for longer than RETRY_S
        batch = {"web": [encode(f"job-{i}", Ping()) for i in range(module.LOST_MAX + 50)]}
        publisher._retry_or_drop(batch, {}, "Redis away")
        assert len(publisher._lost) == module.LOST_MAX
    finally:
        loop.close()
