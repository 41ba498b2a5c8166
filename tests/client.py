"""HTTP helpers for tests: one connection per call, closed after, so servers stop promptly.

Redirects are never followed and fail the test: go-livepeer's client must get its answer from
the URL it called (a 308 costs it a second round trip, or the job).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import requests

CLOSE = {"Connection": "close"}


def call(method: str, url: str, *, token: str | None = None, timeout: float = 30.0, **kwargs: Any) -> requests.Response:
    """A whole request/response on a fresh connection."""
    headers = {**CLOSE, **kwargs.pop("headers", {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    with requests.Session() as session:
        response = session.request(method, url, headers=headers, timeout=timeout, allow_redirects=False, **kwargs)
        response.content  # noqa: B018 - read it all before the session closes
        assert_not_redirected(response)
        return response


def assert_not_redirected(response: requests.Response) -> None:
    """Fail on any 3xx: every documented route must answer directly."""
    assert not 300 <= response.status_code < 400, (
        f"{response.request.method} {response.url} answered {response.status_code} "
        f"(Location: {response.headers.get('Location')})"
    )


def free_redis_url() -> str:
    """A Redis URL on a port nobody listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Lines as go-livepeer's scanner sees them: split on \\n, a trailing \\r dropped."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.removesuffix(b"\r")
    if pending:
        yield pending


def stream(
    url: str, body: dict[str, Any], *, token: str | None = None, timeout: float = 30.0
) -> tuple[requests.Response, list[bytes]]:
    """POST a streaming request and read every line of the answer."""
    headers = dict(CLOSE)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    with (
        requests.Session() as session,
        session.post(url, json=body, headers=headers, stream=True, timeout=timeout, allow_redirects=False) as response,
    ):
        assert_not_redirected(response)
        lines = list(split_lines(response.iter_content(chunk_size=None)))
    return response, lines
