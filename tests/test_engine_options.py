"""The OpenAI API's options on the worker's wires: the job payload, the event, each engine's request and answer."""

from __future__ import annotations

import json
from typing import Any

from common.events import ToolCalls, decode, encode
from common.jobs import GenerateJob
from worker.ollama_openai import ollama_format, ollama_messages
from worker.ollama_wire import Final, parse_lines
from worker.ollama_wire import chat_body as ollama_body
from worker.openai_wire import SseParser, error_for_status
from worker.openai_wire import chat_body as openai_body
from worker.provision import ollama_features

BASE = dict(reply_to="c", model_id="m", tag="llama3.1:8b", messages=[{"role": "user", "content": "hi"}],
            max_tokens=5, temperature=0.7, top_p=1.0, top_k=-1, stream=True)  # fmt: skip
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def job(**options: Any) -> GenerateJob:
    return GenerateJob(**BASE, **options)  # type: ignore[arg-type]


def test_a_payload_leaves_unset_options_out_so_either_side_may_be_older() -> None:
    assert job().to_payload() == BASE  # what /llm jobs always were
    full = job(stop=["x"], seed=1, response_format={"type": "json_object"}, tools=[TOOL], tool_choice="auto")
    assert GenerateJob.from_payload(full.to_payload()) == full
    assert GenerateJob.from_payload(dict(BASE)) == job()


def test_tool_calls_travel_as_one_event() -> None:
    calls = json.dumps([{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}])
    assert decode(encode("job1", ToolCalls(calls))) == ("job1", ToolCalls(calls))


def test_ollama_gets_options_as_its_own_openai_layer_maps_them() -> None:
    body = json.loads(ollama_body(job(stop=["END"], seed=9, response_format={"type": "json_object"}, tools=[TOOL]),
                                  num_ctx=4096, keep_alive=-1))  # fmt: skip
    assert (body["options"]["stop"], body["options"]["seed"], body["format"], body["tools"]) == (["END"], 9, "json",
                                                                                                [TOOL])  # fmt: skip
    plain = json.loads(ollama_body(job(), num_ctx=4096, keep_alive=-1))
    assert not {"format", "tools"} & set(plain) and not {"stop", "seed"} & set(plain["options"])
    assert "tools" not in json.loads(ollama_body(job(tools=[TOOL], tool_choice="none"), num_ctx=4096, keep_alive=-1))
    schema = {"type": "object", "properties": {}}
    assert ollama_format({"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}) == schema
    assert ollama_format({"type": "json_schema", "json_schema": {"name": "n"}}) == "json"


def test_tool_turns_in_ollamas_form() -> None:
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
                {"role": "tool", "content": "42", "tool_call_id": "call_1"}]  # fmt: skip
    assert ollama_messages(messages) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "function": {"name": "f",
                                                                                          "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "42", "tool_call_id": "call_1", "tool_name": "f"},
    ]  # fmt: skip
    plain = [{"role": "user", "content": "hi"}]
    assert ollama_messages(plain) is plain


def test_ollamas_tool_calls_become_openais_deltas() -> None:
    line = {"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_ab12cd34", "function": {"index": 0, "name": "f", "arguments": {"city": "Paris"}}}]},
        "done": False}  # fmt: skip
    parsed = parse_lines([json.dumps(line).encode()])
    function = {"name": "f", "arguments": '{"city": "Paris"}'}
    assert parsed.texts == [] and parsed.tool_calls == [
        {"index": 0, "id": "call_ab12cd34", "type": "function", "function": function}
    ]


def test_ollama_takes_tools_only_where_show_lists_the_capability() -> None:
    assert ollama_features(["completion", "tools"]) == ["tools", "response_format"]
    assert ollama_features(["completion"]) == ollama_features(None) == ["response_format"]


def test_openai_engines_get_the_options_as_sent() -> None:
    choice = {"type": "function", "function": {"name": "f"}}
    body = json.loads(openai_body(job(stop=["x"], seed=2, tools=[TOOL], tool_choice=choice,
                                      response_format={"type": "json_object"}), "served", max_tokens=5))  # fmt: skip
    assert (body["stop"], body["seed"], body["tools"], body["tool_choice"]) == (["x"], 2, [TOOL], choice)
    assert body["response_format"] == {"type": "json_object"}
    assert not {"stop", "seed", "tools", "tool_choice", "response_format"} & set(json.loads(
        openai_body(job(), "served", max_tokens=5)))  # fmt: skip


def _sse(*chunks: dict[str, Any]) -> list[bytes]:
    return [b"data: " + json.dumps(c).encode() for c in chunks] + [b"data: [DONE]"]


def test_repeated_ids_and_names_of_streamed_tool_calls_are_sent_once() -> None:
    def delta(arguments: str) -> dict[str, Any]:  # as llama-cpp-python streams a named tool call
        call = {"index": 0, "id": "call__0_f_x", "type": "function", "function": {"name": "f", "arguments": arguments}}
        return {"choices": [{"index": 0, "delta": {"role": None, "content": None, "tool_calls": [call]}}]}

    parser = SseParser()
    parsed = parser.feed(_sse(delta('{"a"'), delta(": 1}"), {"choices": [{"index": 0, "delta": {},
                                                                         "finish_reason": "tool_calls"}]}))  # fmt: skip
    assert parsed.tool_calls == [
        {"index": 0, "id": "call__0_f_x", "type": "function", "function": {"name": "f", "arguments": '{"a"'}},
        {"index": 0, "function": {"arguments": ": 1}"}},
    ]
    assert parsed.final is not None and parsed.final.finish_reason == "tool_calls" and parsed.final.eval_count == 2
    assert Final("stop", 0, 0, 0, 0).finish_reason == "stop" and Final("abc", 0, 0, 0, 0).finish_reason == "stop"


def test_a_prompt_the_engine_cannot_fit_is_named_so() -> None:
    message = "This model's maximum context length is 2048 tokens. However, you requested 3000"
    body = {"error": {"message": message, "type": "invalid_request_error", "param": "messages",
                      "code": "context_length_exceeded"}}  # fmt: skip
    error = error_for_status(400, json.dumps(body).encode(), served="s", url="u")
    assert (error.status, error.reason) == (400, "prompt_too_long")
    other = error_for_status(400, b'{"error": {"message": "bad tool"}}', served="s", url="u")
    assert (other.status, other.reason) == (400, "rejected")
