"""A small incremental parser for one HTTP/1.1 response, as Ollama (Go's net/http) sends it.

Fed bytes as they arrive, it hands back the body with its framing removed (chunked or
Content-Length, or until the connection closes), so the stream relay never waits for more
than the socket has. Anything it does not understand raises ValueError.
"""

from __future__ import annotations

_MAX_HEAD = 64 * 1024


class ResponseParser:
    """Parses a response's head, then de-frames its body incrementally."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.complete = False
        self._buffer = b""
        self._chunked = False
        self._remaining: int | None = None  # body bytes left: Content-Length, or the current chunk
        self._in_chunk_trailer = False

    def feed(self, data: bytes) -> bytes:
        """Take the next bytes from the socket; return the body bytes they complete."""
        if self.complete:
            return b""
        self._buffer += data
        if self.status is None and not self._parse_head():
            return b""
        if not self._chunked:
            return self._take_plain()
        return self._take_chunks()

    def _parse_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD:
                raise ValueError("response head too large")
            return False
        head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4 :]
        status_line, *header_lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x response: {status_line[:80]!r}")
        self.status = int(rest.split(" ", 1)[0])
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"malformed header line: {line[:80]!r}")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        if not self._chunked and "content-length" in self.headers:
            self._remaining = int(self.headers["content-length"])
        return True

    def _take_plain(self) -> bytes:
        body, self._buffer = self._buffer, b""
        if self._remaining is not None:
            body = body[: self._remaining]
            self._remaining -= len(body)
            self.complete = self._remaining == 0
        return body

    def _take_chunks(self) -> bytes:
        out = []
        buffer = self._buffer
        while True:
            if self._remaining:
                piece = buffer[: self._remaining]
                out.append(piece)
                self._remaining -= len(piece)
                buffer = buffer[len(piece) :]
                if self._remaining:
                    break
                self._in_chunk_trailer = True
            if self._in_chunk_trailer:
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                buffer = buffer[2:]
                self._in_chunk_trailer = False
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > 1024:
                    raise ValueError("chunk size line too long")
                break
            size = int(buffer[:line_end].split(b";", 1)[0], 16)
            buffer = buffer[line_end + 2 :]
            if size == 0:
                self.complete = True  # trailers, if any, are not needed
                buffer = b""
                break
            self._remaining = size
        self._buffer = buffer
        return b"".join(out)
