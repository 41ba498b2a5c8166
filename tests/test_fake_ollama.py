"""Tests for tests/fake_ollama.py, talking to it over raw sockets and http.client only."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from tests.fake_ollama import KNOWN_MODELS, FakeOllama, ModelSpec, parse_go_duration

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- raw HTTP client


@dataclass
class Resp:
    """A parsed HTTP response, keeping the chunk framing visible."""

    status: int
    headers: dict[str, str]
    raw_head: bytes
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    terminated: bool = False  # saw the 0-size chunk
    eof_error: str | None = None  # how the body ended early, if it did

    def lines(self) -> list[dict[str, Any]]:
        """NDJSON lines (each chunk must be exactly one line)."""
        return [json.loads(c) for c in self.chunks]

    def json(self) -> Any:
        """Body parsed as JSON."""
        return json.loads(self.body)


class Raw:
    """Minimal HTTP/1.1 client over a plain socket (keep-alive capable)."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.port = port
        self.f = self.sock.makefile("rb")

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw_body: bytes | None = None,
    ) -> None:
        """Write one request."""
        data = raw_body if raw_body is not None else (b"" if body is None else json.dumps(body).encode())
        hs = {"Host": f"127.0.0.1:{self.port}", "Content-Length": str(len(data)), **(headers or {})}
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs.items()) + "\r\n"
        self.sock.sendall(head.encode() + data)

    def read_head(self) -> Resp:
        """Read status line and headers."""
        raw = b""
        while not raw.endswith(b"\r\n\r\n"):
            line = self.f.readline()
            if not line:
                raise ConnectionError(f"EOF in response head: {raw!r}")
            raw += line
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        return Resp(status, headers, raw)

    def read_chunk(self) -> bytes | None:
        """One chunk's payload; None for the terminating chunk."""
        size_line = self.f.readline()
        if not size_line:
            raise ConnectionError("EOF before chunk size")
        assert size_line.endswith(b"\r\n"), size_line
        size = int(size_line, 16)
        if size == 0:
            assert self.f.readline() == b"\r\n"
            return None
        data = self.f.read(size)
        crlf = self.f.read(2)
        if len(data) != size or crlf != b"\r\n":
            raise ConnectionError("short chunk")
        return data

    def read(self, head_only: bool = False) -> Resp:
        """Read one whole response, recording an early EOF/reset instead of raising."""
        r = self.read_head()
        if head_only:
            return r
        try:
            if r.headers.get("transfer-encoding") == "chunked":
                while (c := self.read_chunk()) is not None:
                    r.chunks.append(c)
                r.terminated = True
            else:
                n = int(r.headers["content-length"])
                r.body = self.f.read(n)
                if len(r.body) != n:
                    r.eof_error = "short body"
        except (ConnectionError, OSError) as e:
            r.eof_error = repr(e)
        return r

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Resp:
        """send() + read()."""
        head_only = kw.pop("head_only", False)
        self.send(method, path, body, **kw)
        return self.read(head_only)

    def close(self) -> None:
        """Close the socket."""
        self.f.close()
        self.sock.close()


def chat_body(text: str = "alpha beta gamma", model: str = "llama3.1:8b", **kw: Any) -> dict[str, Any]:
    """A /api/chat request body."""
    return {"model": model, "messages": [{"role": "user", "content": text}], **kw}


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    """A fresh fake per test."""
    with FakeOllama().start() as f:
        yield f


@pytest.fixture
def client(fake: FakeOllama) -> Iterator[Raw]:
    """A raw connection to the fake."""
    c = Raw(fake.port)
    yield c
    c.close()


def hc(fake: FakeOllama) -> http.client.HTTPConnection:
    """An http.client connection to the fake."""
    return http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)


# ----------------------------------------------------------------------------- simple endpoints


def test_root_get_and_head(fake: FakeOllama) -> None:
    c = hc(fake)
    c.request("GET", "/")
    r = c.getresponse()
    assert (r.status, r.getheader("Content-Type"), r.read()) == (200, "text/plain; charset=utf-8", b"Ollama is running")
    c.request("HEAD", "/")
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Length") == "17" and r.read() == b""
    c.request("GET", "/nope")
    r = c.getresponse()
    assert r.status == 404 and r.read() == b"404 page not found"
    c.close()


