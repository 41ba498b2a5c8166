"""Supervision of a process's helper loops (threads or greenlets): a loop that dies is restarted.

A helper that raised is logged with its traceback, counted (RESTARTS, exported as a metric by
the web and in each worker's fleet record) and started again after a short pause: a bug or an
unexpected reply from Redis costs a second of that helper's work, never the process's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

logger = logging.getLogger(__name__)

RESTART_PAUSE_S = 0.5
# helper name → how many times it died and was restarted in this process.
RESTARTS: Counter[str] = Counter()
# Called with the helper's name at each restart (the web counts them in its Prometheus metrics).
LISTENERS: list[Callable[[str], None]] = []
_lock = threading.Lock()


def count_restart(helper: str) -> None:
    """Record that `helper` died and is being restarted."""
    with _lock:
        RESTARTS[helper] += 1
    for listener in LISTENERS:
        listener(helper)


def supervised(helper: str, loop: Callable[[], None], *, stop: threading.Event | None = None) -> Callable[[], None]:
    """A thread target running `loop` until `stop` is set, restarting it whenever it raises or returns."""

    def run() -> None:
        while stop is None or not stop.is_set():
            try:
                loop()
            except Exception:
                logger.exception("%s died; restarting it", helper)
            else:
                if stop is not None and stop.is_set():
                    return
                logger.error("%s returned unexpectedly; restarting it", helper)
            count_restart(helper)
            if stop is not None:
                if stop.wait(RESTART_PAUSE_S):
                    return
            else:
                time.sleep(RESTART_PAUSE_S)

    return run


def start_supervised(helper: str, loop: Callable[[], None], *, stop: threading.Event | None = None) -> threading.Thread:
    """Start `loop` on a daemon thread (a greenlet under gevent), supervised."""
    thread = threading.Thread(target=supervised(helper, loop, stop=stop), name=helper, daemon=True)
    thread.start()
    return thread
