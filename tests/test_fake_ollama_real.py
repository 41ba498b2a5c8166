"""The fake Ollama does what Ollama's source does where the runner depends on it (scheduler, names, ...)."""

from __future__ import annotations

import json
import threading
import time

from tests.fake_ollama import KNOWN_MODELS, ChatRecord, FakeOllama
from tests.test_fake_ollama import Raw, chat_body


def qwen(fake: FakeOllama) -> list[ChatRecord]:
    """The fake's records of requests for Qwen."""
    return [r for r in fake.chat_records() if r.model == "qwen2.5:7b"]


def test_steady_traffic_on_the_loaded_model_starves_a_request_for_another() -> None:
    # server/sched.go: requests for the loaded model skip the queue and refresh its keep-alive.
    with FakeOllama(max_loaded_models=1).start() as fake:
        fake.set_behavior("*", tokens_per_s=100, reply_tokens=10)
        stop = threading.Event()

        def steady() -> None:
            c = Raw(fake.port)
            while not stop.is_set():
                c.request("POST", "/api/chat", chat_body(keep_alive=-1))
            c.close()

        threads = [threading.Thread(target=steady) for _ in range(2)]
        for t in threads:
            t.start()
        assert fake.wait_for(lambda f: "llama3.1:8b" in f.loaded)
        other = Raw(fake.port, timeout=10)
        other.send("POST", "/api/chat", chat_body(model="qwen2.5:7b"))
        assert fake.wait_for(lambda f: qwen(f) != [])
        arrived = qwen(fake)[0].received_at
        # Each Llama request that ends after it was a chance to let it in (Llama marked to unload).
        assert fake.wait_for(
            lambda f: sum(r.model == "llama3.1:8b" and r.outcome == "done" and r.received_at > arrived
                          for r in f.chat_records()) >= 20, 10,
        )  # fmt: skip
        assert [r.outcome for r in qwen(fake)] == ["queued"]
        stop.set()
        for t in threads:
            t.join()
        # Even idle, Llama's refreshed keep-alive (forever) keeps it loaded: /api/ps (answered once
        # the scheduler has handled those requests' ends, and after any load it started) says so.
        ps = Raw(fake.port)
        assert [m["name"] for m in ps.request("GET", "/api/ps").json()["models"]] == ["llama3.1:8b"]
        ps.close()
        assert [r.outcome for r in qwen(fake)] == ["queued"]
        unload = Raw(fake.port)
        assert (
            unload.request("POST", "/api/chat", {"model": "llama3.1:8b", "messages": [], "keep_alive": 0}).status == 200
        )
        assert other.read().status == 200  # a deliberate unload lets it in
        assert list(fake.loaded) == ["qwen2.5:7b"]
        other.close()
        unload.close()


def test_a_load_is_aborted_with_its_requester_for_everyone_sharing_it_then_restarts_from_zero() -> None:
    with FakeOllama(load_time_s=1.0).start() as fake:
        owner, sharer = Raw(fake.port), Raw(fake.port)
        owner.send("POST", "/api/chat", chat_body())
        assert fake.wait_for(lambda f: "llama3.1:8b" in f.loaded)
        sharer.send("POST", "/api/chat", chat_body())
        assert fake.wait_for(lambda f: len(f.chat_records()) == 2)
        owner.close()
        answer = sharer.read()
        assert answer.status == 500 and "context canceled" in answer.json()["error"]
        began = time.monotonic()
        assert sharer.request("POST", "/api/chat", chat_body()).status == 200
        assert time.monotonic() - began >= 0.9  # loaded again from zero
        sharer.close()


def test_ps_waits_while_a_model_loads() -> None:
    with FakeOllama(load_time_s=1.0).start() as fake:
        loader, watcher = Raw(fake.port), Raw(fake.port)
        loader.send("POST", "/api/chat", {"model": "llama3.1:8b", "messages": []})
        assert fake.wait_for(lambda f: "llama3.1:8b" in f.loaded)
        began = time.monotonic()
        listed = watcher.request("GET", "/api/ps").json()["models"]
        assert time.monotonic() - began >= 0.5 and [m["name"] for m in listed] == ["llama3.1:8b"]
        assert loader.read().json()["done_reason"] == "load"
        loader.close()
        watcher.close()


def test_by_default_old_messages_are_dropped_silently_and_truncate_false_refuses(client_port: int = 0) -> None:
    with FakeOllama().start() as fake:
        c = Raw(fake.port)
        long = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "word " * 3000},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "word " * 1500}]  # fmt: skip
        cut = c.request("POST", "/api/chat", {"model": "llama3.1:8b", "messages": long, "stream": False}).json()
        assert cut["done_reason"] == "stop" and cut["prompt_eval_count"] == 6 + 5 + 1504  # system, "ok", last
        refused = c.request("POST", "/api/chat", {"model": "llama3.1:8b", "messages": long, "truncate": False})
        inner = json.loads(refused.json()["error"])["error"]
        assert refused.status == 400 and (inner["type"], inner["n_prompt_tokens"], inner["n_ctx"]) == (
            "exceed_context_size_error", 4519, 4096)  # fmt: skip
        c.close()


