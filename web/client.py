"""Noticing that the HTTP client went away while its request waits (go-livepeer cancels by closing)."""

from __future__ import annotations

import select
import socket
import time
from typing import Any

CHECK_INTERVAL_S = 0.25


class ClientWatch:
    """Peeks at the request's socket, at most every CHECK_INTERVAL_S, for an orderly close or reset."""

    def __init__(self, sock: Any, interval: float = CHECK_INTERVAL_S) -> None:
        self._sock = sock
        self._interval = interval
        self._next_check = 0.0
        self._gone = False

    @classmethod
    def from_environ(cls, environ: dict[str, Any]) -> ClientWatch:
        """Watch the socket gunicorn hands the app (none under a test client: never gone)."""
        return cls(environ.get("gunicorn.socket"))

    def gone(self) -> bool:
        """Whether the client has closed its end; cheap to call often."""
        if self._gone or self._sock is None:
            return self._gone
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self._interval
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            if readable:
                # Readable with nothing to read means EOF; a pipelined next request is data.
                self._gone = self._sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            self._gone = True
        return self._gone
