"""What go-livepeer's live runners need from the web: a readiness URL, and the proxy's headers logged.

`/ready` (and `/<model_id>/ready`) answers 200 only while a ready worker serves the model (every
model, unprefixed) and this process can follow jobs; 503 otherwise. go-livepeer polls a static
registration's `health_url` and reads the status code alone; `/health` answers 200 in every
state (go-livepeer's batch path reads its body), so it cannot serve here.

The orchestrator's reverse proxy adds `Livepeer-Runner-Route`, `Livepeer-Session-Id`,
`Livepeer-Session-Token` and `Livepeer-Session-Control` to every proxied request
(server/ai_http.go, proxyLiveRunner). Every route accepts them; the session is logged beside the
job it placed. The token is a credential and is never logged.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, g, jsonify, request

from common.live_runner import READY_PATH, unready_reason
from web import auth
from web.routes import UnknownPrefix
from web.runtime import Runtime, runtime

logger = logging.getLogger(__name__)

bp = Blueprint("live_runner", __name__)
SESSION_HEADER = "Livepeer-Session-Id"
ROUTE_HEADER = "Livepeer-Runner-Route"
READY_ENDPOINT = "live_runner.ready"
_SHOWN_CHARS = 80


def readiness(rt: Runtime, model_id: str | None, *, fresh: bool = True) -> tuple[bool, str]:
    """Whether this process serves the model (every model without one) now, and why not; the fleet
    read afresh unless `fresh` is false (then up to a second old)."""
    if rt.draining_since is not None:
        return False, "this web process is shutting down"
    if not rt.hub.running(timeout=1.0):
        return False, "this web process cannot follow jobs (no event subscription to Redis)"
    reason = unready_reason(rt.fleet.view_or_none(fresh=fresh), rt.settings, model_id)
    return not reason, reason


@bp.get(READY_PATH)
@bp.get(f"{READY_PATH}/")
@bp.get(f"/<path:model_id>{READY_PATH}")
@bp.get(f"/<path:model_id>{READY_PATH}/")
def ready(model_id: str | None = None) -> Response:
    """200 while the model is served, 503 while not (why: to AUTH_TOKEN holders); 404 for an unknown model."""
    rt = runtime()
    if model_id is not None and rt.settings.model(model_id) is None:
        served = ", ".join(m.model_id for m in rt.settings.models)
        raise UnknownPrefix(f"no model {model_id[:200]!r} here; this runner serves: {served}")
    ok, reason = readiness(rt, model_id)
    # Open to anyone (go-livepeer polls it without a token): the reason (engine URLs, hosts, VRAM
    # figures, as /fleet tells them) only for a caller that holds AUTH_TOKEN.
    if not auth.may_see_details(rt.settings, request.headers.get("Authorization")):
        reason = "no ready worker serves this model here now (details on /fleet)"
    response = jsonify({"status": "ready"} if ok else {"status": "unavailable", "reason": reason})
    response.status_code = 200 if ok else 503
    response.headers["Cache-Control"] = "no-store"
    return response


def _shown(value: str) -> str:
    """A header value fit for a log line: printable, bounded."""
    return "".join(c if c.isprintable() else "?" for c in value[:_SHOWN_CHARS])


def install(app: Flask) -> None:
    """Register the readiness routes, and log each proxied request's live-runner session with its job."""
    app.register_blueprint(bp)

    @app.after_request
    def log_live_session(response: Response) -> Response:
        session = request.headers.get(SESSION_HEADER)
        if session:
            job_id = g.get("job_id") or "-"
            route = _shown(request.headers.get(ROUTE_HEADER, ""))
            logger.info("%s: live-runner session %s (route %s), %s %s → %d", job_id, _shown(session), route,
                        request.method, request.path, response.status_code)  # fmt: skip
        return response
