"""Dynamic registration with go-livepeer's live-runner registry: one registration per served model.

With LIVE_RUNNER_ORCH_URL and LIVE_RUNNER_SECRET set, every web process runs one supervised loop
per model (started by gunicorn's post_worker_init). The loop that holds the registration's lease
(web.live_lease) registers with the orchestrator's -orchSecret, proposing the registration's
label as its runner id (stable `/apps/<id>/app` URLs across restarts), then heartbeats with the
returned secret at the interval the orchestrator gave, at once when the model's capacity or
status changes. A 404 (expired, live_runner.go Heartbeat) or a 401 to the heartbeat secret (the
orchestrator restarted and forgot it) registers again. At shutdown the holder gives the lease
up; if no other web process takes the registration on within HANDOVER_S, it unregisters.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import requests
from flask import Flask
from redis.exceptions import RedisError

from common.guard import start_supervised
from common.live_runner import (
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_HEARTBEAT_TTL_S,
    heartbeat_body,
    registration_label,
)
from web.live_lease import Credentials, Lease
from web.live_orch import OrchAnswer, OrchestratorClient, credentials_from
from web.live_routes import readiness
from web.runtime import Runtime, runtime

logger = logging.getLogger(__name__)

EXTENSION = "llm_runner_live"
TICK_S = 0.5
# How long a holder shutting down waits for another web process to take its registration on.
HANDOVER_S = 3 * TICK_S
_MAX_HTTP_TIMEOUT_S = 3.0


class RegistrationLoop:
    """One model's registration, as seen from one web process."""

    def __init__(self, rt: Runtime, client: OrchestratorClient, model_id: str, base_url: str, owner: str) -> None:
        self.rt = rt
        self.client = client
        self.model_id = model_id
        self.base_url = base_url
        self.label = registration_label(rt.settings.live_runner_label, model_id)
        self.lease = Lease(rt.redis, self.label, owner)
        self.credentials: Credentials | None = None
        self.holding = False
        self.next_due = 0.0
        self.last_sent: dict[str, Any] | None = None
        self.stop_requested = threading.Event()
        self.stopped = threading.Event()
        self._last_problem = ""
        # The status and capacity last accepted (logged when they change).
        self._shown: tuple[str, int] = ("", -1)

    # ---- timings: the orchestrator's once known, go-livepeer's defaults before
    @property
    def interval_s(self) -> float:
        """Seconds between heartbeats."""
        return self.credentials.interval_s if self.credentials else DEFAULT_HEARTBEAT_INTERVAL_S

    @property
    def lease_ttl_s(self) -> float:
        """A dead holder's lease lapses, and another process heartbeats, before the orchestrator's TTL runs out."""
        ttl = self.credentials.ttl_s if self.credentials else DEFAULT_HEARTBEAT_TTL_S
        return max(3 * TICK_S, (ttl - self.interval_s) / 2)

    @property
    def http_timeout_s(self) -> float:
        """A call to the orchestrator never outlasts half the lease: the lease is refreshed between calls."""
        return min(_MAX_HTTP_TIMEOUT_S, self.lease_ttl_s / 2)

    # ---- the loop
    def run(self) -> None:
        """Heartbeat while holding the lease until the process drains; then hand over or unregister."""
        while self.rt.draining_since is None and not self.stop_requested.is_set():
            self.tick()
            self.stop_requested.wait(TICK_S)
        try:
            self.shutdown()
        except Exception:
            logger.exception("%s: live-runner shutdown failed", self.label)
        finally:
            self.stopped.set()

    def tick(self) -> None:
        """Hold (or try to take) the lease; heartbeat when due or when what it says has changed."""
        try:
            holding = self.lease.hold(self.lease_ttl_s)
        except (RedisError, OSError) as exc:
            self._problem(f"cannot reach Redis to hold the registration's lease: {exc}")
            self.holding = False
            return
        if not holding:
            self.holding = False
            return
        if not self.holding:
            self.holding, self.next_due, self.last_sent = True, 0.0, None
            self.credentials = self.lease.load(self.client.orch_url)
            logger.info("%s: this web process (%s) now heartbeats the registration%s", self.label, self.lease.owner,
                        f" of runner {self.credentials.runner_id}" if self.credentials else "")  # fmt: skip
        ready, _ = readiness(self.rt, self.model_id, fresh=False)
        body = heartbeat_body(
            self.rt.settings, self.rt.fleet.view_or_none(), self.model_id, base_url=self.base_url, label=self.label,
            price_usd=self.rt.settings.live_runner_price_usd, ready=ready,
        )  # fmt: skip
        if time.monotonic() >= self.next_due or body != self.last_sent:
            self.beat(body)

    def beat(self, body: dict[str, Any]) -> None:
        """One heartbeat (a registration first if there is none); the next is due an interval later."""
        self.last_sent = body
        self.next_due = time.monotonic() + self.interval_s
        try:
            credentials = self.credentials
            if credentials is None:
                self._register(body)
                return
            answer = self.client.heartbeat({"runner_id": credentials.runner_id, **body}, credentials.secret,
                                           self.http_timeout_s)  # fmt: skip
            if answer.status in (401, 404):
                logger.info("%s: the orchestrator no longer knows runner %s (%d: %s); registering again",
                            self.label, credentials.runner_id, answer.status, answer.message)  # fmt: skip
                self.credentials = None
                self.lease.forget()
                self._register(body)
            else:
                self._accept(answer, body, credentials)
        except requests.RequestException as exc:
            self._problem(f"no answer from the orchestrator at {self.client.orch_url}: {exc}")
        except (RedisError, OSError) as exc:
            self._problem(f"cannot reach Redis to store the registration: {exc}")

    def _register(self, body: dict[str, Any]) -> None:
        secret = self.rt.settings.live_runner_secret
        assert secret is not None  # the loops only run with LIVE_RUNNER_SECRET set
        answer = self.client.heartbeat({"runner_id": self.label, **body}, secret, self.http_timeout_s)
        if answer.status == 401:
            self._problem(f"the orchestrator refused the registration (401: {answer.message}): check "
                          "LIVE_RUNNER_SECRET against its -orchSecret; an earlier registration of runner "
                          f"{self.label} still alive also answers so until its TTL runs out")  # fmt: skip
            return
        if self._accept(answer, body, None):
            assert self.credentials is not None
            logger.info("%s: registered with %s as runner %s (%s, capacity %d, heartbeat every %g s)", self.label,
                        self.client.orch_url, self.credentials.runner_id, body["status"], body["capacity"],
                        self.credentials.interval_s)  # fmt: skip

    def _accept(self, answer: OrchAnswer, body: dict[str, Any], previous: Credentials | None) -> bool:
        """Take a heartbeat's answer; whether the orchestrator accepted it."""
        if answer.status != 200:
            disabled = "disabled" in answer.message  # live_runner.go Heartbeat: no -orchSecret on the orchestrator
            hint = " (give the orchestrator -useLiveRunners and -orchSecret)" if disabled else ""
            self._problem(f"the orchestrator answered {answer.status}: {answer.message}{hint}")
            return False
        try:
            credentials = credentials_from(answer, self.client.orch_url, previous)
        except ValueError as exc:
            self._problem(f"the orchestrator's answer does not follow the protocol: {exc}")
            return False
        shown = (body["status"], body["capacity"])
        if previous is not None and shown != self._shown:
            logger.info("%s: runner %s now %s, capacity %d", self.label, credentials.runner_id, *shown)
        self._shown = shown
        self.credentials = credentials
        self.next_due = time.monotonic() + credentials.interval_s
        self.lease.save(credentials)
        self._last_problem = ""
        return True

    def _problem(self, text: str) -> None:
        """Log a failure once, not at every retry."""
        if text != self._last_problem:
            logger.warning("%s: %s", self.label, text)
            self._last_problem = text

    # ---- shutdown
    def shutdown(self) -> None:
        """Hand the registration over to another web process, or unregister it if none takes it on."""
        if not self.holding:
            return
        credentials = self.credentials
        self.lease.release()
        deadline = time.monotonic() + HANDOVER_S
        while time.monotonic() < deadline:
            holder = self.lease.holder()
            if holder is not None:
                logger.info("%s: registration handed over to %s", self.label, holder)
                return
            time.sleep(0.1)
        if not self.lease.hold(self.lease_ttl_s):
            return  # taken on at the last moment
        try:
            if credentials is not None:
                answer = self.client.unregister(credentials.runner_id, credentials.secret, self.http_timeout_s)
                logger.info("%s: unregistered runner %s (%d%s)", self.label, credentials.runner_id, answer.status,
                            f": {answer.message}" if answer.message else "")  # fmt: skip
            self.lease.forget()
        finally:
            self.lease.release()


