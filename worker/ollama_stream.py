"""One streaming /api/chat call to Ollama on its own socket, cancellable from another thread.

Closing the connection is the only way to stop Ollama generating, so the socket is ours: h11
frames HTTP, `abort()` shuts the socket down (waking a blocked read), and each read hands back
every complete NDJSON line it brought, so a fast stream is relayed in batches, a slow one per token.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import NoReturn
from urllib.parse import urlsplit

import h11

from common.errors import BackendError, JobCancelled
from common.version import __version__
from worker.ollama_wire import error_for_status

_READ_SIZE = 65536
_MAX_ERROR_BODY = 65536


class ChatStream:
    """A POST /api/chat whose NDJSON answer is read in batches of complete lines."""

    def __init__(
        self,
        base_url: str,
        body: bytes,
        *,
        tag: str,
        connect_timeout: float,
        first_byte_timeout: float,
        idle_timeout: float,
    ) -> None:
        parts = urlsplit(base_url)
        self._url = base_url
        self._address = (parts.hostname or "localhost", parts.port or 80)
        self._host_header = parts.netloc
        self._path = (parts.path.rstrip("/") or "") + "/api/chat"
        self._body = body
        self._tag = tag
        self._connect_timeout = connect_timeout
        self._first_byte_timeout = first_byte_timeout
        self._idle_timeout = idle_timeout
        self._sock: socket.socket | None = None
        self._aborted = False
        self._lock = threading.Lock()
        self._conn = h11.Connection(h11.CLIENT)

    def abort(self) -> None:
        """Stop the call from any thread: Ollama sees the connection close and stops generating."""
        with self._lock:
            self._aborted = True
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Release the socket (always call when done)."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def open(self) -> None:
        """Connect and send the request; raises BackendError if Ollama cannot be reached."""
        try:
            sock = socket.create_connection(self._address, timeout=self._connect_timeout)
        except OSError as exc:
            raise BackendError(f"Ollama at {self._url} is unreachable: {exc}", reason="unreachable") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._sock = sock
            aborted = self._aborted
        if aborted:
            raise JobCancelled("cancelled before the request was sent")
        conn = self._conn
        request = h11.Request(
            method="POST",
            target=self._path,
            headers=[
                ("Host", self._host_header),
                ("User-Agent", f"livepeer-llm-runner/{__version__}"),
                ("Content-Type", "application/json"),
                ("Accept", "application/x-ndjson"),
                ("Content-Length", str(len(self._body))),
            ],
        )
        try:
            sock.sendall(conn.send(request) + conn.send(h11.Data(data=self._body)) + conn.send(h11.EndOfMessage()))
        except OSError as exc:
            self._raise_io(exc, "sending the request")

    def batches(self) -> Iterator[list[bytes]]:
        """Yield, read by read, the complete NDJSON lines of a 200 answer.

        Raises BackendError for an error status, a timeout (first byte: model loading; then idle),
        or a connection that breaks mid-stream; JobCancelled once `abort()` was called.
        """
        response = self._read_head()
        if response.status_code != 200:
            raise error_for_status(response.status_code, self._read_body(), tag=self._tag, url=self._url)
        assert self._sock is not None
        self._sock.settimeout(self._idle_timeout)
        pending: list[bytes] = []
        tail = b""
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                if pending:
                    yield pending
                    pending = []
                self._feed()
            elif isinstance(event, h11.Data):
                data = tail + bytes(event.data)
                *lines, tail = data.split(b"\n")
                pending.extend(line for line in lines if line.strip())
            elif isinstance(event, h11.EndOfMessage):
                if tail.strip():
                    pending.append(tail)
                if pending:
                    yield pending
                return
            elif event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                raise BackendError("Ollama closed the connection mid-stream", reason="truncated")

    def _read_head(self) -> h11.Response:
        assert self._sock is not None
        self._sock.settimeout(self._first_byte_timeout)
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                self._feed(first_byte=True)
            elif isinstance(event, h11.Response):
                return event
            elif isinstance(event, h11.ConnectionClosed):
                raise BackendError(f"Ollama at {self._url} closed the connection without answering", reason="truncated")

    def _read_body(self) -> bytes:
        body = b""
        while len(body) < _MAX_ERROR_BODY:
            event = self._next_event()
            if event is h11.NEED_DATA:
                self._feed()
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            else:
                break
        return body

    def _next_event(self) -> object:
        try:
            return self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            if self._aborted:
                raise JobCancelled("cancelled") from None
            raise BackendError(f"Ollama broke the HTTP stream: {exc}", reason="truncated") from None

    def _feed(self, first_byte: bool = False) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(_READ_SIZE)
        except TimeoutError:
            if self._aborted:
                raise JobCancelled("cancelled") from None
            if first_byte:
                raise BackendError(
                    f"Ollama sent nothing for {self._first_byte_timeout:g} s (model still loading?)",
                    reason="timeout",
                ) from None
            raise BackendError(f"Ollama stalled: no token for {self._idle_timeout:g} s", reason="stalled") from None
        except OSError as exc:
            self._raise_io(exc, "reading the answer")
        if not data and self._aborted:
            raise JobCancelled("cancelled")
        self._conn.receive_data(data)

    def _raise_io(self, exc: OSError, doing: str) -> NoReturn:
        if self._aborted:
            raise JobCancelled("cancelled") from None
        raise BackendError(f"connection to Ollama failed while {doing}: {exc}", reason="unreachable") from None
