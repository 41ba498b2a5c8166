"""OpenAI's own Python SDK as the test client, with every answer it reads kept and checked.

A recording transport under the SDK's HTTP client keeps each answer's bytes as the SDK reads them
(a stream's too, however far the SDK read it); `check_all` validates each against OpenAI's
published OpenAPI document (tests/openai_contract.py) and the streaming rules the schema cannot
say: `[DONE]` last, `delta.role` in the first choice chunk only, `finish_reason` null until the
last choice chunk, the usage chunk (empty `choices`) after it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx2
from openai import OpenAI

from tests.openai_contract import CHUNK, ERROR, validate


@dataclass
class Recorded:
    """One answer the SDK got: request path, status, content type, and the bytes it read."""

    method: str
    path: str
    status: int
    content_type: str
    body: bytearray = field(default_factory=bytearray)


class _Tee(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, sink: bytearray) -> None:
        self.inner, self.sink = inner, sink

    def __iter__(self) -> Iterator[bytes]:
        for part in self.inner:
            self.sink += part
            yield part

    def close(self) -> None:
        self.inner.close()


class RecordingTransport(httpx2.BaseTransport):
    """httpx2's own transport, keeping what each answer carried."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.answers: list[Recorded] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send `request`; the answer's body is recorded as it is read."""
        response = self.inner.handle_request(request)
        record = Recorded(request.method, request.url.path, response.status_code,
                          response.headers.get("content-type", ""))  # fmt: skip
        self.answers.append(record)
        assert isinstance(response.stream, httpx2.SyncByteStream)
        tee = _Tee(response.stream, record.body)
        return httpx2.Response(response.status_code, headers=response.headers, stream=tee,
                               extensions=response.extensions)  # fmt: skip

    def close(self) -> None:
        """Close the pool."""
        self.inner.close()


def client(base_url: str, api_key: str, transport: RecordingTransport, *, max_retries: int = 0) -> OpenAI:
    """An SDK client on `transport`; no retries unless asked (a test says what it expects)."""
    http = httpx2.Client(transport=transport, timeout=60.0)
    return OpenAI(base_url=base_url, api_key=api_key, http_client=http, max_retries=max_retries)


def sse_events(body: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    events = []
    for block in body.decode().split("\n\n"):
        data = [line[len("data: ") :] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            events.append("\n".join(data))
    return events


def check_stream(body: bytes, *, complete: bool = True) -> list[dict[str, object]]:
    """Validate a streamed answer; its decoded chunks. `complete`: the SDK read it to the end."""
    events = sse_events(body)
    if complete:
        assert events and events[-1] == "[DONE]", events[-3:]
        assert events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    choice_chunks = [c for c in chunks if "error" not in c and c["choices"]]
    for i, chunk in enumerate(chunks):
        if "error" in chunk:
            validate(ERROR, chunk)
            assert i == len(chunks) - 1, "an error event ends the stream"
            continue
        validate(CHUNK, chunk)
    for i, chunk in enumerate(choice_chunks):
        choice = chunk["choices"][0]  # type: ignore[index]
        assert ("role" in choice["delta"]) == (i == 0), f"role in chunk {i}"
        last = i == len(choice_chunks) - 1 and complete and "error" not in chunks[-1]
        assert (choice["finish_reason"] is not None) == last, f"finish_reason in chunk {i}"
    usage_chunks = [c for c in chunks if "error" not in c and not c["choices"]]
    if usage_chunks:
        assert chunks[-1] is usage_chunks[-1] and len(usage_chunks) == 1, "one usage chunk, the last"
    assert len({(c.get("id"), c.get("created")) for c in chunks if "error" not in c}) <= 1, "one id and time"
    return chunks


def check_all(answers: list[Recorded]) -> int:
    """Validate every recorded answer against OpenAI's published schemas; how many were checked
    (the SDK drops unread the body of an answer it is about to retry)."""
    checked = 0
    for answer in answers:
        if not answer.body and answer.status >= 400:
            continue
        checked += 1
        if answer.content_type.startswith("text/event-stream"):
            check_stream(bytes(answer.body), complete=answer.body.endswith(b"data: [DONE]\n\n"))
            continue
        assert answer.content_type.startswith("application/json"), answer
        obj = json.loads(answer.body)
        if answer.status >= 400:
            validate(ERROR, obj)
        elif answer.path.endswith("/chat/completions"):
            validate("CreateChatCompletionResponse", obj)
        elif answer.path.endswith("/models"):
            validate("ListModelsResponse", obj)
        else:
            validate("Model", obj)
    return checked
