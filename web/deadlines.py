"""The deadlines of a job the web follows, and which one has passed: pure, given the time.

Checked on every tick (web.hub.TICK_S) whatever else is going on (a replay that keeps failing
included): the runner shutting down past SHUTDOWN_GRACE_S, a job not taken within
QUEUE_TIMEOUT_S, a worker silent for WORKER_SILENCE_S after it took the job, or sooner one whose
process is gone (web.liveness).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import no_room
from common.outage import OUTAGE_S
from common.settings import Settings

SHUTDOWN, QUEUE_TIMEOUT, WORKER_LOST, EVENTS_LOST = "shutdown", "queue_timeout", "worker_lost", "events_lost"


@dataclass(frozen=True)
class Overdue:
    """A deadline that passed: why (a failure reason) and what to tell the client."""

    reason: str
    msg: str


@dataclass(frozen=True)
class Progress:
    """Where a followed job stands, as the deadlines read it (times from one monotonic clock)."""

    model_id: str
    placed_at: float
    started: bool
    last_heard: float
    worker: str = ""
    replay_due: bool = False
    gone: bool = False  # its worker's process is gone (web.liveness)


def overdue(settings: Settings, job: Progress, now: float, draining_since: float | None) -> Overdue | None:
    """The first deadline of `job` that has passed at `now`, or None."""
    if draining_since is not None and now - draining_since >= settings.shutdown_grace_s:
        return Overdue(SHUTDOWN, no_room("the runner is shutting down; retry on another orchestrator"))
    if not job.started:
        if now - job.placed_at >= settings.queue_timeout_s:
            return Overdue(
                QUEUE_TIMEOUT,
                no_room(
                    f"no slot for {job.model_id!r} became free within {settings.queue_timeout_s:g} s (QUEUE_TIMEOUT_S)"
                ),
            )
        return None
    silent = now - job.last_heard
    if job.gone:
        return Overdue(WORKER_LOST, f"worker {job.worker} stopped responding (its process is gone: silent for "
                                    f"{silent:.1f} s and off its command channel)")  # fmt: skip
    if silent < settings.worker_silence_s:
        return None
    if job.replay_due:
        # The worker may be fine: it is this process that cannot read the job's events.
        return Overdue(EVENTS_LOST, f"this job's events could not be read from Redis for {silent:.1f} s; retry")
    return Overdue(WORKER_LOST, f"worker {job.worker} stopped responding (silent for {silent:.1f} s)")


class Deafness:
    """Since when a worker's silence counts again after this process heard nobody (its event
    subscription down: Redis restarting, a failover). Silence meanwhile is not the worker's: it
    counts again from the resync, or once the outage outlasts what a worker keeps of its events
    (OUTAGE_S, the publisher's retries), so a request never hangs on an outage."""

    def __init__(self) -> None:
        self._until = 0.0
        self._since: float | None = None

    def resynced(self, now: float) -> None:
        """The subscription came back: the worker's silence counts from now."""
        self._until = now

    def until(self, subscribed: bool, now: float) -> float:
        """Note whether this process hears workers now; the time silence counts from at the earliest."""
        if subscribed:
            self._since = None
        else:
            self._since = now if self._since is None else self._since
            self._until = max(self._until, min(now, self._since + OUTAGE_S))
        return self._until
