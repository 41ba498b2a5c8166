"""Ollama's /api/chat wire: the request we send, the lines we parse, the errors we map."""

from __future__ import annotations

import json

import pytest

from common.jobs import GenerateJob
from worker.ollama_wire import Final, chat_body, error_for_status, load_body, parse_lines, think_value

JOB = GenerateJob(
    reply_to="ch", model_id="meta-llama/Meta-Llama-3.1-8B-Instruct", tag="llama3.1:8b",
    messages=[{"role": "user", "content": "Hi"}], max_tokens=64, temperature=0.2, top_p=0.9, top_k=-1, stream=True,
)  # fmt: skip


def test_the_request_maps_every_field_streams_without_thinking_and_never_cuts_the_prompt() -> None:
    body = json.loads(chat_body(JOB, num_ctx=4096, keep_alive=-1))
    assert body == {
        "model": "llama3.1:8b",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "think": False,
        "truncate": False,
        "shift": False,
        "keep_alive": -1,
        "options": {"num_predict": 64, "temperature": 0.2, "top_p": 0.9, "top_k": 0, "num_ctx": 4096},
    }


def test_preload_and_jobs_agree_on_shift_so_a_job_never_reloads_the_model() -> None:
    job = json.loads(chat_body(JOB, num_ctx=4096, keep_alive=-1))
    load = load_body("llama3.1:8b", num_ctx=4096, keep_alive=-1)
    assert (load["shift"], load["options"]["num_ctx"], load["messages"]) == (job["shift"], 4096, [])


def test_top_k_disabled_is_sent_as_zero_not_omitted_and_keep_alive_durations_stay_strings() -> None:
    body = json.loads(chat_body(GenerateJob(**{**JOB.to_payload(), "top_k": 40}), num_ctx=2048, keep_alive="10m"))
    assert body["options"]["top_k"] == 40 and body["keep_alive"] == "10m"
    for disabled in (0, -1, -5):
        options = json.loads(chat_body(GenerateJob(**{**JOB.to_payload(), "top_k": disabled}), num_ctx=2048,
                                       keep_alive=-1))["options"]  # fmt: skip
        assert options["top_k"] == 0  # omitted, Ollama would use 40


def test_a_large_max_tokens_is_bounded_by_the_context() -> None:
    options = json.loads(chat_body(GenerateJob(**{**JOB.to_payload(), "max_tokens": 100_000}), num_ctx=4096,
                                   keep_alive=-1))["options"]  # fmt: skip
    assert options["num_predict"] == 4096


def test_gpt_oss_gets_its_lowest_think_level_others_think_false() -> None:
    assert think_value("gptoss") == "low" and think_value("gpt-oss") == "low"
    assert think_value("qwen3") is False and think_value("") is False
    assert json.loads(chat_body(JOB, num_ctx=4096, keep_alive=-1, think="low"))["think"] == "low"


def test_reasoning_is_counted_never_relayed_as_content() -> None:
    parsed = parse_lines([
        line({"message": {"role": "assistant", "content": "", "thinking": "Hmm"}, "done": False}),
        line({"message": {"role": "assistant", "content": "Yes", "thinking": ""}, "done": False}),
    ])  # fmt: skip
    assert (parsed.texts, parsed.thinking) == (["Yes"], 1)


def test_a_clean_end_without_counts_is_a_stop_counting_what_was_relayed() -> None:
    final = Final.clean_end(37)
    assert (final.finish_reason, final.eval_count, final.prompt_eval_count) == ("stop", 37, 0)


def test_a_prompt_longer_than_the_context_is_a_400_naming_both_sizes() -> None:
    inner = {"error": {"code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": 5012, "n_ctx": 4096,
                       "message": "request (5012 tokens) exceeds the available context size (4096 tokens), try "
                       "increasing it"}}  # fmt: skip
    body = json.dumps({"error": json.dumps(inner)}).encode()
    error = error_for_status(400, body, tag="llama3.1:8b", url="http://o:11434")
    assert (error.status, error.reason) == (400, "prompt_too_long")
    assert "5012 tokens" in error.msg and "4096 tokens" in error.msg


def test_operator_mistakes_are_500s_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    for detail in ('"nomic-embed-text:latest" does not support chat', "pull model manifest: file does not exist"):
        error = error_for_status(400, json.dumps({"error": detail}).encode(), tag="m", url="http://o:11434")
        assert (error.status, error.reason) == (500, "ollama_config") and detail in error.msg
        assert any(detail in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def line(obj: dict[str, object]) -> bytes:
    return json.dumps(obj).encode()


def test_token_lines_then_the_final_line() -> None:
    lines = [
        line({"model": "m", "message": {"role": "assistant", "content": "The"}, "done": False}),
        line({"model": "m", "message": {"role": "assistant", "content": ""}, "done": False}),
        line({"model": "m", "message": {"role": "assistant", "content": " end"}, "done": False}),
        line({"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "length",
              "prompt_eval_count": 26, "eval_count": 282, "load_duration": 5_000_000, "eval_duration": 9_000_000}),
        line({"message": {"content": "ignored after done"}, "done": False}),
    ]  # fmt: skip
    parsed = parse_lines(lines)
    final = parsed.final
    assert parsed.texts == ["The", " end"] and parsed.error is None
    assert final is not None
    assert (final.finish_reason, final.prompt_eval_count, final.eval_count) == ("length", 26, 282)
    assert (final.load_ns, final.eval_ns) == (5_000_000, 9_000_000)


def test_absent_metrics_count_as_zero_and_unknown_reasons_as_stop() -> None:
    final = parse_lines([line({"done": True, "done_reason": "unload"})]).final
    assert final is not None and (final.finish_reason, final.prompt_eval_count, final.eval_count) == ("stop", 0, 0)


def test_without_a_final_line_there_is_no_final() -> None:
    parsed = parse_lines([line({"message": {"content": "a"}, "done": False})])
    assert (parsed.texts, parsed.final, parsed.error) == (["a"], None, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"error":"llama runner process has terminated"}', "stream_error"),
        (b"not json", "protocol"),
        (b"[1,2]", "protocol"),
    ],
)
def test_error_and_garbage_lines_end_the_batch_keeping_earlier_tokens(raw: bytes, reason: str) -> None:
    parsed = parse_lines([line({"message": {"content": "kept"}, "done": False}), raw, line({"done": True})])
    assert parsed.texts == ["kept"] and parsed.final is None
    assert parsed.error is not None and parsed.error.reason == reason and parsed.error.status == 500


@pytest.mark.parametrize(
    ("status", "body", "reason", "http", "says"),
    [
        (404, b'{"error":"model \'x\' not found"}', "model_missing", 500, "not installed"),
        (503, b'{"error":"server busy, please try again."}', "busy", 500, "busy"),
        (500, b'{"error":"llama runner process has terminated: exit status 2"}', "ollama_error", 500, "exit status 2"),
        (400, b'{"error":"invalid options"}', "ollama_config", 500, "invalid options"),
        (403, b"", "forbidden", 500, "host name"),
        (502, b"<html>bad gateway</html>", "ollama_error", 500, "bad gateway"),
    ],
)
def test_error_statuses_map_to_what_the_client_should_see(
    status: int, body: bytes, reason: str, http: int, says: str
) -> None:
    error = error_for_status(status, body, tag="x", url="http://o:11434")
    assert (error.reason, error.status) == (reason, http)
    assert says in error.msg
