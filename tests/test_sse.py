"""SSE framing as go-livepeer reads it, and answers that validate against the published OpenAPI."""

from __future__ import annotations

import json

from tests.contract import validate
from tests.golivepeer import read_stream
from web.sse import DONE_LINE, Completion

C = Completion("chatcmpl-1", "meta-llama/Meta-Llama-3.1-8B-Instruct", 1735689600)


def lines(*events: bytes) -> list[bytes]:
    return b"".join(events).split(b"\n")


def test_a_stream_reads_as_go_livepeer_reads_it() -> None:
    body = lines(
        C.content_chunk(json.dumps("Once"), 1),
        C.content_chunk(json.dumps(' upon "a"\n'), 2),
        C.final_chunk("stop", 25, 2),
        DONE_LINE,
    )
    result = read_stream(body)
    assert result.text == 'Once upon "a"\n'
    assert result.finish_reason == "stop"
    assert result.usage == {"prompt_tokens": 25, "completion_tokens": 2, "total_tokens": 27}
    assert result.saw_done_marker
    assert all(chunk["id"] == "chatcmpl-1" and chunk["created"] == 1735689600 for chunk in result.chunks)


def test_each_event_is_one_data_line_followed_by_a_blank_line() -> None:
    chunk = C.content_chunk(json.dumps("a\nb"), 1)
    assert chunk.startswith(b"data: {") and chunk.endswith(b"}\n\n") and chunk.count(b"\n") == 2


def test_content_chunks_have_empty_finish_reason_and_running_usage() -> None:
    chunk = json.loads(C.content_chunk(json.dumps("x"), 7)[len(b"data: ") :])
    assert chunk["choices"] == [{"index": 0, "finish_reason": "", "delta": {"role": "assistant", "content": "x"}}]
    assert chunk["usage"] == {"prompt_tokens": 0, "completion_tokens": 7, "total_tokens": 7}
    validate("LLMResponse", chunk)


def test_final_chunk_and_answer_validate_against_the_contract() -> None:
    final = json.loads(C.final_chunk("length", 3, 4)[len(b"data: ") :])
    assert final["choices"][0]["finish_reason"] == "length"
    validate("LLMResponse", final)
    answer = C.answer("hello", "stop", 3, 4)
    validate("LLMResponse", answer)
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert answer["usage"]["total_tokens"] == 7


def test_new_completions_have_unique_ids() -> None:
    assert Completion.new("m").id != Completion.new("m").id
