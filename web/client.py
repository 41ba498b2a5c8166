"""Noticing that the HTTP client went away while its request waits (go-livepeer cancels by closing),
and bounding how long a send to a client that stopped reading may block."""

from __future__ import annotations

import _socket
import contextlib
import socket
import time
from typing import Any

CHECK_INTERVAL_S = 0.25
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


class ClientWatch:
    """Peeks at the request's socket, at most every CHECK_INTERVAL_S, for an orderly close or reset."""

    def __init__(self, sock: Any, interval: float = CHECK_INTERVAL_S) -> None:
        self._sock = sock
        self._interval = interval
        self._next_check = 0.0
        self._gone = False
        self._timeout_before: float | None = None
        self._bounded = False

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
        self._gone = peer_closed(self._sock.fileno())
        return self._gone

    def bound_sends(self, timeout_s: float) -> None:
        """Make a send that blocks longer than `timeout_s` fail (the server then closes the stream)."""
        if self._sock is None or self._bounded:
            return
        self._timeout_before = self._sock.gettimeout()
        self._sock.settimeout(timeout_s)
        self._bounded = True

    def unbound_sends(self) -> None:
        """Restore the socket's own timeout (the connection may serve another request)."""
        if self._bounded and not self._gone:
            with contextlib.suppress(OSError):  # already closed
                self._sock.settimeout(self._timeout_before)
        self._bounded = False


def peer_closed(fd: int) -> bool:
    """Whether the peer of socket `fd` closed or reset it, without blocking and for any fd number.

    A non-blocking peek (not select(), which cannot watch descriptors past FD_SETSIZE): EOF means
    closed, no data yet means still there, data means a pipelined next request.
    """
    if fd < 0:
        return True
    # The C socket type, not gevent's: a gevent socket would wait for data instead of answering.
    probe = _socket.socket(fileno=fd)
    try:
        return probe.recv(1, _PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        probe.detach()
