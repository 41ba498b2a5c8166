"""Continuation as pure functions: each engine's verdict and request body, the job's prefix, the refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from common.errors import NOT_CONTINUABLE, ConfigError
from common.fleet import READY, ModelFit, WorkerRecord
from common.jobs import GenerateJob
from common.settings import Settings
from tests.fake_ollama_templates import TEMPLATES
from worker.backend import refuse_continuation
from worker.ollama_template import continuation
from worker.ollama_wire import chat_body
from worker.openai_flavour import (
    LLAMA_CPP,
    LLAMA_CPP_PYTHON,
    OTHER,
    SGLANG,
    VLLM,
    continuation_fields,
    detect,
    room_left,
    verdict,
)
from worker.openai_wire import SseParser, completion_body
from worker.openai_wire import chat_body as openai_chat_body

JOB = GenerateJob(reply_to="ch", model_id="m", tag="llama3.1:8b", messages=[{"role": "user", "content": "hi"}],
                  max_tokens=64, temperature=0.0, top_p=1.0, top_k=-1, stream=True)  # fmt: skip
CONTINUATION = replace(JOB, messages=[*JOB.messages, {"role": "assistant", "content": "Hello th"}], max_tokens=61,
                       continue_final=True, sent_tokens=3, attempt=1)  # fmt: skip


def shown(template: str, family: str = "llama", modelfile: str = "") -> dict[str, object]:
    return {"template": template, "details": {"family": family}, "modelfile": modelfile}


@pytest.mark.parametrize(
    ("template", "open_"),
    [("llama3", True), ("chatml", True), ("gemma", True), ("mistral", True), ("gemma3-instruct", False)],
)
def test_ollamas_verdict_follows_whether_the_template_leaves_the_last_assistant_turn_open(
    template: str, open_: bool
) -> None:
    assert continuation(shown(TEMPLATES[template].text))[0] is open_


def test_ollamas_own_fallback_templates_close_the_turn_and_mistral_style_guards_keep_it_open() -> None:
    # Ollama's template/llama3-instruct.gotmpl: every turn ends with <|eot_id|>, then a new header.
    fallback = "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>" \
               "\n{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"  # fmt: skip
    assert continuation(shown(fallback)) == (
        False,
        "its template closes every assistant turn and opens a new one: a continuation would restart the answer",
    )
    guarded = '{{- range $index, $_ := .Messages }}{{- if eq .Role "assistant" }} {{ .Content }}' \
              "{{- if not (eq (len (slice $.Messages $index)) 1) }}</s>{{- end }}{{- end }}{{- end }}"  # fmt: skip
    assert continuation(shown(guarded))[0] is True


def test_jinja_renderers_harmony_and_a_missing_template() -> None:
    assert continuation(shown("{% for m in messages %}{{ m.content }}{% endfor %}"))[0] is True
    assert continuation(shown("{{ .Prompt }}", modelfile="FROM x\nRENDERER qwen3.5\nPARSER qwen3.5\n"))[0] is True
    refused = continuation(shown("{{ .Prompt }}", modelfile="FROM x\nRENDERER glm-4.7\n"))
    assert refused == (False, "Ollama's glm-4.7 renderer is not known to leave a trailing assistant message open")
    assert continuation(shown(TEMPLATES["harmony"].text, family="gptoss"))[0] is False
    assert continuation({})[0] is False


def test_the_jobs_prefix_and_its_description() -> None:
    assert CONTINUATION.prefix == "Hello th" and JOB.prefix == ""
    assert CONTINUATION.describe().endswith("max_tokens=61 continuation #1 after 3 tokens")
    assert GenerateJob.from_payload(CONTINUATION.to_payload()) == CONTINUATION
    # A payload from a web that knows nothing of continuations still makes a job.
    legacy = {k: v for k, v in JOB.to_payload().items() if k not in ("continue_final", "sent_tokens", "attempt")}
    assert GenerateJob.from_payload(legacy) == JOB


def test_ollama_is_sent_the_answer_so_far_as_the_last_message_and_the_budget_left() -> None:
    body = json.loads(chat_body(CONTINUATION, num_ctx=4096, keep_alive=-1))
    assert body["messages"][-1] == {"role": "assistant", "content": "Hello th"}
    assert body["options"]["num_predict"] == 61


def test_a_continuation_is_refused_where_the_model_cannot_continue_or_the_job_has_nothing_to_continue() -> None:
    able = ModelFit(tag="t", continuation=True, continuation_note="its template leaves the last assistant turn open")
    unable = ModelFit(tag="t", continuation=False, continuation_note="its template closes every assistant turn")
    assert refuse_continuation(JOB, unable) is None  # an original job is never refused here
    assert refuse_continuation(CONTINUATION, able) is None
    error = refuse_continuation(CONTINUATION, unable)
    assert error is not None and error.reason == NOT_CONTINUABLE and error.status == 500
    assert error.msg == "this worker cannot continue an answer of m: its template closes every assistant turn"
    assert refuse_continuation(CONTINUATION, None) is not None
    empty = replace(CONTINUATION, messages=JOB.messages)
    bad = refuse_continuation(empty, able)
    assert bad is not None and bad.reason == "bad_continuation"


def test_each_openai_engine_is_asked_to_continue_in_its_own_way() -> None:
    vllm = json.loads(openai_chat_body(CONTINUATION, "served", max_tokens=61, extra=continuation_fields(VLLM)))
    assert vllm["continue_final_message"] is True and vllm["add_generation_prompt"] is False
    assert vllm["messages"][-1] == {"role": "assistant", "content": "Hello th"} and vllm["max_tokens"] == 61
    assert continuation_fields(SGLANG) == continuation_fields(VLLM)
    # llama-server prefills a trailing assistant message by default; others get no field they may refuse.
    assert continuation_fields(LLAMA_CPP) == continuation_fields(OTHER) == {}
    plain = json.loads(openai_chat_body(JOB, "served", max_tokens=64))
    assert "continue_final_message" not in plain and "add_generation_prompt" not in plain
    prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello th"
    completion = json.loads(completion_body(CONTINUATION, "served", prompt=prompt, stop="<|im_end|>", max_tokens=61))
    assert completion == {"model": "served", "prompt": prompt, "max_tokens": 61, "temperature": 0.0, "top_p": 1.0,
                          "stream": True, "stop": ["<|im_end|>"]}  # fmt: skip


def test_the_engine_is_told_or_read_from_its_models_list() -> None:
    assert detect("auto", ["vllm"]) == VLLM and detect("auto", ["me", "me"]) == LLAMA_CPP_PYTHON
    assert detect("auto", ["llamacpp"]) == LLAMA_CPP and detect("auto", ["sglang"]) == SGLANG
    assert detect("auto", ["library"]) == OTHER and detect("auto", []) == OTHER
    assert detect("sglang", ["me"]) == SGLANG
    assert verdict(VLLM, "whatever")[0] and verdict(LLAMA_CPP, None)[0]
    assert verdict(LLAMA_CPP_PYTHON, None)[0] is True
    assert verdict(LLAMA_CPP_PYTHON, "OPENAI_GGUF names no GGUF file") == (
        False, "llama-cpp-python closes a trailing assistant message; OPENAI_GGUF names no GGUF file")  # fmt: skip
    assert verdict(OTHER, None)[0] is False


@pytest.mark.parametrize(
    ("message", "room"),
    [
        ("This model's maximum context length is 100 tokens. However, you requested 5007 tokens (7 in the messages, "
         "5000 in the completion). Please reduce the length of the messages or completion.", 93),
        ("'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context length is 4096 "
         "tokens and your request has 2778 input tokens (8000 > 4096 - 2778). None", 1318),
        ("This model's maximum context length is 4096 tokens. However, you requested 8000 output tokens and your "
         "prompt contains 2778 input tokens, for a total of 10778 tokens.", 1318),
        ("Requested token count exceeds the model's maximum context length of 64000 tokens. You requested a total "
         "of 71897 tokens: 7897 tokens from the input messages and 64000 tokens for the completion.", 56102),
        ("This model's maximum context length is 100 tokens. However, you requested 169 tokens (105 in the "
         "messages, 64 in the completion).", 0),
        ("llama_decode returned -3", None),
    ],
)  # fmt: skip
def test_the_room_an_engines_context_refusal_leaves(message: str, room: int | None) -> None:
    assert room_left(message) == room


def test_a_completion_streams_text_chunks_read_like_chat_deltas() -> None:
    parser = SseParser()
    chunk = {"id": "cmpl-1", "object": "text_completion", "choices": [{"text": "e", "index": 0,
                                                                      "finish_reason": None}]}  # fmt: skip
    last = {"id": "cmpl-1", "object": "text_completion", "choices": [{"text": "", "index": 0,
                                                                     "finish_reason": "stop"}]}  # fmt: skip
    parsed = parser.feed([b"data: " + json.dumps(chunk).encode(), b"data: " + json.dumps(last).encode(),
                          b"data: [DONE]"])  # fmt: skip
    assert parsed.texts == ["e"] and parsed.final is not None and parsed.final.finish_reason == "stop"


def test_the_engine_and_its_gguf_are_settings_checked_at_start(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    env = {"BACKEND": "openai", "OPENAI_BASE_URL": "http://engine:8000/v1", "MODELS": "m"}
    settings = Settings.from_env({**env, "OPENAI_ENGINE": "vllm", "OPENAI_GGUF": str(gguf)})
    assert (settings.openai_engine, settings.openai_gguf) == ("vllm", str(gguf))
    assert Settings.from_env(env).openai_engine == "auto"
    with pytest.raises(ConfigError, match="OPENAI_ENGINE: expected one of AUTO, VLLM"):
        Settings.from_env({**env, "OPENAI_ENGINE": "tgi"})
    with pytest.raises(ConfigError, match="OPENAI_GGUF: no such file"):
        Settings.from_env({**env, "OPENAI_GGUF": str(tmp_path / "missing.gguf")})


def test_a_continuation_is_routed_only_to_workers_that_can_continue_the_model() -> None:
    able = WorkerRecord("a", "h", 1, "0", "u", state=READY,
                        models={"m": ModelFit(tag="t", installed=True, fits=True, continuation=True)})  # fmt: skip
    unable = replace(able, name="b", models={"m": ModelFit(tag="t", installed=True, fits=True)})
    assert able.can_continue("m") and not unable.can_continue("m") and unable.serves("m")
    assert not replace(able, state="stopping").can_continue("m") and not able.can_continue("other")
    # Older workers' records (no continuation field) still parse, and say no.
    raw = json.loads(unable.to_json())
    del raw["models"]["m"]["continuation"], raw["models"]["m"]["continuation_note"]
    assert WorkerRecord.from_json(json.dumps(raw)).can_continue("m") is False