class LiveRunners:
    """This web process's registration loops; kept in the app's extensions."""

    def __init__(self, rt: Runtime) -> None:
        settings = rt.settings
        assert settings.live_runner_orch_url is not None
        port = settings.port
        base_url = settings.live_runner_url or f"http://{socket.gethostname()}:{port}"
        owner = f"{socket.gethostname()}:{os.getpid()}:{rt.web_id}"
        self.rt = rt
        self.started = False
        self.client = OrchestratorClient(settings.live_runner_orch_url)
        self.loops = [RegistrationLoop(rt, self.client, m.model_id, base_url, owner) for m in settings.models]

    @classmethod
    def attach(cls, app: Flask) -> None:
        """Prepare the loops when dynamic registration is configured (nothing starts yet)."""
        rt = runtime(app)
        if rt.settings.live_runner_dynamic:
            app.extensions[EXTENSION] = cls(rt)

    @staticmethod
    def start(app: Flask) -> None:
        """Start the loops of this process, if configured."""
        live: LiveRunners | None = app.extensions.get(EXTENSION)
        if live is not None and not live.started:
            live.started = True
            for loop in live.loops:
                start_supervised(f"live-runner:{loop.label}", loop.run, stop=loop.stopped)
            logger.info("live-runner registration loops started for %s with %s (one web process heartbeats each)",
                        ", ".join(loop.label for loop in live.loops), live.client.orch_url)  # fmt: skip

    @staticmethod
    def finish(app: Flask, timeout_s: float) -> None:
        """Stop the loops (handing over or unregistering) and wait for them, at most `timeout_s`."""
        live: LiveRunners | None = app.extensions.get(EXTENSION)
        if live is None or not live.started:
            return  # never started (a worker told to stop while it booted): nothing to hand over
        live.rt.drain()
        deadline = time.monotonic() + timeout_s
        for loop in live.loops:
            loop.stop_requested.set()
        for loop in live.loops:
            loop.stopped.wait(max(0.0, deadline - time.monotonic()))
