"""The deadlines of a followed job, read at a given time."""

from __future__ import annotations

from common.errors import NO_ROOM
from common.outage import OUTAGE_S
from common.settings import Settings
from web.deadlines import EVENTS_LOST, QUEUE_TIMEOUT, SHUTDOWN, WORKER_LOST, Deafness, Progress, overdue

SETTINGS = Settings(queue_timeout_s=30.0, worker_silence_s=5.0, shutdown_grace_s=10.0)
QUEUED = Progress("m", placed_at=100.0, started=False, last_heard=100.0)
RUNNING = Progress("m", placed_at=100.0, started=True, last_heard=150.0, worker="w1")


def test_a_queued_job_waits_up_to_the_queue_timeout() -> None:
    assert overdue(SETTINGS, QUEUED, 129.9, None) is None
    due = overdue(SETTINGS, QUEUED, 130.0, None)
    assert due is not None and due.reason == QUEUE_TIMEOUT
    assert due.msg == f"{NO_ROOM}: no slot for 'm' became free within 30 s (QUEUE_TIMEOUT_S)"


def test_a_started_job_has_no_queue_deadline_but_its_worker_must_be_heard() -> None:
    assert overdue(SETTINGS, RUNNING, 154.9, None) is None
    due = overdue(SETTINGS, RUNNING, 155.0, None)
    assert due is not None and due.reason == WORKER_LOST
    assert due.msg == "worker w1 stopped responding (silent for 5.0 s)"


def test_silence_while_the_events_cannot_be_read_is_not_blamed_on_the_worker() -> None:
    unreadable = Progress("m", placed_at=100.0, started=True, last_heard=150.0, worker="w1", replay_due=True)
    due = overdue(SETTINGS, unreadable, 156.0, None)
    assert due is not None and due.reason == EVENTS_LOST and "could not be read from Redis for 6.0 s" in due.msg


def test_a_shutdown_ends_any_job_after_its_grace_first() -> None:
    for job, now in ((QUEUED, 120.0), (RUNNING, 152.0)):
        assert overdue(SETTINGS, job, now, now - 9.5) is None
        due = overdue(SETTINGS, job, now, now - 10.0)
        assert due is not None and due.reason == SHUTDOWN and due.msg.startswith(f"{NO_ROOM}: ")
    # Past the queue timeout and the silence too: the shutdown is what is said.
    due = overdue(SETTINGS, RUNNING, 500.0, 0.0)
    assert due is not None and due.reason == SHUTDOWN


def test_silence_counts_not_while_this_process_hears_nobody_and_never_past_the_outage_allowance() -> None:
    deaf = Deafness()
    assert deaf.until(True, 100.0) == 0.0  # hearing: the worker's own last event decides
    assert deaf.until(False, 101.0) == 101.0  # the subscription is down: silence stops counting
    assert deaf.until(False, 105.0) == 105.0
    assert deaf.until(False, 101.0 + OUTAGE_S + 30) == 101.0 + OUTAGE_S  # a long outage: it counts again
    deaf.resynced(200.0)
    assert deaf.until(True, 203.0) == 200.0  # back: the worker's silence counts from the resync
    assert deaf.until(False, 204.0) == 204.0  # a new outage gets its own allowance
