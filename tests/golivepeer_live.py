"""Our model of go-livepeer's live-runner registry: an orchestrator run with -useLiveRunners.

Every behaviour follows go-livepeer's source at 176aa415 (github.com/livepeer/go-livepeer); the
comment on each names the file and function: the registry in ai/runner/live_runner.go, its HTTP
handlers in server/ai_http.go (service port) and server/webserver.go (CLI port), the reverse
proxy in Go's net/http/httputil (reverseproxy.go). Offchain only: prices are recorded, never
converted or charged (PaymentInfo answers nil offchain). Not modelled: persistent sessions,
trickle channels (the o2r channel is described in answers, never written), session proxies,
payments. The HTTP side is in tests/golivepeer_live_http.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# live_runner.go constants.
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
DEFAULT_HEARTBEAT_TTL_S = 20.0
DEFAULT_HEALTH_INTERVAL_S = 5.0
DEFAULT_HEALTH_TIMEOUT_S = 3.0
MAX_METADATA_BYTES = 1024
PERSISTENT, SINGLE_SHOT = "persistent", "single-shot"
TRICKLE_PATH = "/ai/trickle/"  # server/ai_http.go TrickleHTTPPath


class RunnerError(Exception):
    """live_runner.go RunnerError: answered as http.Error(w, message, status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# --------------------------------------------------------------------------- Go's formats
def go_duration(seconds: float) -> str:
    """time.Duration.String (Go's time/time.go, Duration.format): "5s", "1m0s", "500ms", "1.5s"."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign, u = ("-" if ns < 0 else ""), abs(ns)
    if u < 10**9:  # smaller units below a second
        unit, prec = ("ns", 0) if u < 10**3 else ("µs", 3) if u < 10**6 else ("ms", 6)
        return f"{sign}{_frac(u, prec)}{unit}"
    whole, frac = divmod(u, 10**9)
    digits = f"{frac:09d}".rstrip("0")
    text = f"{whole % 60}{'.' + digits if digits else ''}s"  # seconds, then minutes and hours if any
    minutes = whole // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        if minutes // 60:
            text = f"{minutes // 60}h{text}"
    return sign + text


def _frac(u: int, prec: int) -> str:
    """fmtFrac + fmtInt: the fraction with trailing zeros dropped, no point when it is zero."""
    whole, frac = divmod(u, 10**prec) if prec else (u, 0)
    digits = f"{frac:0{prec}d}".rstrip("0") if prec else ""
    return f"{whole}.{digits}" if digits else str(whole)


def random_str(n: int) -> str:
    """randomStr: n random bytes, base32 without padding, lower case."""
    return base64.b32encode(secrets.token_bytes(n)).decode().rstrip("=").lower()


def derive_secret(seed: bytes, label: str) -> str:
    """deriveSecret: HMAC-SHA256(seed, label), base32 without padding, lower case."""
    return base64.b32encode(hmac.new(seed, label.encode(), hashlib.sha256).digest()).decode().rstrip("=").lower()


def static_health_url(runner_url: str, health_url: str) -> str:
    """staticRunnerHealthURL: a value starting with "/" is *appended* to runner_url (trailing "/"
    trimmed), not resolved as a relative reference: runner_url's path prefix is kept."""
    parts = urlsplit(health_url)
    if parts.scheme or not parts.path.startswith("/") or parts.netloc:
        return health_url
    _check_url(runner_url, "runner_url")
    return runner_url.rstrip("/") + health_url


def _check_url(value: Any, name: str) -> None:
    """url.ParseRequestURI with a host and an http(s) scheme, else "invalid <name>"."""
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"invalid {name}")


