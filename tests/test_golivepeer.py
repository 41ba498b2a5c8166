"""The go-livepeer model itself: each rule as go-livepeer's source has it (see tests/golivepeer.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.golivepeer import (
    EMPTY,
    MAX_TOKEN_SIZE,
    RETRIED,
    SERVED,
    SUSPENDED,
    GoCrash,
    advertised_version,
    decode_llm_response,
    non_streaming_verdict,
    read_body,
    read_stream,
    route_url,
    streaming_verdict,
    version_compatible,
)


def chunk(content: Any = "hi", finish: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "model": "m", "created": 1735689600,
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        "choices": [{"index": 0, "finish_reason": finish, "delta": {"role": "assistant", "content": content}}],
        **extra,
    }  # fmt: skip


def line(value: Any) -> bytes:
    return b"data: " + json.dumps(value).encode()


@pytest.mark.parametrize(
    ("entry", "operation", "expected"),
    [
        ("http://web:8000", "llm", "http://web:8000/llm"),
        ("http://web:8000/", "llm", "http://web:8000/llm"),
        ("http://web:8000/org/model", "llm", "http://web:8000/org/model/llm"),
        ("http://web:8000/org/model/", "hardware/info", "http://web:8000/org/model/hardware/info"),
    ],
)
def test_routes_resolve_against_the_entry_url_with_a_slash_added(entry: str, operation: str, expected: str) -> None:
    assert route_url(entry, operation) == expected


@pytest.mark.parametrize(
    "bad",
    [
        chunk(created=1735689600.5),  # float into int
        chunk(created=1.0),  # even a whole float literal
        chunk(content=5),  # number into string
        chunk(usage="12"),  # string into struct
        chunk(usage={"prompt_tokens": "1"}),
        {**chunk(), "choices": {"0": {}}},  # object into slice
        chunk(created=2**63),  # overflows int64
    ],
)
def test_type_mismatches_make_go_drop_the_chunk(bad: dict[str, Any]) -> None:
    assert decode_llm_response(json.dumps(bad).encode()) is None
    result = read_stream([line(bad), line(chunk("ok", "stop"))])
    assert result.text == "ok" and result.skipped == [line(bad)]


def test_go_decodes_leniently_where_go_does() -> None:
    decoded = decode_llm_response(b'{"Choices":[{"Delta":{"Content":"x"}}],"extra":[1],"created":null}')
    assert decoded is not None
    assert decoded["choices"][0]["delta"] == {"content": "x"} and decoded["created"] == 0
    assert decode_llm_response(b'{"created": NaN}') is None


def test_lines_without_the_data_prefix_are_decoded_too() -> None:
    result = read_stream([json.dumps(chunk("bare ")).encode(), b"event: ignored", line(chunk("end", "stop"))])
    assert result.text == "bare end" and result.finish_reason == "stop"
    assert result.skipped == [b"event: ignored"]


def test_a_chunk_without_choices_crashes_go_livepeer() -> None:
    for bad in ({"error": "boom"}, {**chunk(), "choices": []}, None):
        with pytest.raises(GoCrash):
            read_stream([line(bad)])


def test_reading_stops_at_the_first_finish_reason_and_keeps_the_last_usage() -> None:
    final = chunk("", "length", usage={"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12})
    result = read_stream([line(chunk("a")), line(final), line(chunk("late")), b"data: [DONE]"])
    assert (result.text, result.finish_reason, result.saw_done_marker) == ("a", "length", True)
    assert result.usage == {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}


def test_the_scanner_limit_counts_the_newline() -> None:
    fits = b"x" * (MAX_TOKEN_SIZE - 1)
    assert read_body(fits + b"\n" + line(chunk("a", "stop")) + b"\n").finish_reason == "stop"
    with pytest.raises(GoCrash):
        read_body(fits + b"x\n")
    with pytest.raises(GoCrash):
        read_stream([fits + b"x"])
    with pytest.raises(GoCrash):  # \r\n: the \r is part of the token too
        read_body(fits + b"\r\n")


@pytest.mark.parametrize(
    ("status", "content_type", "body", "outcome", "says"),
    [
        (500, "application/json", b'{"detail":{"msg":"insufficient capacity: queue full"}}', RETRIED, "queue full"),
        (500, "application/json", b'{"detail":{"msg":"Insufficient Capacity"}}', RETRIED, "Insufficient"),
        (500, "application/json", b'{"detail":{"msg":"runner at capacity"}}', SUSPENDED, "at capacity"),
        (400, "application/json", b'{"detail":{"msg":"bad model"}}', SUSPENDED, "returned 400: bad model"),
        (401, "application/json", b'{"detail":{"msg":"token"}}', SUSPENDED, "returned 401"),
        (500, "text/plain", b"insufficient capacity", EMPTY, ""),
        (503, "application/json", b'{"detail":{"msg":"insufficient capacity"}}', EMPTY, ""),
        (422, "application/json", b'{"detail":[]}', EMPTY, ""),
        (404, "application/json", b'{"detail":{"msg":"x"}}', EMPTY, ""),
        (308, "text/html", b"<a>Redirecting</a>", EMPTY, ""),
        (500, "application/json", b'{"detail":"flat"}', SUSPENDED, "cannot unmarshal"),
        (200, "application/json", json.dumps(chunk(created=1.5)).encode(), SUSPENDED, "cannot unmarshal"),
    ],
)
def test_the_non_streaming_status_table(status: int, content_type: str, body: bytes, outcome: str, says: str) -> None:
    verdict = non_streaming_verdict(status, content_type, body)
    assert verdict.outcome == outcome
    assert says in verdict.error


def test_a_400_is_passed_to_the_user_and_a_200_is_served() -> None:
    assert non_streaming_verdict(400, "application/json", b'{"detail":{"msg":"bad"}}').bad_request == ": bad"
    served = non_streaming_verdict(200, "application/json; charset=utf-8", json.dumps(chunk("x", "stop")).encode())
    assert served.outcome == SERVED and served.response is not None


@pytest.mark.parametrize("status", [400, 401, 404, 422, 500, 503])
def test_any_non_200_to_a_stream_suspends_whatever_its_body_says(status: int) -> None:
    verdict = streaming_verdict(status)
    assert verdict is not None and verdict.outcome == SUSPENDED
    assert verdict.error.endswith(f"unexpected status code: {status}\n")
    assert streaming_verdict(200) is None


def test_only_a_version_with_the_entry_model_id_is_advertised() -> None:
    answers = [
        {"pipeline": "llm", "model_id": "a/one", "version": "0.3.0"},
        {"pipeline": "llm", "model_id": "a/two", "version": "0.1.0"},
        {"pipeline": "llm", "model_id": "a/one", "version": "not-a-version"},
    ]
    assert advertised_version(answers, "llm", "a/one") == "0.3.0"
    assert advertised_version(answers, "llm", "a/three") == ""


@pytest.mark.parametrize(
    ("minimum", "version", "ok"),
    [("", "", True), ("0.2.0", "", False), ("0.2.0", "undefined", False), ("0.2.0", "0.2.0", True),
     ("0.2.0", "0.2.0-dev", True), ("0.2.0", "0.1.9", False), ("0.2.0", "v1", True), ("0.2.0", "x", False),
     ("junk", "0.0.1", True)],
)  # fmt: skip
def test_minimum_runner_versions_compare_as_semver(minimum: str, version: str, ok: bool) -> None:
    assert version_compatible(minimum, version) is ok
