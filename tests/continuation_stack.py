"""Helpers for continuation tests with real processes: a stream read as its client reads it (in a
thread, so a test can break the generation mid-way), and which worker serves a job."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import requests
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from common.fleet import read_fleet
from tests.client import CLOSE, split_lines
from tests.golivepeer import StreamResult, read_stream
from tests.openai_client import check_stream
from tests.stack import Process, Stack, wait_until


@dataclass
class Reader:
    """A streaming request and what its client got: each line, and how many carried text."""

    url: str
    body: dict[str, Any]
    status: int = 0
    job_id: str = ""
    lines: list[bytes] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    error: str = ""
    _got: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None

    def start(self) -> Reader:
        """Send it now; read it in the background."""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        try:
            with (
                requests.Session() as session,
                session.post(self.url, json=self.body, headers=CLOSE, stream=True, timeout=180) as response,
            ):
                self.status, self.job_id = response.status_code, response.headers.get("X-Job-Id", "")
                for line in split_lines(response.iter_content(chunk_size=None)):
                    with self._got:
                        self.lines.append(line)
                        text = _content(line)
                        if text:
                            self.texts.append(text)
                        self._got.notify_all()
        except Exception as exc:  # the test asserts there was none
            self.error = repr(exc)
        finally:
            with self._got:
                self._got.notify_all()

    def wait_texts(self, count: int, timeout: float = 60.0) -> str:
        """Wait until the client has `count` chunks with text; the text so far."""
        with self._got:
            done = self._got.wait_for(lambda: len(self.texts) >= count or self._ended(), timeout)
            assert done and len(self.texts) >= count, f"{len(self.texts)} chunks with text, {self.error}"
            return "".join(self.texts)

    def _ended(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def finish(self, timeout: float = 120.0) -> None:
        """Wait until the answer has been read to its end."""
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        assert not self.error, self.error
        assert self.status == 200

    def llm(self) -> StreamResult:
        """The answer as go-livepeer reads it (/llm), with exactly one final chunk and one [DONE]."""
        result = read_stream(self.lines)
        finals = [c for c in result.chunks if c["choices"][0].get("finish_reason")]
        assert len(finals) == 1 and finals[-1] is result.chunks[-1], "exactly one final chunk, the last"
        assert self.lines.count(b"data: [DONE]") == 1
        return result

    def openai(self) -> list[dict[str, object]]:
        """The answer's chunks as OpenAI's schemas and stream rules have them (/v1: the role in the
        first chunk only, finish_reason in the last choice chunk only, one usage chunk, [DONE])."""
        return check_stream(b"".join(line + b"\n" for line in self.lines))


def _content(line: bytes) -> str:
    if not line.startswith(b"data: {"):
        return ""
    choices = json.loads(line[6:]).get("choices") or [{}]
    content = (choices[0].get("delta") or {}).get("content")
    return content if isinstance(content, str) else ""


def serving_worker(stack: Stack, job_id: str) -> Process:
    """The worker process that took job `job_id` (RQ's record names it; the fleet gives its pid)."""

    def name() -> str | None:
        job = Job.fetch(job_id, connection=stack.redis, serializer=JSONSerializer)
        return job.worker_name or None

    worker: str = wait_until(name, 10, f"the worker of job {job_id}")
    pid = next(r.pid for r in read_fleet(stack.redis) if r.name == worker)
    return next(p for p in stack.processes if p.pid == pid)


def links(redis: Redis) -> dict[str, str]:
    """Each job placed to carry a request's answer on, by the id of the job it carries on (its RQ meta)."""
    found = {}
    for key in redis.scan_iter("rq:job:*"):
        if key.count(b":") == 2:
            job = Job.fetch(key.decode().rsplit(":", 1)[1], connection=redis, serializer=JSONSerializer)
            if "continues" in job.meta:
                found[job.meta["continues"]] = job.id
    return found


def chain(redis: Redis, job_id: str, linked: dict[str, str] | None = None) -> list[Job]:
    """A request's jobs: the one placed first, then each placed to carry it on (`linked`: links(redis))."""
    linked = links(redis) if linked is None else linked
    ids = [job_id]
    while ids[-1] in linked:
        ids.append(linked[ids[-1]])
    return [Job.fetch(i, connection=redis, serializer=JSONSerializer) for i in ids]
