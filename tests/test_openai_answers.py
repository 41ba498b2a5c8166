"""OpenAI's shapes, as pure functions: chunks, whole answers and errors, validated against OpenAI's OpenAPI."""

from __future__ import annotations

import json

import pytest

from common.errors import BadRequest, CapacityError, QueueUnavailable, RunnerError, Unauthorized
from common.events import Done, Failed, Tokens, ToolCalls
from common.settings import Settings
from tests.client import free_redis_url
from tests.openai_client import check_stream
from tests.openai_contract import validate
from web.app import build_app
from web.openai_errors import runner_error_response
from web.openai_request import ModelNotFound
from web.openai_wire import OpenAIAnswer, merge_tool_calls
from web.routes import UnknownPrefix

APP = build_app(Settings(redis_url=free_redis_url()))
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct"
CALLS = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}},
         {"index": 1, "id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
         {"index": 0, "function": {"arguments": '{"a": '}}, {"index": 0, "function": {"arguments": "1}"}}]  # fmt: skip


def tokens(text: str) -> Tokens:
    return Tokens(json.dumps(text), 1)


def test_a_stream_as_openai_sends_it() -> None:
    answer = OpenAIAnswer("m", include_usage=True)
    body = answer.content(tokens("Hel"), 1) + answer.content(tokens('lo "x"\n'), 2) + answer.end(Done("stop", 5, 2), 2)
    chunks = check_stream(body)
    assert [c["choices"][0]["delta"] for c in chunks[:3]] == [  # type: ignore[index]
        {"role": "assistant", "content": "Hel"}, {"content": 'lo "x"\n'}, {}]  # fmt: skip
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert chunks[3] == {"id": answer.id, "object": "chat.completion.chunk", "created": answer.created, "model": "m",
                         "choices": [], "usage": usage}  # fmt: skip


def test_an_empty_answer_still_says_its_role_and_tool_calls_end_with_tool_calls() -> None:
    empty = check_stream(OpenAIAnswer("m", include_usage=False).end(Done("length", 3, 0), 0))
    assert empty[0]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},  # type: ignore[index]
                                    "finish_reason": "length"}]  # fmt: skip
    answer = OpenAIAnswer("m", include_usage=False)
    chunks = check_stream(answer.tool_calls(ToolCalls(json.dumps(CALLS[:2]))) + answer.end(Done("stop", 1, 9), 0))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None, "tool_calls": CALLS[:2]}  # type: ignore[index]
    assert chunks[1]["choices"][0]["finish_reason"] == "tool_calls"  # type: ignore[index]


def test_a_failure_mid_stream_is_vllms_error_event_then_done() -> None:
    answer = OpenAIAnswer("m", include_usage=True)
    chunks = check_stream(answer.content(tokens("a"), 1) + answer.broken(Failed("engine died", 500, "x"), 1))
    assert chunks[-1] == {"error": {"message": "engine died", "type": "server_error", "param": None, "code": None}}
    again = OpenAIAnswer("m", include_usage=True)
    interrupted = check_stream(again.content(tokens("b"), 1) + again.end(Done("error", 0, 1), 1))
    assert "interrupted" in interrupted[-1]["error"]["message"]  # type: ignore[index]
    assert answer.unfinished(Done("error", 0, 2)) is not None and answer.unfinished(Done("stop", 0, 2)) is None


def test_whole_answers() -> None:
    answer = OpenAIAnswer("m", include_usage=False)
    whole = answer.answer("hello", [], Done("stop", 3, 1))
    validate("CreateChatCompletionResponse", whole)
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": "hello", "refusal": None}
    called = answer.answer("", CALLS, Done("stop", 3, 9))
    validate("CreateChatCompletionResponse", called)
    assert called["choices"][0]["finish_reason"] == "tool_calls" and called["choices"][0]["message"]["content"] is None
    assert merge_tool_calls(CALLS) == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]


@pytest.mark.parametrize(
    ("error", "status", "code", "param", "retry_after"),
    [
        (BadRequest("bad", reason="prompt_too_long"), 400, "context_length_exceeded", "messages", None),
        (BadRequest("bad"), 400, None, None, None),
        (Unauthorized("no"), 401, "invalid_api_key", None, None),
        (ModelNotFound("no"), 404, "model_not_found", "model", None),
        (UnknownPrefix("no"), 404, "model_not_found", "model", None),
        (CapacityError("full", reason="queue_full"), 429, "rate_limit_exceeded", None, "1"),
        (CapacityError("waited", reason="queue_timeout"), 429, "rate_limit_exceeded", None, "1"),
        (CapacityError("busy", reason="busy"), 429, "rate_limit_exceeded", None, "1"),
        (CapacityError("nobody", reason="no_worker"), 503, None, None, "5"),
        (CapacityError("bye", reason="shutdown"), 503, None, None, "5"),
        (QueueUnavailable("redis"), 503, None, None, "5"),
        (RunnerError("boom", reason="ollama_error"), 500, None, None, None),
    ],
)
def test_errors_as_openais_sdks_read_them(error: RunnerError, status: int, code: str | None, param: str | None,
                                          retry_after: str | None) -> None:  # fmt: skip
    with APP.test_request_context():
        response = runner_error_response(error)
    body = response.get_json()
    validate("ErrorResponse", body)
    assert response.status_code == status and response.headers.get("Retry-After") == retry_after
    assert (body["error"]["code"], body["error"]["param"]) == (code, param)
    kinds = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error", 429: "requests"}
    assert body["error"]["type"] == kinds.get(status, "server_error")


def test_http_refusals_on_v1_are_openai_shaped_and_on_llm_unchanged() -> None:
    web = APP.test_client()
    for method, path, status in (("GET", "/v1/chat/completions", 405), ("POST", "/v1/embeddings", 404),
                                 ("GET", f"/{MODEL}/v1/chat/completions", 405)):  # fmt: skip
        response = web.open(path, method=method)
        assert response.status_code == status, path
        validate("ErrorResponse", response.get_json())
    too_big = web.post("/v1/chat/completions", data=b"x" * (APP.config["MAX_CONTENT_LENGTH"] + 1))
    assert too_big.status_code == 413 and too_big.get_json()["error"]["type"] == "invalid_request_error"
    assert web.get("/llm").get_json() == {"detail": {"msg": "The method is not allowed for the requested URL."}}
    unknown = web.get("/no/such-model/v1/models")
    assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "model_not_found"
