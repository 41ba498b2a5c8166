"""`llm-runner web` and `llm-runner dashboard`: the commands the Procfile, the image and compose run.

`web` execs gunicorn as ops.supervise.web_command builds it (all its settings in
web/gunicorn_conf.py). `dashboard` runs rq-dashboard behind its HTTP Basic login, and refuses to
start without one: the dashboard shows every queued prompt and can cancel or delete jobs. It
never sends a job's webhooks nor calls its callbacks (ops.job_hooks).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from redis import Redis

from common.errors import ConfigError
from common.redis_client import make_redis
from common.redis_conn import node_options
from common.settings import Settings
from ops.job_hooks import disable_job_hooks
from ops.supervise import web_command

DASHBOARD_PORT = 9181
# rq-dashboard reads every option from RQ_DASHBOARD_<OPTION> (its cli.main runs click with
# auto_envvar_prefix="RQ_DASHBOARD"); its Basic login is on when USERNAME is set.
DASHBOARD_USERNAME = "RQ_DASHBOARD_USERNAME"
DASHBOARD_PASSWORD = "RQ_DASHBOARD_PASSWORD"
DASHBOARD_REDIS_URL = "RQ_DASHBOARD_REDIS_URL"


def cmd_web(args: argparse.Namespace) -> int:
    """Replace this process with gunicorn serving the runner's web front end."""
    argv = web_command()
    os.execv(argv[0], argv)
    return 1  # not reached: execv only returns by raising


def dashboard_argv(bind: str, port: int) -> list[str]:
    """rq-dashboard's arguments: jobs are JSON-serialised, so it must decode them as JSON."""
    return ["--json", "--bind", bind, "--port", str(port)]


def dashboard_port(raw: str) -> int:
    """DASHBOARD_PORT's value, or the default when it is empty; ConfigError when it is not a port."""
    if not raw.strip():
        return DASHBOARD_PORT
    if not raw.strip().isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"DASHBOARD_PORT: expected a port number, got {raw!r}")
    return int(raw)


def dashboard_url(settings: Settings) -> str:
    """RQ_DASHBOARD_REDIS_URL: REDIS_URL, or through Sentinel the `redis+sentinel://` URL rq-dashboard
    reads (redis-sentinel-url: sentinels, master name, database; no password, it shows the URL)."""
    if not settings.redis_sentinels:
        return settings.redis_url
    sentinels = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in settings.redis_sentinels)
    db = node_options(settings.redis_url).get("db", 0)
    return f"redis+sentinel://{sentinels}/{settings.redis_sentinel_master}/{db}"


def follow_the_master(settings: Settings) -> None:
    """Give rq-dashboard the runner's own Redis client when it goes through Sentinel.

    rq-dashboard makes its connections with redis-sentinel-url's `connect` (rq_dashboard/web.py
    imports it as `from_url` and calls it per request), which takes a Redis password from the URL
    but the sentinels' password only from a config file, and knows no TLS. Replacing that one
    function gives it the client every runner process uses: one pool that follows the master,
    with REDIS_URL's password, database and TLS and REDIS_SENTINEL_PASSWORD.
    """
    import rq_dashboard.web

    client = make_redis(settings.redis_target, max_connections=8)

    def connect(url: str, **options: Any) -> tuple[None, Redis]:
        return None, client

    rq_dashboard.web.from_url = connect


def dashboard_env(environ: dict[str, str]) -> dict[str, str]:
    """rq-dashboard's environment: REDIS_URL passed as its own variable, never on the command line
    (where `ps` shows it); ConfigError naming what to set when the login is missing."""
    missing = [name for name in (DASHBOARD_USERNAME, DASHBOARD_PASSWORD) if not environ.get(name, "").strip()]
    if missing:
        raise ConfigError(
            f"refusing to start rq-dashboard without a login: set {' and '.join(missing)} "
            "(the dashboard shows every queued prompt and can cancel and delete jobs)"
        )
    env = dict(environ)
    env.setdefault(DASHBOARD_REDIS_URL, dashboard_url(Settings.from_env(environ)))
    return env


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Run rq-dashboard on --bind:--port with its login; exits 2 without one."""
    port = args.port if args.port is not None else dashboard_port(os.environ.get("DASHBOARD_PORT", ""))
    os.environ.update(dashboard_env(dict(os.environ)))
    disable_job_hooks()  # its pages must never make this host send a job's webhooks (ops.job_hooks)
    settings = Settings.from_env(os.environ)
    if settings.redis_sentinels:
        follow_the_master(settings)
    from rq_dashboard.cli import run  # its click command; `main` would read sys.argv

    run.main(args=dashboard_argv(args.bind, port), prog_name="rq-dashboard", auto_envvar_prefix="RQ_DASHBOARD")
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register `web` and `dashboard` on an argparse subparsers object."""
    text = "run the web front end (gunicorn; port PORT, default 8000)"
    web = subparsers.add_parser("web", help=text, description=text)
    web.set_defaults(func=cmd_web)
    text = "run rq-dashboard; needs RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD"
    dash = subparsers.add_parser("dashboard", help=text, description=text)
    dash.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1: reach it by SSH)")
    dash.add_argument("--port", type=int, help=f"port (default DASHBOARD_PORT, else {DASHBOARD_PORT})")
    dash.set_defaults(func=cmd_dashboard)
