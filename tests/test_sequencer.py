"""The sequencer: a job's events from a lossy live feed and its backlog, each once, in order."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from common.events import Ping as PingEvent
from common.events import encode, encode_tokens, sequenced
from web.sequencer import REPLAY_RETRY_MAX_S, REPLAY_RETRY_S, Hole, Sequencer, backlog_entries

JOB = "job1"


def event(seq: int, job: str = JOB) -> bytes:
    return sequenced(encode_tokens(job, f'"w{seq}"', 1), seq)


PING = encode(JOB, PingEvent())


def backlog(*seqs: int) -> list[tuple[int, bytes]]:
    return [(seq, event(seq)) for seq in seqs]


def test_events_in_order_pass_at_once_and_copies_are_dropped() -> None:
    seq = Sequencer(JOB, 0.0)
    assert seq.message(event(1), 1.0) == [event(1)]
    assert seq.message(event(2), 2.0) == [event(2)]
    assert seq.message(event(1), 3.0) == [] and seq.message(event(2), 3.0) == []
    assert seq.last_seq == 2 and seq.last_heard == 2.0 and not seq.replay_due


def test_a_ping_passes_and_is_a_sign_of_life() -> None:
    seq = Sequencer(JOB, 0.0)
    assert seq.message(PING, 4.0) == [PING]
    assert seq.last_heard == 4.0 and seq.last_seq == 0


def test_messages_of_another_job_are_ignored() -> None:
    seq = Sequencer(JOB, 0.0)
    assert seq.message(event(1, "job0"), 1.0) == [] and seq.message(encode("job0", PingEvent()), 1.0) == []
    assert seq.last_heard == 0.0 and not seq.replay_due


def test_a_gap_holds_what_came_ahead_and_wants_the_backlog_at_once() -> None:
    seq = Sequencer(JOB, 0.0)
    seq.message(event(1), 1.0)
    assert seq.message(event(4), 2.0) == []
    assert seq.replay_due and seq.replay_wanted(2.0) and seq.replay_from == 2
    assert seq.last_heard == 1.0  # nothing let through: no sign the job is moving on
    replayed = seq.replayed(backlog(2, 3, 4, 5), 3.0)
    assert replayed.events == [event(2), event(3), event(4), event(5)] and replayed.hole is None
    assert not seq.replay_due and seq.last_seq == 5 and seq.last_heard == 3.0


def test_held_events_complete_a_backlog_read_before_they_were_written() -> None:
    seq = Sequencer(JOB, 0.0)
    seq.message(event(3), 1.0)
    seq.message(event(4), 1.0)
    replayed = seq.replayed(backlog(1, 2), 2.0)
    assert replayed.events == [event(1), event(2), event(3), event(4)] and replayed.hole is None


def test_events_neither_heard_nor_in_the_backlog_are_a_hole() -> None:
    seq = Sequencer(JOB, 0.0)
    seq.message(event(1), 1.0)
    seq.message(event(5), 1.0)
    assert seq.replayed([], 2.0).hole == Hole(2, 4)  # the backlog expired, or Redis lost it
    trimmed = Sequencer(JOB, 0.0)
    trimmed.message(event(1), 1.0)
    trimmed.resync(2.0)
    replayed = trimmed.replayed(backlog(4, 5), 2.0)  # capped: the oldest entries were dropped
    assert replayed.events == [] and replayed.hole == Hole(2, 3)


def test_a_resync_wants_the_backlog_and_an_empty_one_is_no_hole() -> None:
    seq = Sequencer(JOB, 0.0)
    seq.message(event(1), 1.0)
    seq.resync(2.0)
    assert seq.replay_wanted(2.0)
    assert seq.replayed([], 2.5).hole is None and not seq.replay_due


def test_a_failed_read_backs_off_and_says_so_once() -> None:
    seq = Sequencer(JOB, 0.0)
    seq.resync(0.0)
    waits, first = [], []
    now = 0.0
    for _ in range(6):
        first.append(seq.replay_failed(now))
        wait = REPLAY_RETRY_S
        while not seq.replay_wanted(now + wait):
            wait *= 2
        assert not seq.replay_wanted(now + wait / 2 - 1e-9) or wait == REPLAY_RETRY_S
        waits.append(wait)
        now += wait
    assert first == [True] + [False] * 5
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0] and max(waits) == REPLAY_RETRY_MAX_S
    seq.replayed([], now)
    seq.resync(now)
    assert seq.replay_failed(now)  # a new episode after a read that worked


def test_backlog_entries_reads_xrange() -> None:
    answer = [(b"3-0", {b"m": event(3)}), (b"4-0", {b"m": event(4)})]
    assert backlog_entries(answer) == backlog(3, 4)


# --- any schedule of losses, copies, cuts and failing reads ------------------------------------


@dataclass
class Step:
    """What happens to one published event, and around it."""

    live: int  # copies delivered live: 0 (lost), 1, or 2
    cut: bool  # the subscription is cut and comes back after it
    read_fails: bool  # the next backlog read fails
    dt: float


steps = st.builds(
    Step,
    live=st.sampled_from([0, 1, 1, 1, 2]),
    cut=st.booleans(),
    read_fails=st.booleans(),
    dt=st.floats(0.0, 1.0),
)


@settings(max_examples=400, deadline=None)
@given(schedule=st.lists(steps, min_size=1, max_size=40), trimmed=st.integers(0, 5), expired=st.booleans())
def test_any_schedule_lets_each_event_through_once_in_order_or_ends_at_a_true_hole(
    schedule: list[Step], trimmed: int, expired: bool
) -> None:
    n = len(schedule)
    kept = set() if expired else set(range(trimmed + 1, n + 1))  # the backlog at its end
    seq = Sequencer(JOB, 0.0)
    out: list[bytes] = []
    heard: set[int] = set()
    hole: Hole | None = None
    now = 0.0

    def read(published: int, fails: bool) -> None:
        nonlocal hole
        if fails:
            seq.replay_failed(now)
            return
        entries = backlog(*sorted(s for s in kept if seq.replay_from <= s <= published))
        replayed = seq.replayed(entries, now)
        out.extend(replayed.events)
        hole = replayed.hole

    for published, step in enumerate(schedule, start=1):
        now += step.dt
        for _ in range(step.live):
            heard.add(published)
            out.extend(seq.message(event(published), now))
        if step.cut:
            seq.resync(now)
        if seq.replay_wanted(now):
            read(published, step.read_fails)
        if hole is not None:
            break
    if hole is None:  # Redis is back: whatever is still due is read
        seq.resync(now)
        read(n, False)
    taken = [int(raw.split(b"|")[1]) for raw in out]
    assert taken == list(range(1, len(taken) + 1))  # in order, once each, from the first
    if hole is None:  # what never came through could not: neither heard live nor in the backlog
        assert not set(range(len(taken) + 1, n + 1)) & (kept | heard)
    else:
        assert hole.first == len(taken) + 1 and hole.first <= hole.last
        assert all(s not in kept and s not in heard for s in range(hole.first, hole.last + 1))
    if not expired and trimmed == 0:
        assert hole is None and taken == list(range(1, n + 1))  # a whole backlog loses nothing
