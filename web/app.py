"""The app factory: settings, one Redis pool, the routes, and JSON for every error (go-livepeer's
shape, or OpenAI's on the OpenAI API's routes)."""

from __future__ import annotations

import logging
import os

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from common.errors import RunnerError
from common.redis_client import make_redis
from common.settings import Settings
from web import auth, live_routes, openai_errors
from web.live_runner import LiveRunners
from web.routes import bp
from web.runtime import EXTENSION, Runtime

logger = logging.getLogger(__name__)

# Each open request holds a pooled connection only for a command or two; hundreds of streams
# share far fewer connections (and a burst past this waits briefly instead of failing).
REDIS_CONNECTIONS = 256


def build_app(settings: Settings | None = None) -> Flask:
    """Build the app: settings from the environment unless given, one Redis pool, the routes."""
    settings = settings or Settings.from_env(os.environ)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # Answer every route directly, never with a redirect: go-livepeer POSTs to `<url>/llm` (its
    # generated client, ai/worker/runner.gen.go NewGenLLMRequestWithBody) and a 308 costs a
    # second round trip, or the job with a client that does not follow it.
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    app.url_map.redirect_defaults = False
    app.extensions[EXTENSION] = Runtime(settings, make_redis(settings.redis_target, max_connections=REDIS_CONNECTIONS))
    app.register_blueprint(bp)
    live_routes.install(app)
    LiveRunners.attach(app)  # started by gunicorn's post_worker_init when LIVE_RUNNER_ORCH_URL is set
    auth.install(app, settings)
    _register_error_handlers(app)
    return app


def _detail(status: int, msg: str) -> Response:
    response = jsonify({"detail": {"msg": msg}})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _register_error_handlers(app: Flask) -> None:
    """Every error is `{"detail": {"msg"}}` JSON; a too-large body is a 400 go-livepeer understands."""

    @app.errorhandler(RunnerError)
    def runner_error(exc: RunnerError) -> Response:
        if exc.status >= 500:
            logger.warning("answering %d: %s", exc.status, exc.msg)
        if openai_errors.speaks_openai(request):
            return openai_errors.runner_error_response(exc)
        return _detail(exc.status, exc.msg)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Response:
        msg = f"request body too large (at most {app.config['MAX_CONTENT_LENGTH']} bytes)"
        if openai_errors.speaks_openai(request):
            return openai_errors.http_error_response(413, msg)
        return _detail(400, msg)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if openai_errors.speaks_openai(request):
            return openai_errors.http_error_response(status, exc.description or exc.name)
        return _detail(400 if status in (413, 415, 422) else status, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        logger.exception("unexpected error")
        if openai_errors.speaks_openai(request):
            return openai_errors.http_error_response(500, "internal error in the runner")
        return _detail(500, "internal error in the runner")
