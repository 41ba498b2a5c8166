"""Continuation as pure functions: each engine's verdict and request body, the job's prefix, the refusals."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from common.errors import NOT_CONTINUABLE
from common.fleet import ModelFit
from common.jobs import GenerateJob
from tests.fake_ollama_templates import TEMPLATES
from worker.backend import refuse_continuation
from worker.ollama_template import continuation
from worker.ollama_wire import chat_body

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