def test_with_shift_off_generation_stops_with_length_when_the_context_is_full() -> None:
    with FakeOllama().start() as fake:
        fake.set_behavior("*", reply_tokens=500)
        c = Raw(fake.port)
        body = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "word " * 3800}], "shift": False,
                "truncate": False, "stream": False, "options": {"num_predict": 4096}}  # fmt: skip
        answer = c.request("POST", "/api/chat", body).json()
        assert answer["done_reason"] == "length" and answer["eval_count"] == 4096 - 3804 - 1
        c.close()


def test_thinking_models_think_unless_told_not_to_and_gpt_oss_always_does() -> None:
    with FakeOllama().start() as fake:
        c = Raw(fake.port)

        def thoughts(model: str, **kw: object) -> int:
            lines = c.request("POST", "/api/chat", chat_body(model=model, **kw)).lines()
            return sum(1 for ln in lines if ln.get("message", {}).get("thinking"))

        assert thoughts("qwen3:8b") == 8 and thoughts("qwen3:8b", think=False) == 0
        assert thoughts("gpt-oss:20b", think=False) == 8 and thoughts("gpt-oss:20b", think="low") == 4
        assert thoughts("llama3.1:8b") == 0
        assert c.request("POST", "/api/chat", chat_body(think=True)).status == 400  # llama does not think
        spent = c.request("POST", "/api/chat", chat_body(model="gpt-oss:20b", think="low",
                                                         options={"num_predict": 4})).lines()  # fmt: skip
        assert spent[-1]["done_reason"] == "length" and not any(ln["message"]["content"] for ln in spent)
        c.close()


def test_some_architectures_run_one_request_at_a_time_whatever_the_slots() -> None:
    with FakeOllama(slots=4).start() as fake:
        fake.set_behavior("*", tokens_per_s=50, reply_tokens=10)
        clients = [Raw(fake.port) for _ in range(2)]
        for c in clients:
            c.send("POST", "/api/chat", chat_body(model="qwen3-vl:8b"))
        assert fake.wait_for(lambda f: f.active_generations() == 1)
        for c in clients:
            assert c.read().status == 200
            c.close()
        first, second = sorted(fake.chat_records(), key=lambda r: r.started_at or 0)
        assert first.finished_at is not None and second.started_at is not None
        assert second.started_at >= first.finished_at, "the two generations overlapped"


def test_names_resolve_case_insensitively_with_defaults_and_list_in_their_shortest_form() -> None:
    with FakeOllama().start() as fake:
        c = Raw(fake.port)
        for name in ("LLAMA3.1:8B", "library/llama3.1:8b", "registry.ollama.ai/library/Llama3.1:8b"):
            assert c.request("POST", "/api/show", {"model": name}).status == 200
        assert "llama3.1:8b" in [m["name"] for m in c.request("GET", "/api/tags").json()["models"]]
        c.close()


def test_show_gives_key_length_and_null_arrays_unless_verbose() -> None:
    hybrid = KNOWN_MODELS["llama3.2:3b"].__class__(**{**KNOWN_MODELS["llama3.2:3b"].__dict__, "tag": "h:1b",
                                                      "head_count_kv": [8, 0] * 14})  # fmt: skip
    with FakeOllama(models={"h:1b": hybrid, "gemma2:9b": KNOWN_MODELS["gemma2:9b"]}).start() as fake:
        c = Raw(fake.port)
        plain = c.request("POST", "/api/show", {"model": "h:1b"}).json()["model_info"]
        verbose = c.request("POST", "/api/show", {"model": "h:1b", "verbose": True}).json()["model_info"]
        assert plain["llama.attention.head_count_kv"] is None
        assert verbose["llama.attention.head_count_kv"] == [8, 0] * 14
        gemma = c.request("POST", "/api/show", {"model": "gemma2:9b"}).json()["model_info"]
        assert gemma["gemma2.attention.key_length"] == gemma["gemma2.attention.value_length"] == 256
        c.close()


def test_a_pull_is_silent_while_it_verifies_the_digest() -> None:
    spec = KNOWN_MODELS["llama3.2:3b"].__class__(**{**KNOWN_MODELS["llama3.2:3b"].__dict__, "installed": False})
    with FakeOllama(models={"llama3.2:3b": spec}).start() as fake:
        fake.set_behavior("llama3.2:3b", verify_s=1.0)
        c = Raw(fake.port)
        c.send("POST", "/api/pull", {"model": "llama3.2:3b"})
        head = c.read_head()
        seen: list[tuple[float, str]] = []
        while (chunk := c.read_chunk()) is not None:
            seen += [(time.monotonic(), json.loads(ln)["status"]) for ln in chunk.splitlines() if ln.strip()]
        statuses = [s for _, s in seen]
        verify, write = statuses.index("verifying sha256 digest"), statuses.index("writing manifest")
        assert head.status == 200 and write == verify + 1
        assert seen[write][0] - seen[verify][0] >= 0.9
        c.close()
