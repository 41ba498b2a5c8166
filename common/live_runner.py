"""go-livepeer's live runners: what the registration of one served model says (pure functions).

One registration per model: its `runner_url` is the model's prefix on this runner (every route
of the web also answers under `/<model_id>`), so the orchestrator's proxy path
`/apps/<runner>/app/<path>` reaches `<web>/<model_id>/<path>`. Field names follow go-livepeer's
wire types (ai/runner/live_runner.go: StaticLiveRunnerConfigEntry, LiveRunnerHeartbeatRequest,
LiveRunnerGPU, LiveRunnerPriceInfo).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any
from urllib.parse import quote

from common.fleet import WorkerRecord, capacity, why_unserved
from common.settings import Settings

PIPELINE = "llm"
# One capacity slot reserved per proxied request, released when it ends (live_runner.go,
# LiveRunnerModeSingleShot; server/ai_http.go ProxyLiveRunnerSingleShot).
MODE = "single-shot"
# The readiness route: 200 only while the model is served (go-livepeer reads the status alone,
# live_runner.go staticRunnerHealthy).
READY_PATH = "/ready"
HEALTHY_STATUS = 200
# Only an empty status or "ready" is eligible for discovery and reservation (isReadyStatus);
# "unavailable" is what go-livepeer itself records for an unhealthy static runner.
STATUS_READY, STATUS_UNAVAILABLE = "ready", "unavailable"
# go-livepeer's defaults, used until an orchestrator's answer gives its own (live_runner.go,
# defaultLiveRunnerHeartbeatInterval and defaultLiveRunnerHeartbeatTTL).
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
DEFAULT_HEARTBEAT_TTL_S = 20.0
MIB = 1 << 20

_NOT_IN_LABEL = re.compile(r"[^a-z0-9._-]+")
# Go's time.ParseDuration units (time/format.go, unitMap), both spellings of the micro sign.
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def registration_label(base: str, model_id: str) -> str:
    """The label (and proposed runner id) of a model's registration: one URL path segment, no `/`.

    go-livepeer routes `/apps/{runner_id}/...` by one path segment, and refuses a `/` in a label
    used for routing (live_runner.go, RegisterStaticRunners).
    """
    slug = _NOT_IN_LABEL.sub("-", model_id.lower()).strip("-.")
    return f"{base}-{slug}" if slug else base


def model_url(base_url: str, model_id: str) -> str:
    """The model's prefix on this runner, e.g. http://web:8000/Qwen/Qwen2.5-7B-Instruct."""
    return f"{base_url.rstrip('/')}/{quote(model_id, safe='/:@')}"


def ready_url(base_url: str, model_id: str) -> str:
    """The model's readiness URL: what go-livepeer makes of the root-relative `/ready` against the
    model's runner_url (it appends the path to runner_url, live_runner.go staticRunnerHealthURL)."""
    return model_url(base_url, model_id) + READY_PATH


def app_name(model_id: str) -> str:
    """The `app` a registration advertises, by go-livepeer's `pipeline/model` convention."""
    return f"{PIPELINE}/{model_id}"


def price_info(usd: float) -> dict[str, Any]:
    """A price per request: unit `fixed` is converted from USD to wei with no time divisor."""
    return {"price": usd, "currency": "usd", "unit": "fixed"}


def fleet_gpu(records: list[WorkerRecord], model_id: str) -> dict[str, Any] | None:
    """The `gpu` of a registration fronting several GPUs: their UUIDs, their names (counted), and
    the smallest one's memory (every request runs on one GPU with at least that much); None when
    no GPU (CPU workers) serves the model."""
    serving = [r for r in records if r.serves(model_id)] or [r for r in records if r.will_serve(model_id)]
    gpus = list({r.gpu.uuid: r.gpu for r in serving if r.gpu is not None}.values())
    if not gpus:
        return None
    names = Counter(g.name for g in gpus)
    return {
        "id": ",".join(g.uuid for g in gpus),
        "name": ", ".join(name if count == 1 else f"{count}x {name}" for name, count in names.items()),
        "vram_mb": min(g.memory_total for g in gpus) // MIB,
    }


def unready_reason(records: list[WorkerRecord] | None, settings: Settings, model_id: str | None) -> str:
    """Why the model (every model, without one) is not served now; empty when it is."""
    if records is None:
        return "Redis is unreachable: this runner cannot take jobs"
    model_ids = [model_id] if model_id is not None else [m.model_id for m in settings.models]
    reasons = [why_unserved(records, m) for m in model_ids if not capacity(records, m)]
    return "; ".join(reasons)


def registration(
    settings: Settings, records: list[WorkerRecord], model_id: str, *, base_url: str, label: str, price_usd: float
) -> dict[str, Any]:
    """The fields static and dynamic registrations share, `capacity` being the fleet's slots now."""
    entry: dict[str, Any] = {
        "label": label,
        "runner_url": model_url(base_url, model_id),
        "app": app_name(model_id),
        "version": settings.version,
        "mode": MODE,
        "capacity": capacity(records, model_id),
        "price_info": price_info(price_usd),
    }
    gpu = fleet_gpu(records, model_id)
    if gpu is not None:
        entry["gpu"] = gpu
    return entry


def static_entry(
    settings: Settings, records: list[WorkerRecord], model_id: str, *, base_url: str, label: str, price_usd: float,
    routing: str,
) -> dict[str, Any]:  # fmt: skip
    """One entry of `{"runners": [...]}` for -liveRunnerConfig or POST /registerLiveRunners.

    `health_url` is absolute: it names the same URL go-livepeer derives from a root-relative
    `/ready`, whatever a later version makes of relative URLs. Capacity 0 is written as 1 (what
    go-livepeer reads 0 as); the readiness URL keeps the runner out of discovery until served.
    """
    entry = registration(settings, records, model_id, base_url=base_url, label=label, price_usd=price_usd)
    entry["capacity"] = max(1, entry["capacity"])
    return {
        "label": label,
        "routing": routing,
        **{k: v for k, v in entry.items() if k != "label"},
        "health_url": ready_url(base_url, model_id),
        "healthy_status_code": HEALTHY_STATUS,
    }


def heartbeat_body(
    settings: Settings, records: list[WorkerRecord] | None, model_id: str, *, base_url: str, label: str,
    price_usd: float, ready: bool,
) -> dict[str, Any]:  # fmt: skip
    """A heartbeat's fields but `runner_id`: the model's capacity and status as the fleet has them."""
    body = registration(settings, records or [], model_id, base_url=base_url, label=label, price_usd=price_usd)
    served = ready and records is not None and body["capacity"] > 0
    body["status"] = STATUS_READY if served else STATUS_UNAVAILABLE
    return body


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string such as "5s", "1m30s" or "500ms" (time.ParseDuration's
    syntax, which time.Duration.String writes); ValueError if it is not one or is negative."""
    raw = text.strip()
    if raw in ("0", "+0", "-0"):
        return 0.0
    body = raw[1:] if raw[:1] in "+-" else raw
    parts = _GO_PART.findall(body)
    if not body or "".join(number + unit for number, unit in parts) != body:
        raise ValueError(f"not a Go duration: {text!r}")
    seconds = sum(float(number) * _GO_UNITS[unit] for number, unit in parts)
    if raw.startswith("-") and seconds:
        raise ValueError(f"a negative duration: {text!r}")
    return seconds
