"""The jobs a worker process is running now, so another thread can cancel one by id."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from common.errors import JobCancelled
from worker.engine_stream import ChatStream

# A cancel that arrives before its job starts here (a race with dequeue) is kept this long.
EARLY_CANCEL_MEMORY_S = 120.0
# ...and at most this many of them (every web refusal or cancel reaches every worker).
EARLY_CANCEL_MAX = 100_000


@dataclass
class Handle:
    """One running job: where its events go, its engine call, and whether it was cancelled."""

    job_id: str
    reply_to: str
    stream: ChatStream | None = None
    cancel_reason: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def attach(self, stream: ChatStream) -> None:
        """Bind the job's engine call; aborted at once if the job was cancelled meanwhile."""
        with self._lock:
            self.stream = stream
            reason = self.cancel_reason
        if reason is not None:
            stream.abort()

    def cancel(self, reason: str) -> None:
        """Cancel the job: its engine call is aborted, which stops the engine generating."""
        with self._lock:
            if self.cancel_reason is None:
                self.cancel_reason = reason
            stream = self.stream
        if stream is not None:
            stream.abort()


class ActiveJobs:
    """Thread-safe map of job id → Handle, plus cancels that arrived early."""

    def __init__(self) -> None:
        self._handles: dict[str, Handle] = {}
        # job id → when the cancel is forgotten; oldest first, so expiry pops from the front.
        self._early: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, job_id: str, reply_to: str) -> Handle:
        """Track a job; raises JobCancelled if it was cancelled before it reached us."""
        with self._lock:
            if self._early.pop(job_id, None) is not None:
                raise JobCancelled("cancelled by the client before it started")
            handle = Handle(job_id, reply_to)
            self._handles[job_id] = handle
            return handle

    def finish(self, job_id: str) -> None:
        """Stop tracking a job."""
        with self._lock:
            self._handles.pop(job_id, None)

    def holds(self, job_id: str) -> bool:
        """Whether the job runs here now (taken, its engine call started or about to)."""
        with self._lock:
            return job_id in self._handles

    def cancel(self, job_id: str, reason: str) -> bool:
        """Cancel a job if it runs here (True), else remember the cancel for a while."""
        now = time.monotonic()
        with self._lock:
            handle = self._handles.get(job_id)
            if handle is None:
                self._remember_early(job_id, now)
                return False
        handle.cancel(reason)
        return True

    def _remember_early(self, job_id: str, now: float) -> None:
        """Keep an early cancel; amortised O(1): each entry is added and dropped once."""
        early = self._early
        early[job_id] = now + EARLY_CANCEL_MEMORY_S
        early.move_to_end(job_id)
        while early:
            oldest, forget_at = next(iter(early.items()))
            if forget_at > now and len(early) <= EARLY_CANCEL_MAX:
                break
            del early[oldest]

    def early_cancels(self) -> int:
        """How many early cancels are remembered now."""
        with self._lock:
            return len(self._early)

    def cancel_all(self, reason: str) -> int:
        """Cancel every running job; returns how many."""
        handles = self.snapshot()
        for handle in handles:
            handle.cancel(reason)
        return len(handles)

    def snapshot(self) -> list[Handle]:
        """The jobs running now."""
        with self._lock:
            return list(self._handles.values())
