"""Which model queues a worker listens on: its warm models first, cold ones only when needed.

Every worker whose GPU can hold a model could take its jobs, but one that must load the model
first costs seconds to minutes. So a worker listens on a model it has not loaded only when no
other ready worker has that model loaded, or when jobs for it are already waiting (the warm
workers are saturated and the queue spills over).
"""

from __future__ import annotations

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
