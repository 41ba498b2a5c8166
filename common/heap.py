"""The garbage collector set for a long-running server process: start-up objects out of its way."""

from __future__ import annotations

import gc

# Python collects its youngest generation every 700 net allocations: a job allocates thousands of
# short-lived objects (RQ's job and registry objects, JSON, events), so collections ran several
# times per job, each scanning whatever survived since. Rarer young collections cost less in all.
YOUNG_THRESHOLD = 20_000


def settle() -> None:
    """Call once start-up is done: collect, freeze what exists (modules, app, settings) so no later
    collection scans it again, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