def test_version_and_keepalive(client: Raw) -> None:
    for _ in range(3):  # same socket, three requests
        r = client.request("GET", "/api/version")
        assert r.status == 200 and r.body == b'{"version":"0.12.6"}'
        assert r.headers["content-type"] == "application/json; charset=utf-8" and "date" in r.headers


def test_tags_shape() -> None:
    models = {**KNOWN_MODELS, "phi3:mini": replace(KNOWN_MODELS["llama3.2:3b"], tag="phi3:mini", installed=False)}
    with FakeOllama(models=models).start() as fake:
        c = Raw(fake.port)
        data = c.request("GET", "/api/tags").json()
        c.close()
    names = [m["name"] for m in data["models"]]
    assert set(names) == set(KNOWN_MODELS) and "phi3:mini" not in names
    m = next(m for m in data["models"] if m["name"] == "qwen2.5:7b")
    assert m["model"] == "qwen2.5:7b" and m["size"] == 4_683_087_332
    assert m["modified_at"] == "2025-01-01T00:00:00Z" and len(m["digest"]) == 64
    assert m["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "qwen2",
        "families": ["qwen2"],
        "parameter_size": "7.6B",
        "quantization_level": "Q4_K_M",
    }


def test_show(client: Raw) -> None:
    r = client.request("POST", "/api/show", {"model": "gemma2:9b"})
    assert r.status == 200
    d = r.json()
    assert set(d) >= {"license", "modelfile", "parameters", "template", "details", "model_info", "capabilities"}
    mi = d["model_info"]
    assert mi["general.architecture"] == "gemma2" and mi["gemma2.block_count"] == 42
    assert mi["gemma2.attention.head_count"] == 16 and mi["gemma2.attention.head_count_kv"] == 8
    assert mi["gemma2.embedding_length"] == 3584 and mi["gemma2.context_length"] == 8192
    assert isinstance(mi["general.parameter_count"], int) and d["capabilities"] == ["completion"]
    r = client.request("POST", "/api/show", {"name": "llama3.1:70b"})
    assert r.json()["model_info"]["llama.block_count"] == 80
    r = client.request("POST", "/api/show", {"model": "nope:1b"})
    assert (r.status, r.body) == (404, b'{"error":"model \'nope:1b\' not found"}')
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert client.request("POST", "/api/show", {}).json() == {"error": "model is required"}


def test_show_reports_the_template_and_the_modelfile_of_each_model(client: Raw) -> None:
    llama = client.request("POST", "/api/show", {"model": "llama3.1:8b"}).json()
    assert "{{ if not $last }}<|eot_id|>{{ end }}" in llama["template"]
    assert llama["modelfile"].startswith('# Modelfile generated by "ollama show"')
    assert f'TEMPLATE """{llama["template"]}"""' in llama["modelfile"] and "RENDERER" not in llama["modelfile"]
    assert ".Messages" not in client.request("POST", "/api/show", {"model": "mistral:7b"}).json()["template"]
    vl = client.request("POST", "/api/show", {"model": "qwen3-vl:8b"}).json()
    assert vl["template"] == "{{ .Prompt }}" and "\nRENDERER qwen3-vl-instruct\n" in vl["modelfile"]


def test_a_trailing_assistant_message_is_continued_where_the_template_leaves_it_open() -> None:
    closing = replace(KNOWN_MODELS["gemma2:9b"], tag="my-gemma3:4b", family="gemma3", template="gemma3-instruct")
    with FakeOllama(models={"llama3.1:8b": KNOWN_MODELS["llama3.1:8b"], "my-gemma3:4b": closing}).start() as fake:
        c = Raw(fake.port)
        whole = c.request("POST", "/api/chat", chat_body("a b c", stream=False)).json()
        assert whole["message"]["content"] == "a b c a b c a b " and whole["eval_count"] == 8
        cut = [{"role": "user", "content": "a b c"}, {"role": "assistant", "content": "a b c "}]
        more = c.request("POST", "/api/chat", {"model": "llama3.1:8b", "messages": cut, "stream": False}).json()
        assert more["message"]["content"] == "a b c a b " and more["eval_count"] == 5
        # The answer so far is prompt now: the original prompt's tokens plus its 3.
        assert more["prompt_eval_count"] == whole["prompt_eval_count"] + 3
        # A template that closes the turn: the model starts a new answer.
        again = c.request("POST", "/api/chat", {"model": "my-gemma3:4b", "messages": cut, "stream": False}).json()
        assert again["message"]["content"] == "a b c a b c a b "
        c.close()


