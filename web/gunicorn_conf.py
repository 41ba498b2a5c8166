"""Every gunicorn setting and hook of the web front end; `llm-runner web` starts gunicorn with it.

Streams are long-lived and mostly idle, so the gevent worker holds them as greenlets; on SIGTERM
the app drains: open streams get SHUTDOWN_GRACE_S to finish, then end with an error chunk.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from types import FrameType
from typing import Any

from gunicorn import glogging

from common.errors import ConfigError
from common.logs import LOG_FORMAT, configure_logging
from common.settings import Settings

try:
    _settings = Settings.from_env(os.environ)
except ConfigError:
    _settings = Settings()  # the app itself reports the bad variable at start
_grace = _settings.shutdown_grace_s


class RunnerLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's own lines (and its access lines) in the runner's one log format."""

    error_fmt = LOG_FORMAT
    access_fmt = LOG_FORMAT
    datefmt = None  # logging's default, as configure_logging leaves it


bind = [f"0.0.0.0:{_settings.port}"]
logger_class = RunnerLogger
loglevel = _settings.log_level.lower()

# gunicorn's access log costs CPU on every request even when filtered out, so it is off unless
# ACCESS_LOG is set; each /llm call gets its own line from the runner when its job ends.
accesslog = "-" if os.environ.get("ACCESS_LOG") else None
_OWN_METRICS_DIR = [""]

worker_class = "gevent"
worker_connections = 2000
# go-livepeer reuses connections; keep them a little longer than Go's 90 s idle default.
keepalive = 95
graceful_timeout = int(_grace) + 5
timeout = 30
# The control socket lives at one path per user; several runners on a host would collide.
control_socket_disable = True


def on_starting(server: Any) -> None:
    """Configure the runner's logging, and give prometheus_client's multiprocess mode a fresh
    directory shared by the workers (both are inherited by the forked workers)."""
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _OWN_METRICS_DIR[0] = tempfile.mkdtemp(prefix="llm-runner-metrics-")


def on_exit(server: Any) -> None:
    """Remove the metrics directory this server made for itself."""
    if _OWN_METRICS_DIR[0]:
        shutil.rmtree(_OWN_METRICS_DIR[0], ignore_errors=True)


def child_exit(server: Any, worker: Any) -> None:
    """Let the metrics of a gunicorn worker that exited stop counting as live."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker: Any) -> None:
    """Bound the worker's connections; make SIGTERM start the app's drain before gunicorn stops
    accepting connections."""
    from common import heap
    from web.connections import bound_connections

    bound_connections(worker, _settings.max_connections, _settings.header_timeout_s)
    heap.settle()  # the app is loaded: what exists now lives as long as the process
    original = worker.handle_exit

    def handle_exit(sig: int, frame: FrameType | None) -> None:
        from web.runtime import runtime  # loaded with the app already; kept out of the master

        runtime(worker.wsgi).drain()
        original(sig, frame)

    worker.handle_exit = handle_exit
    signal.signal(signal.SIGTERM, handle_exit)

    from web.live_runner import LiveRunners

    # Registration with go-livepeer's live-runner registry, if configured; never by a worker told to
    # stop while it booted (it would take a registration over only to hand it back).
    if worker.alive:
        LiveRunners.start(worker.wsgi)


def worker_exit(server: Any, worker: Any) -> None:
    """Hand this worker's live-runner registrations over to another web process, or unregister them."""
    if getattr(worker, "wsgi", None) is not None:
        from web.live_runner import LiveRunners

        LiveRunners.finish(worker.wsgi, timeout_s=10.0)
