"""The worker's HTTP/1.1 response parser, fed the way a socket delivers: any split, byte by byte."""

from __future__ import annotations

import pytest

from worker.http1 import ResponseParser

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nDate: Mon, 01 Jan 2025 00:00:00 GMT\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
    b'6\r\n{"a":1\r\n2\r\n}\n\r\n1b;ext=1\r\n{"message":{"content":"x"}}\r\n0\r\n\r\n'
)
BODY = b'{"a":1}\n{"message":{"content":"x"}}'


def feed_in_pieces(raw: bytes, size: int) -> tuple[ResponseParser, bytes]:
    parser = ResponseParser()
    body = b"".join(parser.feed(raw[i : i + size]) for i in range(0, len(raw), size))
    return parser, body


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 4096])
def test_chunked_body_survives_any_split(size: int) -> None:
    parser, body = feed_in_pieces(CHUNKED, size)
    assert parser.status == 200 and parser.complete
    assert parser.headers["content-type"] == "application/x-ndjson"
    assert body == BODY


@pytest.mark.parametrize("size", [1, 4, 4096])
def test_content_length_body(size: int) -> None:
    raw = b'HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 29\r\n\r\n{"error":"model \'x\' not found"}'
    parser, body = feed_in_pieces(raw, size)
    assert parser.status == 404 and parser.complete and body == b'{"error":"model \'x\' not found"}'[:29]


def test_an_empty_403_is_complete_at_once() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n") == b""
    assert parser.status == 403 and parser.complete


def test_head_without_the_body_yet_is_incomplete() -> None:
    parser = ResponseParser()
    assert parser.feed(CHUNKED[:120]) == b"" and parser.status == 200 and not parser.complete


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
    ],
)
def test_garbage_raises_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        ResponseParser().feed(raw)