def test_preload_ps_unload(fake: FakeOllama, client: Raw) -> None:
    r = client.request("POST", "/api/chat", {"model": "llama3.1:8b", "messages": [], "options": {"num_ctx": 8192}})
    assert r.status == 200 and r.headers["content-type"] == "application/json; charset=utf-8"
    d = r.json()
    assert d["done_reason"] == "load" and d["done"] is True and d["message"] == {"role": "assistant", "content": ""}
    assert "llama3.1:8b" in fake.loaded
    ps = client.request("GET", "/api/ps").json()["models"]
    assert [m["name"] for m in ps] == ["llama3.1:8b"]
    spec = KNOWN_MODELS["llama3.1:8b"]
    assert ps[0]["size"] == ps[0]["size_vram"] == spec.size + 2 * 32 * 8 * 128 * 8192 * 2
    assert ps[0]["expires_at"].endswith("Z") and ps[0]["details"]["family"] == "llama"
    d = client.request("POST", "/api/chat", {"model": "llama3.1:8b", "messages": [], "keep_alive": 0}).json()
    assert d["done_reason"] == "unload" and fake.loaded == {}
    assert client.request("GET", "/api/ps").json() == {"models": []}


def test_keep_alive_expiry() -> None:
    with FakeOllama().start() as fake:
        c = Raw(fake.port)
        assert c.request("POST", "/api/chat", chat_body(keep_alive="50ms")).status == 200
        assert fake.wait_for(lambda f: "llama3.1:8b" not in f.loaded, timeout=2)
        c.request("POST", "/api/chat", chat_body(keep_alive=-1))
        assert fake.loaded["llama3.1:8b"] == float("inf")
        c.close()


# ----------------------------------------------------------------------------- chat streaming


def test_chat_stream_framing_and_tokens(fake: FakeOllama, client: Raw) -> None:
    body = {
        "model": "llama3.1:8b",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two three"}],
    }
    r = client.request("POST", "/api/chat", body)
    assert r.status == 200 and r.terminated and r.eof_error is None
    assert r.headers["content-type"] == "application/x-ndjson" and r.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in r.headers and "date" in r.headers
    assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in r.chunks)
    lines = r.lines()
    toks = [ln["message"]["content"] for ln in lines[:-1]]
    assert toks == ["one ", "two ", "three ", "one ", "two ", "three ", "one ", "two "]
    assert all(
        ln["done"] is False and ln["model"] == "llama3.1:8b" and ln["created_at"].endswith("Z") for ln in lines[:-1]
    )
    assert list(lines[0]) == ["model", "created_at", "message", "done"]
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop" and final["message"]["content"] == ""
    assert final["eval_count"] == 8 and final["prompt_eval_count"] == 2 + 3 + 4 * 2
    assert all(
        isinstance(final[k], int) and final[k] > 0
        for k in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
    )
    rec = fake.chat_records()[0]
    assert (rec.outcome, rec.tokens_sent, rec.done_reason, rec.model) == ("done", 8, "stop", "llama3.1:8b")
    assert rec.headers["host"] == f"127.0.0.1:{fake.port}" and rec.body == body
    # the connection is reusable after a chunked stream
    assert client.request("GET", "/api/version").status == 200


def test_streams_differ_by_prompt(client: Raw) -> None:
    a = client.request("POST", "/api/chat", chat_body("red")).lines()
    b = client.request("POST", "/api/chat", chat_body("blue green")).lines()
    assert {x["message"]["content"] for x in a[:-1]} == {"red "}
    assert [x["message"]["content"] for x in b[:3]] == ["blue ", "green ", "blue "]


