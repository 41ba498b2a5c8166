"""The worker→web event wire: what a worker publishes about a job, encoded compactly.

A message is `<job id>|<kind><body>`; several travel in one pub/sub payload, a line each (JSON
escapes newlines, so no message holds one). Tokens travel with their text already JSON-encoded,
so the web pastes it into an SSE chunk without decoding it again.

Every event but a ping is numbered per job when it is published (`<job id>|<seq>|<kind><body>`,
seq 1, 2, ...) and also appended to the job's backlog, a Redis stream whose entry ids are the
sequence numbers: a reader that sees a gap, or lost its subscription, replays exactly what it
missed from the backlog, and drops what it already has.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

_SEP = b"|"
BATCH_SEPARATOR = b"\n"
_STARTED, _TOKENS, _PING, _DONE, _FAILED, _TOOL_CALLS = b"s", b"t", b"p", b"d", b"e", b"c"
# A worker pings each job it runs this often (worker.heartbeat); the web reads a longer silence
# as a sign the worker may be gone (web.deadlines).
PING_S = 1.0


@dataclass(frozen=True, slots=True)
class Started:
    """A worker took the job; from now on it sends an event at least every ping interval."""

    worker: str
    gpu: str


@dataclass(frozen=True, slots=True)
class Tokens:
    """One or a few tokens of generated text; `text_json` is the text as a JSON string literal."""

    text_json: str
    count: int

    @property
    def text(self) -> str:
        """The generated text itself."""
        text: str = json.loads(self.text_json)
        return text


@dataclass(frozen=True, slots=True)
class ToolCalls:
    """Tool calls the model made (OpenAI API only): `calls_json` is a JSON list of OpenAI's streamed
    tool-call deltas (`index`, then `id`, `type` and `function.name` on a call's first delta, and
    `function.arguments`, whole or in pieces), pasted as they are into the client's chunk."""

    calls_json: str


@dataclass(frozen=True, slots=True)
class Ping:
    """The worker is alive and still on the job (model loading, or between slow tokens)."""


@dataclass(frozen=True, slots=True)
class Done:
    """The job finished: why, and the token counts Ollama reported."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    load_ms: float = 0.0
    eval_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Failed:
    """The job failed; `status` is the HTTP status to answer if nothing was streamed yet."""

    msg: str
    status: int = 500
    reason: str = "backend"


Event = Started | Tokens | ToolCalls | Ping | Done | Failed
TERMINAL = (Done, Failed)


def encode_tokens(job_id: str, text_json: str, count: int) -> bytes:
    """Encode a Tokens event (the hot path: one call per relayed batch of tokens)."""
    return f"{job_id}|t{count}|{text_json}".encode()


def encode(job_id: str, event: Event) -> bytes:
    """Encode any event for `job_id`."""
    if isinstance(event, Tokens):
        return encode_tokens(job_id, event.text_json, event.count)
    if isinstance(event, Ping):
        return f"{job_id}|p".encode()
    if isinstance(event, ToolCalls):
        return f"{job_id}|c{event.calls_json}".encode()
    kind = {Started: "s", Done: "d", Failed: "e"}[type(event)]
    return f"{job_id}|{kind}{json.dumps(asdict(event), separators=(',', ':'))}".encode()


def sequenced(message: bytes, seq: int) -> bytes:
    """`message` numbered `seq` within its job (the form published and kept in the backlog)."""
    job_id, _, rest = message.partition(_SEP)
    return b"%s|%d|%s" % (job_id, seq, rest)


def sequence_of(message: bytes) -> int | None:
    """The sequence number of a message, or None for an unnumbered one (a ping)."""
    rest = message.partition(_SEP)[2]
    seq, sep, _ = rest.partition(_SEP)
    if sep and seq.isdigit():
        return int(seq)
    return None


def job_key(message: bytes) -> bytes:
    """The job id a message is about, as bytes, without decoding the rest (for routing)."""
    return message.partition(_SEP)[0]


def join_batch(messages: list[bytes]) -> bytes:
    """Several messages as one pub/sub payload (no encoded event contains a newline)."""
    return BATCH_SEPARATOR.join(messages)


def split_batch(payload: bytes) -> list[bytes]:
    """The messages of one pub/sub payload."""
    return payload.split(BATCH_SEPARATOR)


def decode(message: bytes) -> tuple[str, Event]:
    """Decode a message into (job id, event); raises ValueError on anything malformed."""
    job_id, sep, rest = message.partition(_SEP)
    if not sep or not rest:
        raise ValueError(f"not an event message: {message[:80]!r}")
    if rest[:1].isdigit():  # numbered: skip the sequence number
        rest = rest.partition(_SEP)[2]
        if not rest:
            raise ValueError(f"not an event message: {message[:80]!r}")
    kind, body = rest[:1], rest[1:]
    if kind == _TOKENS:
        count, sep, text_json = body.partition(_SEP)
        if not sep:
            raise ValueError(f"malformed tokens event: {message[:80]!r}")
        return job_id.decode(), Tokens(text_json.decode(), int(count))
    if kind == _PING:
        return job_id.decode(), Ping()
    if kind == _TOOL_CALLS:
        if not isinstance(json.loads(body), list):
            raise ValueError(f"malformed tool calls event: {message[:80]!r}")
        return job_id.decode(), ToolCalls(body.decode())
    cls = {_STARTED: Started, _DONE: Done, _FAILED: Failed}.get(kind)
    if cls is None:
        raise ValueError(f"unknown event kind {kind!r}")
    fields = json.loads(body)
    if not isinstance(fields, dict):
        raise ValueError(f"malformed event body: {message[:80]!r}")
    return job_id.decode(), cls(**fields)
