"""Bounds on the web's connections, applied to gunicorn's gevent worker from its post_worker_init hook.

- At most MAX_CONNECTIONS open connections per web process: one more is answered at once (500,
  `insufficient capacity`, which go-livepeer retries on another orchestrator) and closed, instead
  of waiting unaccepted while the others hold every slot.
- A new connection must send its request head within HEADER_TIMEOUT_S; later requests on a kept-alive
  connection wait up to gunicorn's `keepalive` (go-livepeer keeps idle connections 90 s).
"""

from __future__ import annotations

import json
import logging
from functools import wraps
from typing import Any

import gevent

logger = logging.getLogger(__name__)

# Room in gevent's pool above the cap, so the refusals themselves are always accepted.
_REFUSAL_ROOM = 64


def refusal(open_connections: int) -> bytes:
    """The whole HTTP answer to a connection over the cap."""
    body = json.dumps({"detail": {"msg": f"insufficient capacity: {open_connections} connections already open"}})
    head = (
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return (head + body).encode()


def bound_connections(worker: Any, max_connections: int, header_timeout_s: float) -> None:
    """Wrap `worker.handle` (one call per connection) with the cap and the first request's head timeout."""
    worker.worker_connections = max(worker.worker_connections, max_connections + _REFUSAL_ROOM)
    handle = worker.handle
    keepalive_ctx = worker.timeout_ctx
    fresh: set[Any] = set()  # greenlets whose connection has not sent a whole request head yet
    state = {"open": 0}

    @wraps(handle)
    def capped_handle(listener: Any, client: Any, addr: Any) -> None:
        if state["open"] >= max_connections:
            _refuse(client, state["open"])
            return
        state["open"] += 1
        current = gevent.getcurrent()
        fresh.add(current)
        try:
            handle(listener, client, addr)
        finally:
            fresh.discard(current)
            state["open"] -= 1

    def timeout_ctx() -> Any:
        current = gevent.getcurrent()
        if current in fresh:
            fresh.discard(current)  # the next wait on this connection is a keep-alive wait
            return gevent.Timeout(header_timeout_s, False)
        return keepalive_ctx()

    worker.handle = capped_handle
    worker.timeout_ctx = timeout_ctx


def _refuse(client: Any, open_connections: int) -> None:
    try:
        client.settimeout(1.0)
        client.sendall(refusal(open_connections))
    except OSError as exc:
        logger.debug("refusing a connection over the cap: %s", exc)
    finally:
        client.close()