def test_num_predict_length(client: Raw) -> None:
    lines = client.request("POST", "/api/chat", chat_body(options={"num_predict": 3, "temperature": 0})).lines()
    assert len(lines) == 4 and lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 3
    lines = client.request("POST", "/api/chat", chat_body(options={"num_predict": -1})).lines()
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] == 8


def test_stream_false(client: Raw) -> None:
    r = client.request("POST", "/api/chat", chat_body("x y", stream=False, options={"num_predict": 3}))
    assert r.status == 200 and "transfer-encoding" not in r.headers
    d = r.json()
    assert d["message"] == {"role": "assistant", "content": "x y x "} and d["done_reason"] == "length"
    assert d["eval_count"] == 3 and d["done"] is True


def test_tokens_knob_exact_bytes(fake: FakeOllama, client: Raw) -> None:
    toks = ["héllo ", '"quoted"', "line\nbreak", "", "<b>&", "🙂"]
    fake.set_behavior("llama3.1:8b", tokens=toks)
    r = client.request("POST", "/api/chat", chat_body())
    assert [ln["message"]["content"] for ln in r.lines()[:-1]] == toks
    raw = b"".join(r.chunks)
    assert b"\\u003cb\\u003e\\u0026" in raw and "héllo".encode() in raw and b"line\\nbreak" in raw


def test_pacing(fake: FakeOllama, client: Raw) -> None:
    fake.set_behavior("*", tokens_per_s=200.0, reply_tokens=20)
    t0 = time.monotonic()
    assert len(client.request("POST", "/api/chat", chat_body()).chunks) == 21
    assert 0.09 < time.monotonic() - t0 < 1.0


def test_unpaced_throughput(fake: FakeOllama, client: Raw) -> None:
    fake.set_behavior("*", reply_tokens=5000)
    t0 = time.monotonic()
    r = client.request("POST", "/api/chat", chat_body())
    assert len(r.chunks) == 5001 and r.lines()[-1]["eval_count"] == 5000
    assert time.monotonic() - t0 < 2.0


def test_many_concurrent_streams() -> None:
    with FakeOllama(slots=64, tokens_per_s=500.0).start() as fake:
        results: list[int] = []

        def one(i: int) -> None:
            c = Raw(fake.port)
            results.append(len(c.request("POST", "/api/chat", chat_body(f"s{i}")).chunks))
            c.close()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results == [9] * 64
        assert (
            max(r.started_at or 0 for r in fake.chat_records()) - min(r.started_at or 0 for r in fake.chat_records())
            < 0.5
        )


# ----------------------------------------------------------------------------- slots and cancellation


def test_slots_fifo() -> None:
    with FakeOllama(slots=1, tokens_per_s=100.0).start() as fake:
        a, b = Raw(fake.port), Raw(fake.port)
        a.send("POST", "/api/chat", chat_body("first"))
        assert fake.wait_for(lambda f: f.active_generations() == 1)
        b.send("POST", "/api/chat", chat_body("second"))
        assert fake.wait_for(lambda f: len(f.chat_records()) == 2)
        recs = fake.chat_records()
        assert recs[1].outcome == "queued" and recs[1].started_at is None
        ra, rb = a.read(), b.read()
        assert ra.lines()[0]["message"]["content"] == "first " and rb.lines()[0]["message"]["content"] == "second "
        assert fake.wait_for(lambda f: all(r.outcome == "done" for r in f.chat_records()))
        r1, r2 = fake.chat_records()
        assert r1.started_at is not None and r2.started_at is not None and r1.finished_at is not None
        assert r2.started_at >= r1.finished_at
        a.close()
        b.close()


def test_disconnect_mid_stream_cancels(fake: FakeOllama) -> None:
    fake.set_behavior("*", tokens_per_s=100.0, reply_tokens=10_000)
    c = Raw(fake.port)
    c.send("POST", "/api/chat", chat_body())
    c.read_head()
    assert c.read_chunk() is not None and c.read_chunk() is not None
    c.close()
    assert fake.wait_for(
        lambda f: f.chat_records()[0].outcome == "cancelled" and f.active_generations() == 0, timeout=1
    )
    rec = fake.chat_records()[0]
    assert rec.cancelled_at is not None and 2 <= rec.tokens_sent < 100


