"""End to end: gunicorn + `python -m worker` + Redis + a fake Ollama, called as go-livepeer calls us."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from livepeer_ai import Livepeer
from livepeer_ai.models import errors as sdk_errors
from redis import Redis

from tests.client import call, stream
from tests.conftest import RedisServer
from tests.contract import response_schema, validate
from tests.fake_ollama import FakeOllama
from tests.golivepeer import SERVED, non_streaming_verdict, read_stream, route_url
from tests.stack import Stack

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.3"
MODELS = f"{LLAMA},{QWEN},{MISTRAL}"
TOKEN = "s3cret-token"


@dataclass
class Runner:
    """The running stack: an open web, a web with a token, one worker with 8 slots."""

    stack: Stack
    fake: FakeOllama
    url: str
    secured_url: str


@pytest.fixture(scope="module")
def runner(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    if redis_server.proc is None:
        redis_server.start()
    Redis.from_url(redis_server.url).flushall()
    fake = FakeOllama(slots=8).start()
    stack = Stack(str(tmp_path_factory.mktemp("e2e")), redis_server.url)
    try:
        stack.start_web(MODELS=MODELS, OLLAMA_URL=fake.url, AUTH_TOKEN=TOKEN)
        secured = stack.web_url
        stack.start_web(MODELS=MODELS, OLLAMA_URL=fake.url)
        stack.start_worker(MODELS=MODELS, OLLAMA_URL=fake.url, OLLAMA_NUM_PARALLEL=8, VRAM_MB=24576)
        yield Runner(stack, fake, stack.web_url, secured)
    finally:
        stack.stop()
        fake.stop()


@pytest.fixture(autouse=True)
def fresh_fake(runner: Runner) -> None:
    runner.fake.clear_behaviors()
    runner.fake.set_behavior("*", tokens_per_s=500, reply_tokens=12)


def body(prompt: str = "alpha bravo", **fields: Any) -> dict[str, Any]:
    return {"model": LLAMA, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64, **fields}


def expected_text(prompt: str, tokens: int) -> str:
    words = prompt.split()
    return "".join(words[i % len(words)] + " " for i in range(tokens))


def test_streaming_answer_reads_exactly_as_go_livepeer_reads_it(runner: Runner) -> None:
    response, lines = stream(f"{runner.url}/llm", body(stream=True))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert len(response.headers["X-Job-Id"]) == 32
    result = read_stream(lines)
    assert result.text == expected_text("alpha bravo", 12)
    assert result.finish_reason == "stop"
    assert result.usage == {"prompt_tokens": 6, "completion_tokens": 12, "total_tokens": 18}
    assert result.saw_done_marker
    assert lines[-2:] == [b"data: [DONE]", b""]
    assert all(chunk["choices"] and chunk["model"] == LLAMA for chunk in result.chunks)
    assert [c["choices"][0]["finish_reason"] for c in result.chunks].count("stop") == 1
    assert result.chunks[-1]["choices"][0]["finish_reason"] == "stop"
    for chunk in result.chunks:
        validate("LLMResponse", chunk)
    data_lines = [line for line in lines if line]
    assert all(line.startswith(b"data: ") for line in data_lines)


def test_non_streaming_answer(runner: Runner) -> None:
    response = call("POST", f"{runner.url}/llm", json=body())
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    answer = response.json()
    validate(response_schema("/llm", "post", 200), answer)
    assert answer["model"] == LLAMA and answer["id"].startswith("chatcmpl-")
    assert answer["choices"] == [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": expected_text("alpha bravo", 12)},
        }
    ]
    assert answer["usage"] == {"prompt_tokens": 6, "completion_tokens": 12, "total_tokens": 18}


def test_the_request_reaches_ollama_mapped(runner: Runner) -> None:
    call("POST", f"{runner.url}/llm", json=body(temperature=0.3, top_p=0.8, top_k=40, max_tokens=5))
    sent = runner.fake.chat_records()[-1]
    assert sent.model == "llama3.1:8b"
    assert sent.body["options"] == {"num_predict": 5, "temperature": 0.3, "top_p": 0.8, "top_k": 40, "num_ctx": 4096}
    assert sent.body["stream"] is True and sent.body["think"] is False and sent.body["keep_alive"] == -1


def test_max_tokens_ends_with_length(runner: Runner) -> None:
    runner.fake.set_behavior("*", reply_tokens=100)
    _, lines = stream(f"{runner.url}/llm", body(stream=True, max_tokens=4))
    result = read_stream(lines)
    assert result.finish_reason == "length" and result.usage["completion_tokens"] == 4


def test_a_max_tokens_of_100000_is_served_and_bounded_by_the_context(runner: Runner) -> None:
    answer = call("POST", f"{runner.url}/llm", json=body(max_tokens=100_000))
    assert answer.status_code == 200
    assert non_streaming_verdict(200, answer.headers["Content-Type"], answer.content).outcome == SERVED
    assert answer.json()["choices"][0]["finish_reason"] == "stop"
    assert runner.fake.chat_records()[-1].body["options"]["num_predict"] == 4096  # NUM_CTX
    runner.fake.set_behavior("*", tokens_per_s=100_000, reply_tokens=5000)  # more than the context holds
    response, lines = stream(f"{runner.url}/llm", body(stream=True, max_tokens=100_000))
    result = read_stream(lines)
    assert response.status_code == 200 and result.finish_reason == "length"
    used = result.usage["prompt_tokens"] + result.usage["completion_tokens"]
    assert 4000 < used <= 4096  # stopped by the full context (NUM_CTX), not by max_tokens


def test_unicode_and_control_characters_arrive_byte_for_byte(runner: Runner) -> None:
    tokens = ["Grüße ", "日本語", " 🎉", '"quoted"', "\n\n", "tab\t", "\\", "\u2028", "data: x"]
    runner.fake.set_behavior("*", tokens=tokens)
    _, lines = stream(f"{runner.url}/llm", body(stream=True))
    assert read_stream(lines).text == "".join(tokens)
    answer = call("POST", f"{runner.url}/llm", json=body()).json()
    assert answer["choices"][0]["message"]["content"] == "".join(tokens)


def test_eight_concurrent_streams_each_get_only_their_own_tokens(runner: Runner) -> None:
    runner.fake.set_behavior("*", tokens_per_s=10, reply_tokens=20)
    prompts = [f"s{i}-one s{i}-two s{i}-three" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: stream(f"{runner.url}/llm", body(p, stream=True)), prompts))
    for prompt, (response, lines) in zip(prompts, results, strict=True):
        assert response.status_code == 200
        result = read_stream(lines)
        assert result.text == expected_text(prompt, 20)
        assert result.usage["completion_tokens"] == 20
    started = sorted(r.started_at for r in runner.fake.chat_records()[-8:] if r.started_at)
    finished = sorted(r.finished_at for r in runner.fake.chat_records()[-8:] if r.finished_at)
    assert len(started) == 8 and started[-1] < finished[0], "the 8 generations did not overlap"


def test_per_model_prefix_serves_that_model(runner: Runner) -> None:
    version = call("GET", f"{runner.url}/{QWEN}/version").json()
    assert version["model_id"] == QWEN and version["pipeline"] == "llm"
    validate("Version", version)
    answer = call("POST", f"{runner.url}/{QWEN}/llm", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert answer["model"] == QWEN
    assert runner.fake.chat_records()[-1].model == "qwen2.5:7b"
    assert call("GET", f"{runner.url}/{QWEN}/health").json() == {"status": "OK"}
    assert call("GET", f"{runner.url}/no/such-model/version").status_code == 404


@pytest.mark.parametrize("entry_url", ["{web}", "{web}/", "{web}/{model}", "{web}/{model}/"])
@pytest.mark.parametrize("model", [LLAMA, QWEN, MISTRAL])
def test_every_documented_route_answers_directly_as_go_livepeer_calls_it(
    runner: Runner, entry_url: str, model: str
) -> None:
    base = entry_url.format(web=runner.url, model=model)
    served = model if "{model}" in entry_url else LLAMA  # without a prefix: the default model
    for operation in ("health", "version", "hardware/info", "hardware/stats"):
        for url in (route_url(base, operation), route_url(base, operation) + "/"):
            response = call("GET", url)  # fails on any 3xx
            assert response.status_code == 200, url
            assert response.headers["Content-Type"] == "application/json"
            if operation != "health":
                assert response.json()["model_id"] == served, url
    for url in (route_url(base, "llm"), route_url(base, "llm") + "/"):
        response = call("POST", url, json={"messages": [{"role": "user", "content": "alpha bravo"}], "max_tokens": 3})
        assert response.status_code == 200, url
        assert response.json()["model"] == served
        streamed, lines = stream(url, {"messages": [{"role": "user", "content": "alpha"}], "stream": True})
        assert streamed.status_code == 200 and read_stream(lines).finish_reason == "stop"


def test_trailing_slash_and_root_routes(runner: Runner) -> None:
    assert call("POST", f"{runner.url}/llm/", json=body()).status_code == 200
    assert call("GET", f"{runner.url}/version").json()["model_id"] == LLAMA


@pytest.mark.parametrize(("path", "schema"), [("/health", "HealthCheck"), ("/version", "Version"),
                                              ("/hardware/info", "HardwareInformation"),
                                              ("/hardware/stats", "HardwareStats")])  # fmt: skip
def test_info_endpoints_validate_against_the_contract(runner: Runner, path: str, schema: str) -> None:
    response = call("GET", f"{runner.url}{path}")
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    assert response_schema(path, "get", 200) == schema
    validate(schema, response.json())


def test_health_is_ok_once_every_model_is_served(runner: Runner) -> None:
    assert call("GET", f"{runner.url}/health").json() == {"status": "OK"}


def test_bad_requests_are_400_with_detail(runner: Runner) -> None:
    for payload in (b"{", b"[]", json.dumps({"messages": []}).encode(), json.dumps(body(model="gpt-4")).encode(),
                    json.dumps(body(max_tokens=0)).encode()):  # fmt: skip
        response = call("POST", f"{runner.url}/llm", data=payload, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, payload
        assert response.headers["Content-Type"] == "application/json"
        validate("HTTPError", response.json())
        verdict = non_streaming_verdict(400, response.headers["Content-Type"], response.content)
        assert verdict.bad_request == f": {response.json()['detail']['msg']}"  # what the user is told


def test_unknown_model_in_the_url_is_400(runner: Runner) -> None:
    response = call("POST", f"{runner.url}/nope/model/llm", json=body())
    assert response.status_code == 400 and "unknown model" in response.json()["detail"]["msg"]


def test_a_body_over_the_limit_is_400(runner: Runner) -> None:
    huge = body("x " * 700_000)
    response = call("POST", f"{runner.url}/llm", json=huge)
    assert response.status_code == 400 and "too large" in response.json()["detail"]["msg"]


def test_token_is_required_when_configured(runner: Runner) -> None:
    for token in (None, "wrong"):
        response = call("POST", f"{runner.secured_url}/llm", json=body(), token=token)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        validate("HTTPError", response.json())
    assert call("POST", f"{runner.secured_url}/llm", json=body(), token=TOKEN).status_code == 200
    assert call("GET", f"{runner.secured_url}/health").status_code == 200


def test_the_published_livepeer_sdk_parses_our_answer(runner: Runner) -> None:
    sdk = Livepeer(http_bearer=TOKEN, server_url=runner.secured_url)
    result = sdk.generate.llm(request={"model": LLAMA, "messages": [{"role": "user", "content": "alpha bravo"}],
                                       "max_tokens": 64})  # fmt: skip
    answer = result.llm_response
    assert answer is not None and answer.model == LLAMA
    assert answer.choices[0].message is not None
    assert answer.choices[0].message.content == expected_text("alpha bravo", 12)
    assert answer.usage.total_tokens == 18
    with pytest.raises(sdk_errors.HTTPError) as caught:
        sdk.generate.llm(request={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]})
    assert "unknown model" in caught.value.data.detail.msg


@pytest.mark.parametrize(
    ("knobs", "says"),
    [
        ({"status": 404, "error": "model 'llama3.1:8b' not found"}, "not installed"),
        ({"status": 503, "error": "server busy, please try again.  maximum pending requests exceeded"}, "busy"),
        ({"status": 500, "error": "llama runner process has terminated: exit status 2"}, "exit status 2"),
        ({"error_after": 0, "error": "CUDA error"}, "CUDA error"),
    ],
)
def test_ollama_failures_before_any_token_are_500_with_detail(runner: Runner, knobs: dict[str, Any], says: str) -> None:
    runner.fake.set_behavior("*", **knobs)
    for stream_flag in (False, True):
        response = call("POST", f"{runner.url}/llm", json=body(stream=stream_flag))
        assert response.status_code == 500
        assert response.headers["Content-Type"] == "application/json"
        validate("HTTPError", response.json())
        assert says in response.json()["detail"]["msg"]
        # Ollama busy is no room right now (the gateway keeps us); the others are real failures.
        assert response.json()["detail"]["msg"].startswith("insufficient capacity: ") == (knobs.get("status") == 503)
    runner.fake.clear_behaviors()
    assert call("POST", f"{runner.url}/llm", json=body()).status_code == 200  # the worker is still healthy


@pytest.mark.parametrize("knobs", [{"error_after": 3, "error": "CUDA error"}, {"drop_after": 3}])
def test_ollama_failures_mid_stream_are_carried_on_up_to_the_limit_then_end_with_an_error_chunk(
    runner: Runner, knobs: dict[str, Any]
) -> None:
    runner.fake.set_behavior("*", **knobs)  # every request to the engine breaks after 3 tokens
    before = len(runner.fake.chat_records())
    response, lines = stream(f"{runner.url}/llm", body(stream=True))
    assert response.status_code == 200
    result = read_stream(lines)
    # The original job and MIGRATION_LIMIT (2) continuations, 3 tokens each, one seamless text.
    assert result.text == expected_text("alpha bravo", 9)
    assert result.finish_reason == "error" and result.saw_done_marker
    assert result.usage["completion_tokens"] == 9
    sent = [r.body["messages"][-1] for r in runner.fake.chat_records()[before:]]
    assert sent == [{"role": "user", "content": "alpha bravo"},
                    {"role": "assistant", "content": expected_text("alpha bravo", 3)},
                    {"role": "assistant", "content": expected_text("alpha bravo", 6)}]  # fmt: skip
    response = call("POST", f"{runner.url}/llm", json=body())
    assert response.status_code == 500 and response.json()["detail"]["msg"]


def test_a_clean_end_without_a_done_line_is_a_finish_with_the_tokens_relayed(runner: Runner) -> None:
    runner.fake.set_behavior("*", truncate_after=5)  # Ollama stopping a repetition loop
    response, lines = stream(f"{runner.url}/llm", body(stream=True))
    result = read_stream(lines)
    assert response.status_code == 200 and result.finish_reason == "stop"
    assert result.text == expected_text("alpha bravo", 5) and result.usage["completion_tokens"] == 5
    answer = call("POST", f"{runner.url}/llm", json=body()).json()
    assert answer["choices"][0]["finish_reason"] == "stop" and answer["usage"]["completion_tokens"] == 5


def test_a_prompt_that_does_not_fit_the_context_is_a_400_naming_its_size(runner: Runner) -> None:
    history = [{"role": "user", "content": "word " * 3000}, {"role": "assistant", "content": "ok"}]
    long = {**body(), "messages": [*history, {"role": "user", "content": "word " * 1500}]}
    for stream_flag in (False, True):
        response = call("POST", f"{runner.url}/llm", json={**long, "stream": stream_flag})
        assert response.status_code == 400
        msg = response.json()["detail"]["msg"]
        assert "4513 tokens" in msg and "4096 tokens" in msg
    sent = runner.fake.chat_records()[-1].body
    assert (sent["truncate"], sent["shift"]) == (False, False)


def test_top_k_disabled_reaches_ollama_as_zero(runner: Runner) -> None:
    assert call("POST", f"{runner.url}/llm", json=body(top_k=-1)).status_code == 200
    assert runner.fake.chat_records()[-1].body["options"]["top_k"] == 0


def test_no_answer_is_ever_422_or_503(runner: Runner) -> None:
    for method, path, kwargs in (("POST", "/llm", {"data": b"x"}), ("POST", "/llm", {"json": {"messages": 1}}),
                                 ("GET", "/llm", {}), ("POST", "/health", {})):  # fmt: skip
        response = call(method, f"{runner.url}{path}", **kwargs)
        assert response.status_code not in (422, 503)
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["detail"]["msg"]
