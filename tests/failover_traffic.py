"""Traffic for failover tests: streams in flight and a steady rate of new requests, each one's
answer recorded as a client (and go-livepeer) sees it, with when it was sent and answered."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.client import CLOSE, split_lines
from tests.golivepeer import read_stream

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


def prompt_words(tag: str) -> str:
    """A prompt whose words only this request uses: the fake answers with them, cycled."""
    return f"{tag}-alpha {tag}-bravo {tag}-charlie"


def expected_text(prompt: str, tokens: int) -> str:
    """The fake Ollama's answer: the prompt's words, each followed by a space, cycled (tests/fake_ollama.py _plan)."""
    units = [w + " " for w in prompt.split()]
    return "".join(units[i % len(units)] for i in range(tokens))


@dataclass
class Outcome:
    """One request as its client saw it."""

    tag: str
    prompt: str
    stream: bool
    max_tokens: int
    sent_at: float
    first_token_at: float | None = None
    ended_at: float | None = None
    status: int | None = None
    text: str = ""
    finish_reason: str | None = None
    error: str = ""  # the detail.msg of an error answer, or what went wrong on the client side
    job_id: str = ""
    saw_done: bool = False
    tokens: threading.Event = field(default_factory=threading.Event)

    def answered(self) -> bool:
        """A whole answer: a 200 that ended (stream: a final chunk and [DONE]) or a JSON error."""
        if self.status == 200:
            return self.finish_reason is not None and (self.saw_done or not self.stream)
        return self.status in (400, 500) and bool(self.error)


def run_request(base_url: str, outcome: Outcome, timeout: float = 60.0) -> None:
    """Send one /llm request and record everything about its answer in `outcome`."""
    body = {"model": LLAMA, "messages": [{"role": "user", "content": outcome.prompt}], "max_tokens": outcome.max_tokens,
            "stream": outcome.stream}  # fmt: skip
    try:
        with (
            requests.Session() as session,
            session.post(f"{base_url}/llm", json=body, headers=CLOSE, stream=True, timeout=timeout) as response,
        ):
            outcome.status = response.status_code
            outcome.job_id = response.headers.get("X-Job-Id", "")
            if response.status_code != 200:
                outcome.error = response.json()["detail"]["msg"]
                return
            if not outcome.stream:
                answer = response.json()
                outcome.text = answer["choices"][0]["message"]["content"]
                outcome.finish_reason = answer["choices"][0]["finish_reason"]
                return
            lines = []
            for line in split_lines(response.iter_content(chunk_size=None)):
                lines.append(line)
                if outcome.first_token_at is None and line.startswith(b"data: {") and b'"content":"' in line:
                    content = json.loads(line[6:])["choices"][0].get("delta", {}).get("content")
                    if content:
                        outcome.first_token_at = time.monotonic()
                        outcome.tokens.set()
            result = read_stream(lines)
            outcome.text, outcome.finish_reason = result.text, result.finish_reason
            outcome.saw_done = result.saw_done_marker
    except Exception as exc:  # recorded: the test asserts every request was answered
        outcome.error = f"client side: {exc!r}"
    finally:
        outcome.ended_at = time.monotonic()
        outcome.tokens.set()


class Traffic:
    """Starts requests in threads and keeps their outcomes."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.outcomes: list[Outcome] = []
        self._threads: list[threading.Thread] = []
        self._numbers = itertools.count()
        self._steady_stop = threading.Event()
        self._steady: threading.Thread | None = None

    def send(self, kind: str, *, stream: bool, max_tokens: int) -> Outcome:
        """Start one request now (in a thread)."""
        tag = f"{kind}{next(self._numbers)}"
        outcome = Outcome(tag, prompt_words(tag), stream, max_tokens, time.monotonic())
        self.outcomes.append(outcome)
        thread = threading.Thread(target=run_request, args=(self.base_url, outcome), daemon=True)
        self._threads.append(thread)
        thread.start()
        return outcome

    def start_steady(self, every_s: float, max_tokens: int) -> None:
        """A new request every `every_s`, streaming and not in turn, until `stop_steady`."""

        def loop() -> None:
            for n in itertools.count():
                if self._steady_stop.wait(every_s):
                    return
                self.send("steady", stream=n % 2 == 0, max_tokens=max_tokens)

        self._steady = threading.Thread(target=loop, daemon=True)
        self._steady.start()

    def stop_steady(self) -> None:
        """No more new requests."""
        self._steady_stop.set()
        if self._steady is not None:
            self._steady.join()

    def wait_all(self, timeout: float) -> None:
        """Wait until every request has its answer (or `timeout` passed: they are then unanswered)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def of(self, kind: str) -> list[Outcome]:
        """The outcomes of one kind of request."""
        return [o for o in self.outcomes if o.tag.startswith(kind)]


def describe(outcomes: list[Outcome], origin: float) -> str:
    """One line per request, times relative to `origin`, for a failing assertion's message."""
    rows = []
    for o in outcomes:
        ended = f"{o.ended_at - origin:+.2f}" if o.ended_at else "never"
        rows.append(f"{o.tag}: sent {o.sent_at - origin:+.2f} ended {ended} status {o.status} "
                    f"finish {o.finish_reason} job {o.job_id} {o.error[:160]}")  # fmt: skip
    return "\n".join(rows)


def body_for(outcome: Outcome) -> dict[str, Any]:
    """The request body an outcome was sent with."""
    return {"model": LLAMA, "messages": [{"role": "user", "content": outcome.prompt}], "max_tokens": outcome.max_tokens}