# --------------------------------------------------------------------------- the registry
@dataclass
class Runner:
    """live_runner.go liveRunner: a registration, its last request and its sessions."""

    runner_id: str
    route: str
    static: bool
    seed: bytes
    request: dict[str, Any]
    heartbeat_secret: str = ""
    last_heartbeat: float = 0.0
    removed: bool = False
    health_url: str = ""
    health_status: int = 200
    sessions: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """The runner's reported (or, static, polled) status."""
        return str(self.request.get("status", ""))

    def ready(self) -> bool:
        """isReadyStatus: only "" or "ready" is eligible for discovery and reservation."""
        return self.status in ("", "ready")


class LiveRunnerRegistry:
    """live_runner.go LiveRunnerRegistry (offchain), with its health and expiry loops."""

    def __init__(
        self, *, orch_secret: str, service_url: str, runner_addr: str | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL_S, heartbeat_ttl: float = DEFAULT_HEARTBEAT_TTL_S,
        health_interval: float = DEFAULT_HEALTH_INTERVAL_S, health_timeout: float = DEFAULT_HEALTH_TIMEOUT_S,
        health_check: Callable[[str, float], int | None] | None = None,
    ) -> None:  # fmt: skip
        self.orch_secret = orch_secret
        self.service_url = service_url
        # LiveRunnerURI: -liveRunnerAddr, else the service URI (starter.go liveRunnerHost).
        self.runner_addr = runner_addr or service_url
        self.heartbeat_interval, self.heartbeat_ttl = heartbeat_interval, heartbeat_ttl
        self.health_interval, self.health_timeout = health_interval, health_timeout
        self.health_check = health_check
        self.runners: dict[str, Runner] = {}
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.sweeping = True  # tests may hold the expiry sweep to keep its window open
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- loops: NewLiveRunnerRegistry starts healthLoop and expiryLoop
    def start(self) -> None:
        """Start the health loop (every health_interval) and the expiry loop (every heartbeat interval)."""
        for target, name in ((self._health_loop, "health"), (self._expiry_loop, "expiry")):
            thread = threading.Thread(target=target, name=f"fake-orch-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Registry.Stop."""
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _health_loop(self) -> None:
        while not self._stop.wait(self.health_interval):
            self.check_static_health()

    def _expiry_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            if self.sweeping:
                self.remove_expired()

    def record(self, kind: str, **fields: Any) -> None:
        """Note what happened, for tests to wait on."""
        with self.cond:
            self.events.append({"kind": kind, "at": time.monotonic(), **fields})
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float, what: str) -> Any:
        """Wait until `predicate(events)` is truthy; AssertionError naming `what` after `timeout`."""
        with self.cond:
            result = self.cond.wait_for(lambda: predicate(self.events), timeout)
        if not result:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; events: {self.events[-20:]}")
        return result

    def of_kind(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        """The events of a kind whose fields match."""
        with self.cond:
            return [e for e in self.events if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]

    def _expired(self, runner: Runner, now: float) -> bool:
        """liveRunnerExpiredLocked: dynamic runners unheard for longer than the TTL."""
        return not runner.static and now - runner.last_heartbeat > self.heartbeat_ttl

    def remove_expired(self) -> None:
        """removeExpiredRunners: drop expired runners, releasing their sessions."""
        now = time.monotonic()
        with self.cond:
            for route, runner in list(self.runners.items()):
                if not runner.removed and self._expired(runner, now):
                    self._remove(route, runner, "heartbeat timeout")

    def _remove(self, route: str, runner: Runner, reason: str) -> None:
        """removeRunnerWithRunnerLocked: removed first, sessions released, then out of the map."""
        runner.removed = True
        runner.sessions.clear()
        self.runners.pop(route, None)
        self.record("removed", runner_id=runner.runner_id, reason=reason)

    # ---- validation: normalizeHeartbeat (offchain: the price is not checked)
    @staticmethod
    def normalize(runner_id: str, req: dict[str, Any]) -> dict[str, Any]:
        """normalizeHeartbeat; ValueError with go-livepeer's message."""
        _check_url(req.get("runner_url"), "runner_url")
        app = req.get("app")
        if not isinstance(app, str) or not app or app != app.strip():
            raise ValueError("app must be trimmed")
        if len(str(req.get("metadata", "")).encode()) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes")
        status = str(req.get("status", ""))
        if status != status.strip().lower():
            raise ValueError("status must be lowercase and trimmed")
        mode = {"": PERSISTENT, "single_shot": SINGLE_SHOT}.get(str(req.get("mode", "")), str(req.get("mode")))
        if mode not in (PERSISTENT, SINGLE_SHOT):
            raise ValueError(f'mode must be "{PERSISTENT}" or "{SINGLE_SHOT}"')
        capacity = req.get("capacity", 0)
        if not isinstance(capacity, int) or isinstance(capacity, bool):
            raise ValueError("json: cannot unmarshal capacity into Go struct field of type int")
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        return {**req, "runner_id": runner_id, "mode": mode, "capacity": capacity or 1}

    # ---- the dynamic protocol
    def heartbeat(self, req: dict[str, Any], auth: str) -> dict[str, Any]:
        """Heartbeat: registers a new runner_id with the orch secret, updates a known one with its
        heartbeat secret; 404 for a removed or expired runner (even with the orch secret)."""
        runner_id = str(req.get("runner_id", "")).strip() or "runner_" + random_str(5)
        try:
            req = self.normalize(runner_id, req)
        except ValueError as exc:
            raise RunnerError(400, str(exc)) from None
        with self.cond:
            runner = self.runners.get(runner_id)
            now = time.monotonic()
            if runner is None:
                if not self.orch_secret:
                    raise RunnerError(404, "dynamic live runner registration is disabled")
                if not hmac.compare_digest(auth.encode(), self.orch_secret.encode()):
                    raise RunnerError(401, "invalid registration authorization")
                seed = secrets.token_bytes(32)
                runner = Runner(runner_id, runner_id, False, seed, req, derive_secret(seed, "heartbeat"), now)
                self.runners[runner_id] = runner
                self.record("registered", runner_id=runner_id, request=req)
                return self._answer(runner, first=True)
            if runner.removed or self._expired(runner, now):
                raise RunnerError(404, "runner not found")
            if not hmac.compare_digest(auth.encode(), runner.heartbeat_secret.encode()):
                raise RunnerError(401, "invalid heartbeat authorization")
            if runner.static:
                raise RunnerError(400, "static runner cannot heartbeat")
            runner.request, runner.last_heartbeat = req, now
            self.record("heartbeat", runner_id=runner_id, request=req)
            return self._answer(runner, first=False)

    def _answer(self, runner: Runner, *, first: bool) -> dict[str, Any]:
        """LiveRunnerHeartbeatResponse: the secret and o2r channel on first registration only."""
        answer: dict[str, Any] = {
            "runner_id": runner.runner_id,
            "orchestrator": self.runner_addr,
            "heartbeat_interval": go_duration(self.heartbeat_interval),
            "heartbeat_ttl": go_duration(self.heartbeat_ttl),
        }
        if first:
            answer["heartbeat_secret"] = runner.heartbeat_secret
            # createBootstrapTrickleChannel: `<runner_id>-<derived 16>-o2r` under the trickle path.
            name = f"{runner.runner_id}-{derive_secret(runner.seed, 'trickle:o2r')[:16]}-o2r"
            url = self.runner_addr.rstrip("/") + TRICKLE_PATH + name
            answer["o2r"] = {"name": "o2r", "channel_name": name, "url": url, "mime_type": "application/json"}
        answer["session_ids"] = sorted(runner.sessions, key=lambda s: (runner.sessions[s], s))
        return answer

    def unregister(self, runner_id: str, auth: str) -> None:
        """Unregister: 404 unknown/removed/expired, 400 static, 401 wrong secret; else removed (204)."""
        with self.cond:
            runner = self.runners.get(runner_id)
            if runner is None or runner.removed or self._expired(runner, time.monotonic()):
                raise RunnerError(404, "runner not found")
            if runner.static:
                raise RunnerError(400, "static runner cannot unregister with heartbeat credentials")
            if not hmac.compare_digest(auth.encode(), runner.heartbeat_secret.encode()):
                raise RunnerError(401, "invalid authorization")
            self._remove(runner_id, runner, "unregister")

    # ---- static registration
    def register_static(self, data: bytes) -> dict[str, Any]:
        """RegisterStaticRunnersJSON: validate the whole batch first (atomic), check each runner's
        health once, then upsert by label (an existing label keeps its id and sessions)."""
        try:
            config = json.loads(data)
            entries = config.get("runners") or []
            checked = [self._static_entry(i, entry) for i, entry in enumerate(entries)]
        except (ValueError, AttributeError, TypeError) as exc:
            raise RunnerError(400, str(exc)) from None
        labels = [entry["label"] for entry, _ in checked]
        if len(set(labels)) != len(labels):
            raise RunnerError(400, "duplicate label")
        health = [self.healthy(entry["health_url"], entry["healthy_status_code"]) for entry, _ in checked]
        answers = []
        with self.cond:
            existing = {r.request.get("label"): r for r in self.runners.values() if r.static and not r.removed}
            for (entry, req), healthy in zip(checked, health, strict=True):
                runner = existing.get(entry["label"])
                if runner is None:
                    runner = Runner("runner_" + random_str(5), "", True, secrets.token_bytes(32), {})
                for route in [k for k, v in self.runners.items() if v is runner]:
                    del self.runners[route]
                runner.request = {**req, "runner_id": runner.runner_id, "status": "ready" if healthy else "unavailable"}
                if not healthy:
                    runner.sessions.clear()
                runner.health_url, runner.health_status = entry["health_url"], entry["healthy_status_code"]
                runner.route = entry["label"] if entry["routing"] == "label" else runner.runner_id
                self.runners[runner.route] = runner
                self.record("static", runner_id=runner.runner_id, route=runner.route, healthy=healthy)
                answers.append({
                    "runner_id": runner.runner_id, "label": entry["label"], "app": req["app"],
                    "runner_url": req["runner_url"], "mode": req["mode"], "health_url": entry["health_url"],
                    "healthy_status_code": entry["healthy_status_code"], "healthy": healthy,
                })  # fmt: skip
        return {"runners": answers}

    def _static_entry(self, i: int, entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """normalizeStaticLiveRunnerConfig + buildStaticRunner for entry `i`."""
        routing = str(entry.get("routing", "")).strip() or "runner-id"
        if routing not in ("runner-id", "label"):
            raise ValueError(f'runners[{i}]: routing must be "runner-id" or "label"')
        label = entry.get("label")
        if not isinstance(label, str) or not label or label != label.strip():
            raise ValueError(f"runners[{i}]: label is required and must be trimmed")
        if routing == "label" and "/" in label:
            raise ValueError(f'runners[{i}]: label cannot contain / when routing is "label"')
        status_code = entry.get("healthy_status_code") or 200
        if not entry.get("health_url"):
            raise ValueError(f"runners[{i}]: health_url is required")
        health_url = static_health_url(str(entry.get("runner_url", "")), str(entry["health_url"]))
        _check_url(health_url, "health_url")
        if not 100 <= status_code <= 599:
            raise ValueError(f"runners[{i}]: healthy_status_code must be a valid HTTP status code")
        keys = ("label", "proxy", "runner_url", "version", "metadata", "mode", "gpu", "app", "capacity", "price_info")
        req = self.normalize("static", {k: entry[k] for k in keys if k in entry})
        return {"label": label, "routing": routing, "health_url": health_url, "healthy_status_code": status_code}, req

    def healthy(self, url: str, status: int) -> bool:
        """staticRunnerHealthy: GET with the health client's timeout; healthy on the exact status."""
        check = self.health_check or _http_status
        got = check(url, self.health_timeout)
        self.record("health", url=url, status=got)
        return got == status

    def check_static_health(self) -> None:
        """checkStaticRunnerHealth: poll every static runner; unhealthy → "unavailable", sessions released."""
        with self.cond:
            statics = [r for r in self.runners.values() if r.static and not r.removed]
        for runner in statics:
            healthy = self.healthy(runner.health_url, runner.health_status)
            with self.cond:
                if runner.removed:
                    continue
                runner.request["status"] = "ready" if healthy else "unavailable"
                if not healthy:
                    runner.sessions.clear()

    # ---- single-shot sessions and discovery
    def _lock(self, route: str) -> Runner:
        """lockLiveRunner: 404 for an unknown, removed or expired runner."""
        runner = self.runners.get(route)
        if runner is None or runner.removed or self._expired(runner, time.monotonic()):
            raise RunnerError(404, "runner not found")
        return runner

    def reserve_single_shot(self, route: str) -> tuple[Runner, str]:
        """RunnerMode + PaymentInfo (offchain: none) + ReserveSession, as ProxyLiveRunnerSingleShot calls them."""
        with self.cond:
            runner = self._lock(route)
            if not runner.ready():
                raise RunnerError(404, "runner not found")
            if runner.request.get("mode") != SINGLE_SHOT:
                raise RunnerError(400, "runner is not single-shot")
            if len(runner.sessions) >= runner.request["capacity"]:
                self.record("full", route=route, capacity=runner.request["capacity"])
                raise RunnerError(503, "no capacity available for runner")
            session_id = "session_" + random_str(5)
            runner.sessions[session_id] = time.monotonic()
            self.record("reserved", route=route, session_id=session_id)
            return runner, session_id

    def release(self, runner: Runner, session_id: str) -> None:
        """ReleaseSession (deferred by the single-shot proxy)."""
        with self.cond:
            runner.sessions.pop(session_id, None)
            self.record("released", session_id=session_id)

    def session_token(self, runner: Runner, session_id: str) -> str:
        """sessionToken: derived from the runner's seed."""
        return derive_secret(runner.seed, "session:" + session_id)

    def discovery(self) -> list[dict[str, Any]]:
        """DiscoverLiveRunners: the ready, live runners, each at its orchestrator proxy URL."""
        now, runners = time.monotonic(), []
        with self.cond:
            for runner in self.runners.values():
                if runner.removed or self._expired(runner, now) or not runner.ready():
                    continue
                req, used = runner.request, len(runner.sessions)
                url = f"{self.service_url}/apps/{runner.route}/" + ("app" if req["mode"] == SINGLE_SHOT else "session")
                item = {"url": url, "gpu": req.get("gpu"), "app": req["app"], "version": req.get("version"),
                        "metadata": req.get("metadata"), "mode": req["mode"], "capacity": req["capacity"],
                        "capacity_used": used, "capacity_available": req["capacity"] - used}  # fmt: skip
                runners.append({k: v for k, v in item.items() if v not in (None, "")})  # omitempty
        entry: dict[str, Any] = {"address": self.service_url}
        if runners:  # liveRunnerDiscoveryEntry: `runners,omitempty`
            entry["runners"] = runners
        return [entry]

    # ---- test hooks (what time and restarts do to a real orchestrator, made prompt)
    def age(self, runner_id: str, seconds: float) -> None:
        """Move a runner's last heartbeat back, as if `seconds` had passed unheard."""
        with self.cond:
            self.runners[runner_id].last_heartbeat -= seconds

    def forget_everything(self) -> None:
        """An orchestrator restart: the registry lives in memory only."""
        with self.cond:
            self.runners.clear()
            self.record("restarted")


def _http_status(url: str, timeout: float) -> int | None:
    """The status of a GET (the health client), None when there is no answer."""
    import requests

    try:
        with requests.get(url, timeout=timeout, allow_redirects=True) as response:
            return response.status_code
    except requests.RequestException:
        return None
