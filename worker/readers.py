"""Whether anybody still reads a job's events: a generation nobody reads is stopped.

Every PUBLISH answers how many subscribers received it. A web process that died (OOM, SIGKILL)
leaves its channel with none; a job requeued long after its web process went away publishes
to nobody. The web process's own subscription may drop for a moment (a reconnect), so only a
channel unread for NO_READER_S counts as abandoned. This is the one place that decides it.
"""

from __future__ import annotations

import threading

# Longer than a web process takes to resubscribe after a dropped connection.
NO_READER_S = 3.0
# A channel unread this long is forgotten (its web process is long gone; a job that publishes to
# it again starts its NO_READER_S anew), and at most this many unread channels are remembered.
FORGET_S = 600.0
MAX_UNREAD = 10_000


class Readers:
    """Per reply channel: since when its events reached no subscriber (None while they do)."""

    def __init__(self) -> None:
        self._unread_since: dict[str, float] = {}
        self._lock = threading.Lock()

    def heard(self, channel: str, receivers: int, now: float) -> None:
        """Note what one PUBLISH on `channel` answered."""
        with self._lock:
            if receivers > 0:
                self._unread_since.pop(channel, None)
            elif channel not in self._unread_since:
                self._forget_old(now)
                self._unread_since[channel] = now

    def _forget_old(self, now: float) -> None:
        """Drop channels unread for FORGET_S, and the oldest past MAX_UNREAD (oldest first: dicts keep order)."""
        unread = self._unread_since
        while unread:
            channel, since = next(iter(unread.items()))
            if now - since < FORGET_S and len(unread) < MAX_UNREAD:
                return
            del unread[channel]

    def abandoned(self, channel: str, now: float) -> bool:
        """True when nobody has read `channel` for NO_READER_S."""
        with self._lock:
            since = self._unread_since.get(channel)
        return nobody_reading(since, now)


def nobody_reading(unread_since: float | None, now: float, grace_s: float = NO_READER_S) -> bool:
    """The decision itself: events have reached no reader for at least `grace_s`."""
    return unread_since is not None and now - unread_since >= grace_s
