"""The worker's streaming client against a fake Ollama speaking the real wire, failures included."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest

from common.errors import BackendError, JobCancelled
from common.jobs import GenerateJob
from tests.fake_ollama import FakeOllama
from tests.stack import free_port
from worker.engine_stream import ChatStream
from worker.http import EngineHttp, StreamLoop
from worker.ollama_wire import Final, OllamaParser, chat_body, error_for_status, parse_lines

TAG = "llama3.1:8b"


def job(prompt: str = "alpha bravo", max_tokens: int = 64) -> GenerateJob:
    return GenerateJob(
        reply_to="ch", model_id="m", tag=TAG, messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens, temperature=0.7, top_p=1.0, top_k=-1, stream=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def streams() -> Iterator[StreamLoop]:
    loop = StreamLoop()
    yield loop
    loop.stop()


class Collector:
    """Gathers what a call relays, as the job's relay does."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.final: Final | None = None
        self.batches = 0
        self.first = threading.Event()

    def on_lines(self, lines: list[bytes]) -> bool:
        self.batches += 1
        parsed = parse_lines(lines)
        self.texts += parsed.texts
        self.first.set()
        if parsed.error:
            raise parsed.error
        self.final = parsed.final
        return self.final is not None


def stream_for(streams: StreamLoop, url: str, spec: GenerateJob | None = None, *, first_byte: float = 5.0,
               idle: float = 5.0) -> tuple[ChatStream, Collector]:  # fmt: skip
    body = chat_body(spec or job(), num_ctx=4096, keep_alive=-1)
    collector = Collector()
    http = EngineHttp(streams, url, engine="Ollama", connect_timeout=2.0)
    stream = ChatStream(
        http, "/api/chat", body, on_error=lambda status, raw: error_for_status(status, raw, tag=TAG, url=url),
        first_byte_timeout=first_byte, idle_timeout=idle, on_lines=collector.on_lines, on_end=OllamaParser().end,
    )  # fmt: skip
    return stream, collector


def run_on(streams: StreamLoop, stream: ChatStream) -> None:
    """Run the stream on the loop's thread, as the worker does, and wait for it to end."""
    asyncio.run_coroutine_threadsafe(stream.run(on_sent=lambda: None), streams.loop).result()


def run(streams: StreamLoop, url: str, spec: GenerateJob | None = None, **timeouts: float) -> Collector:
    stream, collector = stream_for(streams, url, spec, **timeouts)
    run_on(streams, stream)
    return collector


def test_a_whole_answer_with_ollamas_counts(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, reply_tokens=5)
    got = run(streams, fake_ollama.url)
    assert "".join(got.texts) == "alpha bravo alpha bravo alpha "
    assert got.final is not None and got.final.finish_reason == "stop" and got.final.eval_count == 5
    assert got.final.prompt_eval_count == 2 + 4
    record = fake_ollama.chat_records()[-1]
    assert record.headers["host"] == f"127.0.0.1:{fake_ollama.port}"
    assert record.body["options"]["num_predict"] == 64 and record.body["think"] is False


def test_max_tokens_cut_reports_length(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, reply_tokens=100)
    got = run(streams, fake_ollama.url, job(max_tokens=3))
    assert len(got.texts) == 3 and got.final is not None and got.final.finish_reason == "length"


