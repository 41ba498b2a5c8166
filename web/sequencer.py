"""One job's events in order and once each, from its live messages and its backlog.

Workers number a job's events 1, 2, ... and append each to the job's backlog before publishing
it (common.events). Live messages can be missed (a lost subscription) and then come again from
the backlog, so the same event may arrive twice and a later one before an earlier one. A
Sequencer takes both and lets each event through once, in order; it says when the backlog must
be read (a gap in the live feed, a subscription that came back) and when a hole is fatal (events
neither heard live nor kept in the backlog). It is pure: no Redis, no clock; whoever feeds it
passes the time, and reads the backlog when it says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from common.events import job_key, sequence_of

# A backlog that could not be read is tried again after this, then twice as long each time, up
# to REPLAY_RETRY_MAX_S: a Redis that is away is not asked on every tick of every request.
REPLAY_RETRY_S = 0.25
REPLAY_RETRY_MAX_S = 2.0


@dataclass(frozen=True)
class Hole:
    """Events `first` to `last` of the job were lost: missed live and not in its backlog."""

    first: int
    last: int


@dataclass(frozen=True)
class Replayed:
    """What a backlog read let through, in order, and the hole it revealed, if any."""

    events: list[bytes]
    hole: Hole | None


def backlog_entries(xrange: Iterable[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[int, bytes]]:
    """(sequence number, message) of each entry of an XRANGE answer on a job's backlog."""
    return [(int(entry_id.partition(b"-")[0]), fields[b"m"]) for entry_id, fields in xrange]


class Sequencer:
    """The events of one job, by its id: each once, in order; pings (unnumbered) pass as they come."""

    def __init__(self, job_id: str, now: float) -> None:
        self.job_id = job_id
        self.last_seq = 0  # the last event let through
        self.last_heard = now  # when the last event was let through (the worker's sign of life)
        self._key = job_id.encode()
        self._held: dict[int, bytes] = {}  # live events that came ahead of a gap
        self._replay_due = False
        self._replay_at = 0.0
        self._retry_s = REPLAY_RETRY_S

    @property
    def replay_due(self) -> bool:
        """Whether events may be missing that only the backlog holds (until a read succeeds)."""
        return self._replay_due

    @property
    def replay_from(self) -> int:
        """The first sequence number a backlog read must return."""
        return self.last_seq + 1

    def replay_wanted(self, now: float) -> bool:
        """Whether to read the backlog now (due, and not backing off after a failed read)."""
        return self._replay_due and now >= self._replay_at

    def message(self, raw: bytes, now: float) -> list[bytes]:
        """A live message: the events it lets through, in order (none for a copy already let
        through, or one ahead of a gap: held, and a replay is wanted at once)."""
        if job_key(raw) != self._key:
            return []  # a job this request no longer follows
        seq = sequence_of(raw)
        if seq is None:
            self.last_heard = now
            return [raw]
        if seq <= self.last_seq or seq in self._held:
            return []
        if seq > self.last_seq + 1:
            self._held[seq] = raw
            self._want_replay(now)
            return []
        return self._through(seq, raw, now)

    def resync(self, now: float) -> None:
        """The live feed was cut (and is back): events may have been missed; replay at once."""
        self._want_replay(now)

    def replayed(self, entries: Iterable[tuple[int, bytes]], now: float) -> Replayed:
        """The backlog as read from `replay_from` on ((seq, message), ascending): the events it
        lets through, in order, and a fatal hole (missing events before ones known to exist)."""
        self._replay_due, self._retry_s = False, REPLAY_RETRY_S
        events: list[bytes] = []
        beyond: int | None = None  # the first entry past a gap in the backlog itself
        for seq, raw in entries:
            if seq <= self.last_seq:
                continue
            if seq > self.last_seq + 1:
                beyond = seq
                break
            events += self._through(seq, raw, now)
        known = [seq for seq in (beyond, min(self._held, default=None)) if seq is not None]
        if known and min(known) > self.last_seq + 1:
            return Replayed(events, Hole(self.last_seq + 1, min(known) - 1))
        return Replayed(events, None)

    def replay_failed(self, now: float) -> bool:
        """The backlog could not be read: try again later (backing off). True on the first
        failure since the last successful read (to say so once)."""
        first = self._retry_s == REPLAY_RETRY_S
        self._replay_at = now + self._retry_s
        self._retry_s = min(self._retry_s * 2, REPLAY_RETRY_MAX_S)
        return first

    def _want_replay(self, now: float) -> None:
        if not self._replay_due:
            self._replay_due, self._replay_at = True, now

    def _through(self, seq: int, raw: bytes, now: float) -> list[bytes]:
        """Let `seq` through, and the held events that follow it without a gap."""
        events = [raw]
        self.last_seq, self.last_heard = seq, now
        while (following := self._held.pop(self.last_seq + 1, None)) is not None:
            events.append(following)
            self.last_seq += 1
        return events