def test_disconnect_while_queued_frees_place(fake: FakeOllama) -> None:
    fake.set_behavior("*", stall_after=1)
    a, b = Raw(fake.port), Raw(fake.port)
    a.send("POST", "/api/chat", chat_body())
    assert fake.wait_for(lambda f: f.active_generations() == 1)
    b.send("POST", "/api/chat", chat_body())
    assert fake.wait_for(lambda f: len(f.chat_records()) == 2)
    b.close()
    assert fake.wait_for(lambda f: f.chat_records()[1].outcome == "cancelled")
    assert fake.chat_records()[1].started_at is None
    a.close()
    assert fake.wait_for(lambda f: f.chat_records()[0].outcome == "cancelled" and f.active_generations() == 0)


def test_disconnect_during_load_aborts_it() -> None:
    with FakeOllama(load_time_s=30.0).start() as fake:
        c = Raw(fake.port)
        c.send("POST", "/api/chat", chat_body())
        assert fake.wait_for(lambda f: len(f.chat_records()) == 1)
        c.close()
        assert fake.wait_for(lambda f: f.chat_records()[0].outcome == "cancelled", timeout=1)
        assert fake.loaded == {}


def test_load_time_shared_and_headers_withheld() -> None:
    with FakeOllama(load_time_s=0.2, slots=2).start() as fake:
        a, b = Raw(fake.port), Raw(fake.port)
        a.send("POST", "/api/chat", chat_body())
        b.send("POST", "/api/chat", chat_body())
        a.sock.settimeout(0.05)
        with pytest.raises(TimeoutError):  # nothing at all, not even headers, during the load
            a.sock.recv(1)
        a.sock.settimeout(5)
        assert a.read().terminated and b.read().terminated
        r1, r2 = fake.chat_records()
        assert r1.started_at and r2.started_at
        assert r1.started_at - r1.received_at > 0.19 and abs(r1.started_at - r2.started_at) < 0.1  # one shared load
        again = a.request("POST", "/api/chat", chat_body()).lines()[-1]
        assert again["load_duration"] < 50_000_000  # already loaded: no second load
        a.close()
        b.close()


def test_stop_with_open_streams_is_prompt() -> None:
    fake = FakeOllama(slots=1).start()
    fake.set_behavior("*", stall_after=1)
    a, b = Raw(fake.port), Raw(fake.port)
    a.send("POST", "/api/chat", chat_body())
    b.send("POST", "/api/chat", chat_body())
    assert fake.wait_for(lambda f: [r.outcome for r in f.chat_records()] == ["generating", "queued"])
    assert not fake.wait_for(lambda f: False, timeout=0.01)
    t0 = time.monotonic()
    fake.stop()
    assert time.monotonic() - t0 < 1.0 and fake._thread is not None and not fake._thread.is_alive()
    assert a.read().eof_error is not None  # 1 line, then the connection was closed
    a.close()
    b.close()


# ----------------------------------------------------------------------------- failure knobs


@pytest.mark.parametrize(
    "status,msg",
    [
        (404, "model 'llama3.1:8b' not found"),
        (503, "server busy, please try again.  maximum pending requests exceeded"),
        (500, "llama runner process has terminated: exit status 2"),
        (400, "invalid options"),
    ],
)
def test_status_knob(fake: FakeOllama, client: Raw, status: int, msg: str) -> None:
    fake.set_behavior("llama3.1:8b", status=status, error=msg)
    r = client.request("POST", "/api/chat", chat_body())
    assert r.status == status and r.json() == {"error": msg}
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert fake.chat_records()[0].outcome == "error"
    assert client.request("POST", "/api/chat", chat_body(model="mistral:7b")).status == 200  # other models fine


def test_error_after(fake: FakeOllama, client: Raw) -> None:
    fake.set_behavior("*", error_after=2, error="llama runner process has terminated: exit status 2")
    r = client.request("POST", "/api/chat", chat_body())
    assert r.status == 200 and r.terminated
    lines = r.lines()
    assert len(lines) == 3 and lines[-1] == {"error": "llama runner process has terminated: exit status 2"}
    assert fake.chat_records()[0].outcome == "error"
    assert client.request("GET", "/api/version").status == 200  # stream ended properly; connection reusable


