"""The worker→web event wire: every event survives a round trip; tokens keep their exact text."""

from __future__ import annotations

import json

import pytest

from common.events import (
    Done,
    Failed,
    Ping,
    Started,
    Tokens,
    decode,
    encode,
    encode_tokens,
    job_key,
    join_batch,
    sequence_of,
    sequenced,
    split_batch,
)

JOB = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "event",
    [
        Started("host.gpu0.12", "gpu0"),
        Ping(),
        Done("length", 25, 112, load_ms=1.5, eval_ms=900.0),
        Failed("Ollama at http://x is busy", 500, "busy"),
        Failed("bad", 400, "rejected"),
    ],
)
def test_events_round_trip(event: object) -> None:
    assert decode(encode(JOB, event)) == (JOB, event)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["Once", " upon", "", 'say "hi"\n', "a|b|c", "日本語 🎉", "\\", "\u2028"])
def test_tokens_keep_their_exact_text(text: str) -> None:
    message = encode_tokens(JOB, json.dumps(text, ensure_ascii=False), 3)
    job_id, event = decode(message)
    assert job_id == JOB and job_key(message) == JOB.encode()
    assert b"\n" not in message
    assert isinstance(event, Tokens)
    assert event.text == text and event.count == 3


@pytest.mark.parametrize("raw", [b"", b"nojob", JOB.encode() + b"|", JOB.encode() + b"|x{}", JOB.encode() + b"|t3"])
def test_malformed_messages_raise_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode(raw)


def test_a_batch_splits_back_into_its_messages() -> None:
    messages = [encode(JOB, Started("w", "gpu0")), encode_tokens(JOB, json.dumps("a\nb"), 1), encode(JOB, Ping())]
    assert split_batch(join_batch(messages)) == messages
    assert all(b"\n" not in m for m in messages)


def test_numbered_messages_keep_their_event_and_give_their_number() -> None:
    plain = encode_tokens(JOB, '"hi|there"', 2)
    numbered = sequenced(plain, 42)
    assert numbered == f'{JOB}|42|t2|"hi|there"'.encode()
    assert sequence_of(numbered) == 42 and sequence_of(plain) is None
    assert decode(numbered) == decode(plain) == (JOB, Tokens('"hi|there"', 2))
    assert job_key(numbered) == JOB.encode()
    assert sequence_of(encode(JOB, Ping())) is None