def test_exact_text_survives_unicode_quotes_and_newlines(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    tokens = ["日本", "語 ", '"q"', "\n", "🎉", "\\", "a\u2028b"]
    fake_ollama.set_behavior(TAG, tokens=tokens)
    got = run(streams, fake_ollama.url)
    assert got.texts == tokens and got.final is not None


def test_a_fast_stream_arrives_in_batches(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, reply_tokens=3000)
    got = run(streams, fake_ollama.url, job(max_tokens=5000))
    assert len(got.texts) == 3000 and got.final is not None
    assert got.batches < 3000


@pytest.mark.parametrize(
    ("status", "error", "reason", "http"),
    [
        (404, "model 'llama3.1:8b' not found", "model_missing", 500),
        (503, "server busy, please try again.  maximum pending requests exceeded", "busy", 500),
        (500, "llama runner process has terminated: exit status 2", "ollama_error", 500),
        (400, '"all-minilm:latest" does not support chat', "ollama_config", 500),
    ],
)
def test_error_statuses(
    streams: StreamLoop, fake_ollama: FakeOllama, status: int, error: str, reason: str, http: int
) -> None:
    fake_ollama.set_behavior(TAG, status=status, error=error)
    with pytest.raises(BackendError) as caught:
        run(streams, fake_ollama.url)
    assert (caught.value.reason, caught.value.status) == (reason, http)
    assert error.split(",")[0] in caught.value.msg or status == 404


def test_error_line_mid_stream(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, error_after=2, error="CUDA error: out of memory")
    with pytest.raises(BackendError, match="out of memory") as caught:
        run(streams, fake_ollama.url)
    assert caught.value.reason == "stream_error"


def test_a_clean_end_without_done_is_a_finish_with_its_tokens(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, truncate_after=2)  # Ollama's repetition stop
    stream, got = stream_for(streams, fake_ollama.url)
    run_on(streams, stream)
    assert len(got.texts) == 2 and got.final is None


def test_a_prompt_longer_than_the_context_is_refused_not_cut(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    history = [{"role": "user", "content": "word " * 3000}, {"role": "assistant", "content": "ok"}]
    spec = GenerateJob(**{**job().to_payload(), "messages": [*history, {"role": "user", "content": "word " * 1500}]})
    with pytest.raises(BackendError) as caught:
        run(streams, fake_ollama.url, spec)
    assert (caught.value.status, caught.value.reason) == (400, "prompt_too_long")
    assert "4513 tokens" in caught.value.msg and "4096 tokens" in caught.value.msg
    assert fake_ollama.chat_records()[-1].tokens_sent == 0


def test_connection_dropped_mid_stream(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, drop_after=2)
    with pytest.raises(BackendError) as caught:
        run(streams, fake_ollama.url)
    assert caught.value.reason == "truncated"


def test_unreachable_ollama(streams: StreamLoop) -> None:
    with pytest.raises(BackendError) as caught:
        run(streams, f"http://127.0.0.1:{free_port()}")
    assert caught.value.reason == "unreachable"


def test_stall_between_tokens_hits_the_idle_timeout(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, stall_after=1)
    with pytest.raises(BackendError) as caught:
        run(streams, fake_ollama.url, idle=0.3)
    assert caught.value.reason == "stalled"
    assert fake_ollama.wait_for(lambda f: f.chat_records()[-1].outcome == "cancelled")


def test_slow_first_byte_waits_up_to_its_bound(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, first_byte_delay=0.4, reply_tokens=2)
    got = run(streams, fake_ollama.url, first_byte=2.0, idle=0.1)
    assert len(got.texts) == 2 and got.final is not None
    fake_ollama.set_behavior(TAG, first_byte_delay=2.0)
    with pytest.raises(BackendError) as caught:
        run(streams, fake_ollama.url, first_byte=0.3)
    assert caught.value.reason == "timeout"


def in_thread(streams: StreamLoop, stream: ChatStream) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_on(streams, stream)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, errors


def test_abort_from_another_thread_stops_generation(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, tokens_per_s=20, reply_tokens=1000)
    stream, got = stream_for(streams, fake_ollama.url, job(max_tokens=1000))
    thread, errors = in_thread(streams, stream)
    assert got.first.wait(5)
    stream.abort()
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], JobCancelled)
    assert fake_ollama.wait_for(lambda f: f.chat_records()[-1].outcome == "cancelled")
    assert fake_ollama.active_generations() == 0


def test_abort_while_the_model_loads(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior(TAG, first_byte_delay=30)
    stream, _ = stream_for(streams, fake_ollama.url, first_byte=60)
    thread, errors = in_thread(streams, stream)
    assert fake_ollama.wait_for(lambda f: len(f.chat_records()) == 1)
    stream.abort()
    thread.join(5)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], JobCancelled)
    assert fake_ollama.wait_for(lambda f: f.chat_records()[-1].outcome == "cancelled")


def test_abort_before_connecting_sends_nothing(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    stream, _ = stream_for(streams, fake_ollama.url)
    stream.abort()
    with pytest.raises(JobCancelled):
        run_on(streams, stream)
    assert fake_ollama.chat_records() == []


def test_the_body_is_json_ollama_accepts(streams: StreamLoop, fake_ollama: FakeOllama) -> None:
    run(streams, fake_ollama.url)
    assert json.loads(json.dumps(fake_ollama.chat_records()[-1].body))["stream"] is True