def test_truncate_after(fake: FakeOllama, client: Raw) -> None:
    fake.set_behavior("*", truncate_after=3)
    r = client.request("POST", "/api/chat", chat_body())
    assert r.terminated and len(r.chunks) == 3 and not any(ln["done"] for ln in r.lines())
    assert fake.chat_records()[0].outcome == "error"


def test_drop_after(fake: FakeOllama, client: Raw) -> None:
    fake.set_behavior("*", drop_after=2)
    r = client.request("POST", "/api/chat", chat_body())
    assert r.status == 200 and not r.terminated and r.eof_error and len(r.chunks) == 2
    assert fake.chat_records()[0].outcome == "error"


def test_stall_after(fake: FakeOllama, client: Raw) -> None:
    fake.set_behavior("*", stall_after=2)
    client.send("POST", "/api/chat", chat_body())
    client.read_head()
    assert client.read_chunk() and client.read_chunk()
    client.sock.settimeout(0.1)
    with pytest.raises(TimeoutError):
        client.f.read(1)
    assert fake.chat_records()[0].outcome == "generating"
    client.close()
    assert fake.wait_for(lambda f: f.chat_records()[0].outcome == "cancelled" and f.active_generations() == 0)


def test_first_byte_delay(fake: FakeOllama, client: Raw) -> None:
    fake.set_behavior("llama3.1:8b", first_byte_delay=0.15)
    t0 = time.monotonic()
    r = client.request("POST", "/api/chat", chat_body())
    assert r.terminated and 0.14 < time.monotonic() - t0 < 0.6


def test_stream_false_failures(fake: FakeOllama) -> None:
    fake.set_behavior("*", error_after=1, error="boom")
    c = Raw(fake.port)
    r = c.request("POST", "/api/chat", chat_body(stream=False))
    assert r.status == 500 and r.json() == {"error": "boom"}
    fake.clear_behaviors()
    fake.set_behavior("*", truncate_after=1)
    r = c.request("POST", "/api/chat", chat_body(stream=False))
    assert r.status == 200 and r.eof_error == "short body"
    c.close()


def test_behavior_knob_validation_and_clear(fake: FakeOllama, client: Raw) -> None:
    with pytest.raises(ValueError):
        fake.set_behavior("llama3.1:8b", explode=True)
    fake.set_behavior("*", reply_tokens=2)
    fake.set_behavior("mistral:7b", reply_tokens=4)
    assert len(client.request("POST", "/api/chat", chat_body()).chunks) == 3
    assert len(client.request("POST", "/api/chat", chat_body(model="mistral:7b")).chunks) == 5
    fake.clear_behaviors()
    assert len(client.request("POST", "/api/chat", chat_body()).chunks) == 9


# ----------------------------------------------------------------------------- validation


def test_keep_alive_validation(client: Raw) -> None:
    r = client.request("POST", "/api/chat", chat_body(keep_alive="300"))
    assert r.status == 400 and r.body == b'{"error":"time: missing unit in duration \\"300\\""}'
    for ok in ("10m", "-1m", "1h30m", "0", 300, -1, 2.5):
        assert client.request("POST", "/api/chat", chat_body(keep_alive=ok)).status == 200, ok
    assert parse_go_duration("1h30m") == 5400 and parse_go_duration("1.5s") == 1.5
    with pytest.raises(ValueError, match='unknown unit "x"'):
        parse_go_duration("10x")


def test_request_validation(fake: FakeOllama, client: Raw) -> None:
    r = client.request("POST", "/api/chat", raw_body=b"{nope")
    assert r.status == 400 and r.json()["error"].startswith("invalid character")
    r = client.request("POST", "/api/chat", {"messages": []})
    assert (r.status, r.json()) == (400, {"error": "model is required"})
    r = client.request("POST", "/api/chat", chat_body(model="ghost:1b"))
    assert (r.status, r.json()) == (404, {"error": "model 'ghost:1b' not found"})
    r = client.request("POST", "/api/chat", chat_body(think=True))
    assert r.status == 400 and "does not support thinking" in r.json()["error"]
    assert [x.outcome for x in fake.chat_records()] == ["error"] * 4


