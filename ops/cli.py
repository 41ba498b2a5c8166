"""`llm-runner`: the operator's command line (start the stack, one worker per GPU, and more)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path

from common.errors import ConfigError
from common.logs import configure_logging
from common.settings import Settings
from ops import commands, compose, liverunner, serve
from ops.compose import parse_gpus
from ops.ready import announce_when_ready
from ops.secrets_file import shown_url
from ops.supervise import (
    Proc,
    Supervisor,
    embedded_engine,
    embedded_redis,
    gpu_worker_envs,
    ollama_answers,
    web_command,
    worker_command,
)
from worker.gpu import list_gpus

logger = logging.getLogger("llm-runner")


def _gpus(value: str) -> list[int]:
    """`all` (every GPU NVML sees; one worker even without a GPU), else as `llm-runner compose --gpus`:
    a count N (GPUs 0..N-1) or host GPU indices such as `0,2` (one index: `2,`)."""
    if value.strip() == "all":
        return list_gpus() or [0]
    return parse_gpus(value)


def _worker_procs(env: dict[str, str], args: argparse.Namespace) -> list[Proc]:
    urls = [u.strip() for u in (args.ollama_urls or env.get("OLLAMA_URL", Settings.ollama_url)).split(",")]
    envs = gpu_worker_envs(env, args.gpus, urls)
    procs = []
    for e in envs:
        engine = e.get("OPENAI_BASE_URL") if e.get("BACKEND", "").lower() == "openai" else e["OLLAMA_URL"]
        about = f"the worker of GPU {e['GPU_INDEX']}, its engine at {engine}"
        procs.append(Proc(f"worker-gpu{e['GPU_INDEX']}", worker_command(), e, about=about))
    return procs


def cmd_up(args: argparse.Namespace) -> int:
    """Run Redis (embedded unless REDIS_URL is set), the web front end and one worker per GPU.

    With no engine configured or answering on Ollama's default port, the embedded CPU engine
    (llama-cpp-python serving SmolLM2) is started too, behind one worker. What the embedded
    Redis and engine print goes to log files in one private directory, unless --verbose.
    """
    env = dict(os.environ)
    procs: list[Proc] = []
    state: Path | None = None
    if not env.get("REDIS_URL"):
        state = Path(tempfile.mkdtemp(prefix="llm-runner-"))
        procs.append(embedded_redis(env, args.redis_port, workdir=str(state / "redis")))
    if not env.get("OLLAMA_URL") and not env.get("OPENAI_BASE_URL") and not ollama_answers():
        state = state or Path(tempfile.mkdtemp(prefix="llm-runner-"))
        procs.append(embedded_engine(env))
        args.gpus = args.gpus[:1]
    if state is not None and not args.verbose:
        for proc in procs:  # the embedded services: a Redis banner, llama.cpp's whole model dump
            proc.log = state / f"{proc.name}.log"
    settings = Settings.from_env(env)
    web = f"the web front end on http://0.0.0.0:{settings.port} (/health says LOADING until every model is served)"
    procs.append(Proc("web", web_command(), env, about=web))  # binds PORT, read by web/gunicorn_conf.py
    procs += _worker_procs(env, args)
    models = ", ".join(m.model_id for m in settings.models)
    summary = f"serving {models}, Redis {shown_url(env['REDIS_URL'])}"
    stop = threading.Event()
    announce_when_ready(settings.port, summary, auth=settings.auth_token is not None, stop=stop)
    try:
        return Supervisor(procs).run()
    finally:
        stop.set()


def cmd_workers(args: argparse.Namespace) -> int:
    """Run one worker per GPU of this host, each bound to its GPU and its Ollama."""
    env = dict(os.environ)
    Settings.from_env(env)
    return Supervisor(_worker_procs(env, args)).run()


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the whole runner and print what to fix."""
    return commands.doctor(Settings.from_env(os.environ))


def cmd_models_pull(args: argparse.Namespace) -> int:
    """Pull the configured models on every Ollama of the fleet."""
    settings = Settings.from_env(os.environ)
    urls = [u.strip() for u in args.ollama_urls.split(",")] if args.ollama_urls else None
    return commands.pull_models(settings, commands.ollama_urls(settings, urls))


def _price(value: str) -> tuple[str, float]:
    model_id, sep, price = value.rpartition("=")
    try:
        if not sep or not model_id:
            raise ValueError
        return model_id, float(price)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MODEL_ID=USD_PER_MILLION_TOKENS, got {value!r}") from None


def cmd_aimodels(args: argparse.Namespace) -> int:
    """Print aiModels.json entries for go-livepeer."""
    settings = Settings.from_env(os.environ)
    entries = commands.aimodels(
        settings, args.url, token=args.token if args.token is not None else settings.auth_token,
        usd_per_million=dict(args.price), default_usd=args.usd_per_million_tokens, warm=not args.cold,
    )  # fmt: skip
    commands.print_aimodels(entries)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    parser = argparse.ArgumentParser(prog="llm-runner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("up", cmd_up, "run the whole stack on this machine (web, workers, and Redis unless REDIS_URL is set)"),
        ("workers", cmd_workers, "run one worker per GPU of this host against the fleet's Redis"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--gpus",
            type=_gpus,
            default="all",
            help="'all' (default), a count N (GPUs 0..N-1), or host GPU indices such as 0,1 (one index: 2,)",
        )
        p.add_argument(
            "--ollama-urls",
            help="Ollama URL per GPU, comma-separated in --gpus order (default: OLLAMA_URL for every GPU)",
        )
        p.set_defaults(func=func)
        if name == "up":
            p.add_argument("--redis-port", type=int, help="port of the embedded Redis (default 6379, or a free one)")
            p.add_argument("-v", "--verbose", action="store_true",
                           help="show what the embedded Redis and engine print (default: in log files)")  # fmt: skip
    compose.add_parser(sub)
    serve.add_parsers(sub)
    doctor = sub.add_parser("doctor", help="check Redis, workers, Ollamas, GPUs and models; print what to fix")
    doctor.set_defaults(func=cmd_doctor)
    models = sub.add_parser("models", help="manage the models on the fleet's Ollamas")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    pull = models_sub.add_parser("pull", help="pull the configured models on every Ollama (workers' and OLLAMA_URL)")
    pull.add_argument("--ollama-urls", help="comma-separated Ollama URLs instead of the fleet's")
    pull.set_defaults(func=cmd_models_pull)
    ai = sub.add_parser("aimodels", help="print aiModels.json entries for go-livepeer (capacity from the fleet)")
    ai.add_argument("--url", required=True, help="this runner's URL as go-livepeer reaches it, e.g. http://web:8000")
    ai.add_argument("--token", help="bearer token go-livepeer sends (default: AUTH_TOKEN)")
    ai.add_argument("--usd-per-million-tokens", type=float, default=0.0, help="price of every model (default 0)")
    ai.add_argument("--price", type=_price, action="append", default=[], metavar="MODEL_ID=USD",
                    help="price of one model in USD per million tokens (repeatable)")  # fmt: skip
    ai.add_argument("--cold", action="store_true", help="mark the models warm=false")
    ai.set_defaults(func=cmd_aimodels)
    liverunner.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `llm-runner` console script."""
    args = build_parser().parse_args(argv)
    configure_logging(os.environ.get("LOG_LEVEL", "INFO").upper())
    try:
        status: int = args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc.msg}", file=sys.stderr)
        return 2
    return status
