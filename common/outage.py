"""Riding out a short Redis outage (a restart, a Sentinel failover): the same call again until it
goes through, for a bounded time.

Only for writes that are safe to repeat: each guards itself on the state it expects (common.job_state),
so one that ran before its reply was lost finds its own result and changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from redis.exceptions import ConnectionError, TimeoutError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# As long as the worker's publisher keeps a job's events (worker.publisher.RETRY_S): a failover
# (Sentinel's down-after-milliseconds, then a vote and a promotion) must fit in it.
OUTAGE_S = 10.0
_PAUSE_S = 0.2


def through_outage(call: Callable[[], T], what: str, *, within_s: float = OUTAGE_S) -> T:
    """`call()`, again every 0.2 s while Redis cannot be reached, for up to `within_s`; then its error."""
    deadline = time.monotonic() + within_s
    warned = False
    while True:
        try:
            return call()
        except (ConnectionError, TimeoutError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise
            if not warned:
                logger.warning("%s: Redis unreachable (%s); trying again for up to %g s", what, exc, within_s)
                warned = True
            time.sleep(_PAUSE_S)
