"""Which model queues a worker listens on, and when its GPU switches from one model to another.

When every model a worker serves stays loaded together, it listens on its warm models first
and on cold ones only when needed (`listen_order`). When its GPU holds one model at a time,
`choose_switch` decides when to give the GPU to another model.

Every worker whose GPU can hold a model could take its jobs, but one that must load the model
first costs seconds to minutes. So a worker listens on a model it has not loaded only when no
other ready worker has that model loaded, or when jobs for it are already waiting (the warm
workers are saturated and the queue spills over).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.fleet import WorkerRecord


def listen_order(me: WorkerRecord, others: list[WorkerRecord], waiting: dict[str, int]) -> list[str]:
    """Model ids to take jobs for, in dequeue order (warm first, then needed cold ones)."""
    served = [model_id for model_id in me.models if me.can_serve(model_id)]
    warm = [m for m in served if me.models[m].loaded]
    cold = [
        m
        for m in served
        if not me.models[m].loaded
        and (waiting.get(m, 0) > 0 or not any(o.serves(m) and o.models[m].loaded for o in others))
    ]
    return warm + cold


@dataclass(frozen=True)
class Waiting:
    """One model's queue as the schedule sees it: jobs waiting, and how long the oldest has."""

    jobs: int = 0
    oldest_s: float = 0.0


@dataclass(frozen=True)
class Switch:
    """The schedule's decision: load `model` (unloading the current one first) and why."""

    model: str
    reason: str


def choose_switch(
    current: str | None,
    held_s: float,
    running: int,
    queues: dict[str, Waiting],
    switch_cost_s: dict[str, float],
    warm_elsewhere: set[str],
    hold_s: float,
) -> Switch | None:
    """Which model a one-model-at-a-time GPU should switch to now, if any.

    A switch costs seconds to minutes (drain, unload, load), so the current model is held while
    its queue is busy, but never for ever: a model whose oldest job has waited as long as a
    switch would cost (and at least `hold_s`) gets the GPU once the current one has had as
    long. An idle current model gives way at once. A model another GPU holds warm is left to
    that GPU unless its jobs wait twice as long (that GPU is saturated). Among candidates the
    longest-waiting wins, so every model's wait stays bounded by about two switch times.
    """
    current_busy = running > 0 or queues.get(current or "", Waiting()).jobs > 0
    best: tuple[float, str, str] | None = None
    for model, queue in queues.items():
        if model == current or queue.jobs <= 0:
            continue
        quantum = max(hold_s, switch_cost_s.get(model, hold_s))
        patience = 2 * quantum if model in warm_elsewhere else quantum
        if current is None or not current_busy:
            if model in warm_elsewhere and queue.oldest_s < patience:
                continue
            reason = "nothing loaded" if current is None else f"{current} is idle"
        elif held_s >= quantum and queue.oldest_s >= patience:
            reason = f"its oldest job waited {queue.oldest_s:.1f} s; {current} had the GPU {held_s:.1f} s"
        else:
            continue
        if best is None or queue.oldest_s > best[0]:
            best = (queue.oldest_s, model, reason)
    return Switch(best[1], best[2]) if best is not None else None
