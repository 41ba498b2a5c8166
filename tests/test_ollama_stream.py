"""The worker's streaming client against a fake Ollama speaking the real wire, failures included."""

from __future__ import annotations

import json
import threading

import pytest

from common.errors import BackendError, JobCancelled
from common.jobs import GenerateJob
from tests.fake_ollama import FakeOllama
from tests.stack import free_port
from worker.ollama_stream import ChatStream
from worker.ollama_wire import Final, chat_body, parse_lines

TAG = "llama3.1:8b"


def job(prompt: str = "alpha bravo", max_tokens: int = 64) -> GenerateJob:
    return GenerateJob(
        reply_to="ch", model_id="m", tag=TAG, messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens, temperature=0.7, top_p=1.0, top_k=-1, stream=True,
    )  # fmt: skip


def stream_for(url: str, spec: GenerateJob | None = None, *, first_byte: float = 5.0, idle: float = 5.0) -> ChatStream:
    body = chat_body(spec or job(), num_ctx=4096, keep_alive=-1)
    return ChatStream(url, body, tag=TAG, connect_timeout=2.0, first_byte_timeout=first_byte, idle_timeout=idle)


def run(stream: ChatStream) -> tuple[list[str], Final | None, int]:
    texts: list[str] = []
    final: Final | None = None
    batches = 0
    stream.open()
    try:
        for lines in stream.batches():
            batches += 1
            parsed = parse_lines(lines)
            texts += parsed.texts
            if parsed.error:
                raise parsed.error
            final = parsed.final
            if final:
                break
    finally:
        stream.close()
    return texts, final, batches


def test_a_whole_answer_with_ollamas_counts(fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, reply_tokens=5)
    texts, final, _ = run(stream_for(fake_ollama.url))
    assert "".join(texts) == "alpha bravo alpha bravo alpha "
    assert final is not None and final.finish_reason == "stop" and final.eval_count == 5
    assert final.prompt_eval_count == 2 + 4
    record = fake_ollama.chat_records()[-1]
    assert record.headers["host"] == f"127.0.0.1:{fake_ollama.port}"
    assert record.body["options"]["num_predict"] == 64 and record.body["think"] is False


def test_max_tokens_cut_reports_length(fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, reply_tokens=100)
    texts, final, _ = run(stream_for(fake_ollama.url, job(max_tokens=3)))
    assert len(texts) == 3 and final is not None and final.finish_reason == "length"


def test_exact_text_survives_unicode_quotes_and_newlines(fake_ollama: FakeOllama) -> None:
    tokens = ["日本", "語 ", '"q"', "\n", "🎉", "\\", "a\u2028b"]
    fake_ollama.set_behavior(TAG, tokens=tokens)
    texts, final, _ = run(stream_for(fake_ollama.url))
    assert texts == tokens and final is not None


def test_a_fast_stream_arrives_in_batches(fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, reply_tokens=3000)
    texts, final, batches = run(stream_for(fake_ollama.url, job(max_tokens=5000)))
    assert len(texts) == 3000 and final is not None
    assert batches < 3000


@pytest.mark.parametrize(
    ("status", "error", "reason", "http"),
    [
        (404, "model 'llama3.1:8b' not found", "model_missing", 500),
        (503, "server busy, please try again.  maximum pending requests exceeded", "busy", 500),
        (500, "llama runner process has terminated: exit status 2", "ollama_error", 500),
        (400, "invalid input", "rejected", 400),
    ],
)
def test_error_statuses(fake_ollama: FakeOllama, status: int, error: str, reason: str, http: int) -> None:
    fake_ollama.set_behavior(TAG, status=status, error=error)
    with pytest.raises(BackendError) as caught:
        run(stream_for(fake_ollama.url))
    assert (caught.value.reason, caught.value.status) == (reason, http)


def test_error_line_mid_stream(fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, error_after=2, error="CUDA error: out of memory")
    with pytest.raises(BackendError, match="out of memory") as caught:
        run(stream_for(fake_ollama.url))
    assert caught.value.reason == "stream_error"


def test_stream_that_ends_without_done_has_no_final(fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, truncate_after=2)
    texts, final, _ = run(stream_for(fake_ollama.url))
    assert len(texts) == 2 and final is None


def test_connection_dropped_mid_stream(fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, drop_after=2)
    with pytest.raises(BackendError) as caught:
        run(stream_for(fake_ollama.url))
    assert caught.value.reason == "truncated"


def test_unreachable_ollama() -> None:
    with pytest.raises(BackendError) as caught:
        run(stream_for(f"http://127.0.0.1:{free_port()}"))
    assert caught.value.reason == "unreachable"


def test_stall_between_tokens_hits_the_idle_timeout(fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, stall_after=1)
    with pytest.raises(BackendError) as caught:
        run(stream_for(fake_ollama.url, idle=0.3))
    assert caught.value.reason == "stalled"
    assert fake_ollama.wait_for(lambda f: f.chat_records()[-1].outcome == "cancelled")


def test_slow_first_byte_waits_up_to_its_bound(fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, first_byte_delay=0.4, reply_tokens=2)
    texts, final, _ = run(stream_for(fake_ollama.url, first_byte=2.0, idle=0.1))
    assert len(texts) == 2 and final is not None
    fake_ollama.set_behavior(TAG, first_byte_delay=2.0)
    with pytest.raises(BackendError) as caught:
        run(stream_for(fake_ollama.url, first_byte=0.3))
    assert caught.value.reason == "timeout"


def test_abort_from_another_thread_stops_generation(fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, tokens_per_s=20, reply_tokens=1000)
    stream = stream_for(fake_ollama.url, job(max_tokens=1000))
    got_one = threading.Event()

    def consume() -> None:
        stream.open()
        for _ in stream.batches():
            got_one.set()

    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _capture(consume, errors))
    thread.start()
    assert got_one.wait(5)
    stream.abort()
    thread.join(5)
    stream.close()
    assert len(errors) == 1 and isinstance(errors[0], JobCancelled)
    assert fake_ollama.wait_for(lambda f: f.chat_records()[-1].outcome == "cancelled")
    assert fake_ollama.active_generations() == 0


def test_abort_while_the_model_loads(fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, first_byte_delay=30)
    stream = stream_for(fake_ollama.url, first_byte=60)
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _capture(lambda: run(stream), errors))
    thread.start()
    assert fake_ollama.wait_for(lambda f: len(f.chat_records()) == 1)
    stream.abort()
    thread.join(5)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], JobCancelled)
    assert fake_ollama.wait_for(lambda f: f.chat_records()[-1].outcome == "cancelled")


def _capture(func: object, errors: list[BaseException]) -> None:
    try:
        func()  # type: ignore[operator]
    except BaseException as exc:
        errors.append(exc)


def test_the_body_is_json_ollama_accepts(fake_ollama: FakeOllama) -> None:
    run(stream_for(fake_ollama.url))
    assert json.loads(json.dumps(fake_ollama.chat_records()[-1].body))["stream"] is True