def test_chunked_request_body_and_pipelining(fake: FakeOllama, client: Raw) -> None:
    data = json.dumps(chat_body("pipe line")).encode()
    req = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%b\r\n0\r\n\r\n" % (
        len(data),
        data,
    )
    client.sock.sendall(req + b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.read().lines()[0]["message"]["content"] == "pipe "
    assert client.read().json() == {"version": "0.12.6"}


def test_foreign_host_forbidden() -> None:
    with FakeOllama(require_local_host=True).start() as fake:
        c = Raw(fake.port)
        r = c.request("POST", "/api/chat", chat_body(), headers={"Host": "evil.example:11434"})
        assert r.status == 403 and r.headers["content-length"] == "0" and r.body == b""
        assert "content-type" not in r.headers
        assert c.request("POST", "/api/chat", chat_body(), headers={"Host": f"localhost:{fake.port}"}).status == 200
        assert c.request("GET", "/api/version", headers={"Host": f"[::1]:{fake.port}"}).status == 200
        assert c.request("GET", "/api/version", headers={"Host": "127.0.0.1:1"}).status == 403
        c.close()


# ----------------------------------------------------------------------------- pull


def test_pull_installs_model() -> None:
    extra = ModelSpec("phi3:mini", 2_176_178_913, "phi3", 32, 32, 32, 3072, 131072, "3.8B", installed=False)
    with FakeOllama(models={"llama3.1:8b": KNOWN_MODELS["llama3.1:8b"], "phi3:mini": extra}).start() as fake:
        c = Raw(fake.port)
        assert c.request("POST", "/api/chat", chat_body(model="phi3:mini")).status == 404
        assert c.request("POST", "/api/show", {"model": "phi3:mini"}).status == 404
        r = c.request("POST", "/api/pull", {"model": "phi3:mini", "stream": True})
        assert r.status == 200 and r.headers["content-type"] == "application/x-ndjson" and r.terminated
        lines = r.lines()
        assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
        prog = [ln for ln in lines if "digest" in ln]
        assert (
            prog
            and prog[0]["digest"].startswith("sha256:")
            and prog[0]["status"] == "pulling " + prog[0]["digest"][7:19]
        )
        assert any(p["total"] == extra.size and p["completed"] == extra.size for p in prog)
        assert {"status": "verifying sha256 digest"} in lines and {"status": "writing manifest"} in lines
        assert fake.pulls == ["phi3:mini"]
        assert "phi3:mini" in [m["name"] for m in c.request("GET", "/api/tags").json()["models"]]
        assert c.request("POST", "/api/chat", chat_body(model="phi3:mini")).status == 200
        assert KNOWN_MODELS["llama3.1:8b"].installed  # module-level specs untouched
        c.close()


def test_pull_errors(fake: FakeOllama, client: Raw) -> None:
    r = client.request("POST", "/api/pull", {"name": "nope:1b"})
    assert r.status == 200 and r.lines()[-1] == {"error": "pull model manifest: file does not exist"}
    fake.set_behavior("mistral:7b", pull_error=True)
    r = client.request("POST", "/api/pull", {"model": "mistral:7b", "stream": True})
    assert r.lines()[-1] == {"error": "pull model manifest: file does not exist"}
    assert fake.pulls == ["nope:1b", "mistral:7b"]


# ----------------------------------------------------------------------------- subprocess mode


def test_subprocess_mode() -> None:
    cmd = [sys.executable, "-m", "tests.fake_ollama", "--port", "0", "--slots", "4", "--models", "llama3.2:3b,tiny:1b"]
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            assert line.startswith("READY ")
            c = Raw(int(line.split()[1]))
            assert c.request("GET", "/api/version").json() == {"version": "0.12.6"}
            names = [m["name"] for m in c.request("GET", "/api/tags").json()["models"]]
            assert names == ["llama3.2:3b", "tiny:1b"]
            c.close()
        finally:
            proc.terminate()
        assert proc.wait(5) == 0
