"""A raw-socket HTTP client that can walk away mid-request, as go-livepeer does to cancel."""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit


class RawRequest:
    """One POST on its own socket; read what has arrived, or close the connection at any point."""

    def __init__(self, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        payload = json.dumps(body).encode()
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=30)
        head = [
            f"POST {parts.path or '/'} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        self.received = b""
        self.eof = False

    def read_until(self, needle: bytes, timeout: float = 10.0) -> bytes:
        """Read until `needle` has arrived (AssertionError on timeout or EOF first)."""
        deadline = time.monotonic() + timeout
        while needle not in self.received:
            left = deadline - time.monotonic()
            assert left > 0 and not self.eof, f"{needle!r} not received; got {self.received[-500:]!r}"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                self.eof = True
            self.received += data
        return self.received

    def read_all(self, timeout: float = 30.0) -> bytes:
        """Read until the server closes the connection."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            assert left > 0, f"connection still open; got {self.received[-500:]!r}"
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            self.eof = not data
            self.received += data
        return self.received

    def status(self) -> int:
        """The response's status code (after its head arrived)."""
        return int(self.received.split(b" ", 2)[1])

    def body_lines(self) -> list[bytes]:
        """The body's lines, chunked framing removed."""
        head, _, body = self.received.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            body = dechunk(body)
        return [line.removesuffix(b"\r") for line in body.split(b"\n")]

    def close(self) -> None:
        """Walk away: close the socket (the server sees EOF)."""
        self.sock.close()


def dechunk(data: bytes) -> bytes:
    """Decode a chunked body (as much of it as is complete)."""
    out = b""
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0 or len(rest) < size:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out
