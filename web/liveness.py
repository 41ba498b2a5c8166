"""Whether a silent job's worker process is gone, long before WORKER_SILENCE_S says so.

A worker's process stays subscribed to its RQ command channel (`rq:pubsub:<worker name>`, the
name its Started event carries: worker.main gives the same name to both) for as long as it lives
(worker.channel). When it dies (SIGKILL, a crash, the OOM killer) the kernel closes its sockets
and Redis drops the subscriber at once. So when a started job has been silent a little longer
than the workers' ping interval, the web asks Redis (PUBSUB NUMSUB) whether anyone still listens
there; nobody, twice a tick apart (the channel may be re-making its subscription), means the
process is gone, and the job's worker counts as lost now. A host that vanished without closing
its sockets keeps its subscriber until TCP gives up: WORKER_SILENCE_S finds that one.
"""

from __future__ import annotations

import logging
import time

from redis import Redis
from redis.exceptions import RedisError

from common import keys
from common.events import PING_S
from web.deadlines import Deafness

logger = logging.getLogger(__name__)


# A started job silent this long has its worker's process looked for: a little more than the
# workers' ping interval, so a live worker's next ping is hardly ever that late (and a look at a
# live one finds it).
PROBE_AFTER_S = PING_S + 0.25
# A process is gone when two looks this far apart at least find nobody on its command channel: one
# could fall while the worker re-makes its subscription.
PROBE_CONFIRM_S = 0.2
# A look Redis takes longer than this to answer (or does not answer) means this process may have
# heard nobody meanwhile (its event subscription lost and re-made while the relay waited): the
# silence counts again from the answer, as after a resync (web.deadlines.Deafness).
SLOW_LOOK_S = 0.25


class ProcessWatch:
    """Whether the worker of one followed job is gone: when to look (`due`), what the looks
    found (`seen`), and the look itself (`gone`)."""

    def __init__(self, deaf: Deafness) -> None:
        self._deaf = deaf
        self._heard = -1.0  # the silence being looked into began then
        self._empty_since: float | None = None
        self._asked_at = float("-inf")

    def due(self, started: bool, last_heard: float, counts_from: float, now: float) -> bool:
        """Whether to look now: the job is started and silent past PROBE_AFTER_S, heard by a process
        that heard everyone meanwhile (`counts_from`, web.deadlines.Deafness: no outage since the
        last event, after which the worker too is re-making its connections), not looked at this tick."""
        if not started or counts_from > last_heard or now - last_heard < PROBE_AFTER_S:
            return False
        return now - self._asked_at >= PROBE_CONFIRM_S / 2  # once a tick (web.hub.TICK_S)

    def seen(self, subscribers: int, last_heard: float, now: float) -> bool:
        """One look's answer (subscribers of the worker's command channel); True once the process is gone."""
        self._asked_at = now
        if last_heard != self._heard:  # a new silence: earlier looks were about another
            self._heard, self._empty_since = last_heard, None
        if subscribers:
            self._empty_since = None
            return False
        if self._empty_since is None:
            self._empty_since = now
        return now - self._empty_since >= PROBE_CONFIRM_S

    def gone(self, redis: Redis, worker: str, started: bool, last_heard: float, counts_from: float, now: float) -> bool:
        """Look, if it is time, whether `worker`'s process still listens; True once it is gone."""
        if not worker or not self.due(started, last_heard, counts_from, now):
            return False
        asked = time.monotonic()
        try:
            found: dict[bytes | str, int] | None = dict(redis.pubsub_numsub(keys.worker_commands(worker)))
        except (RedisError, OSError) as exc:
            logger.debug("cannot look for worker %s: %s", worker, exc)
            found = None
        answered = time.monotonic()
        if found is None or answered - asked > SLOW_LOOK_S:
            self._deaf.resynced(answered)
            return False
        return self.seen(sum(int(n) for n in found.values()), last_heard, now)
