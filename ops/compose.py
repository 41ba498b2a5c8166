"""`llm-runner compose`: a Docker Compose file for one host, with one Ollama and one worker per GPU.

The committed files under compose/ are this module's output; tests/test_compose.py checks that they
still are. Every `${VAR:-default}` below is filled in by Compose from compose/.env (see .env.example);
the defaults come from `Settings`, so a file generated today matches the runner's own defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import yaml

from common.models import DEFAULT_MODELS
from common.settings import Settings
from ops import secrets_file

DEFAULT_IMAGE = "livepeer-llm-runner:local"
DEFAULT_OLLAMA_IMAGE = "ollama/ollama:0.12.6"
REDIS_IMAGE = "redis:7.4-alpine"
GOLIVEPEER_IMAGE = "livepeer/go-livepeer:v0.8.10"

NETWORK = "llm-runner"
WEB_PORT = 8000
DASHBOARD_PORT = 9181
OLLAMA_PORT = 11434
GOLIVEPEER_PORT = 8935
BUILD_CONTEXT = ".."  # the repository root, relative to compose/ where the generated files live
AI_MODELS_PATH = "/etc/livepeer/aiModels.json"

# Redis requires a password; compose refuses to start without one (`llm-runner compose -o FILE`
# writes one into .env beside FILE). Generated passwords are URL-safe, so they fit in the URL.
REDIS_PASSWORD = "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env (llm-runner compose --output writes one)}"
# REDIS_HOST: another host's Redis, for a host that runs only Ollamas and workers.
REDIS_URL = f"redis://:{REDIS_PASSWORD}@${{REDIS_HOST:-redis}}:6379/0"
DASHBOARD_USERNAME = "${RQ_DASHBOARD_USERNAME:-operator}"
DASHBOARD_PASSWORD = (
    "${RQ_DASHBOARD_PASSWORD:?set RQ_DASHBOARD_PASSWORD in .env (llm-runner compose --output writes one)}"
)
# Docker's SIGTERM-to-SIGKILL delay; it must exceed the drain (SHUTDOWN_GRACE_S + about 5 s).
STOP_GRACE_PERIOD = "${STOP_GRACE_PERIOD:-30s}"

# The slim image has no curl: the checks use Python. A worker is healthy while its heartbeat keeps
# its fleet record (host = the container's hostname) alive in Redis; the record expires in seconds.
WEB_HEALTHCHECK = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{WEB_PORT}/health', timeout=4)"
# Healthy means up *and* locked: an answer other than 401 without credentials fails the check.
DASHBOARD_HEALTHCHECK = (
    f"import http.client, sys; c = http.client.HTTPConnection('127.0.0.1', {DASHBOARD_PORT}, timeout=4); "
    "c.request('GET', '/'); sys.exit(0 if c.getresponse().status == 401 else 1)"
)
WORKER_HEALTHCHECK = (
    "import os, socket, sys; from redis import Redis; from common.fleet import read_fleet; "
    "records = read_fleet(Redis.from_url(os.environ['REDIS_URL'], socket_timeout=4)); "
    "sys.exit(0 if any(r.host == socket.gethostname() for r in records) else 1)"
)

# Comments placed above the generated lines that contain these fragments (YAML dumps carry none).
_NOTES: tuple[tuple[str, str], ...] = (
    ("GPU_INDEX:", "The container sees only its reserved GPU, which NVML numbers 0 whatever its host index."),
    ("OLLAMA_NUM_PARALLEL:", "Slots per model: a worker and its Ollama must use the same value."),
    ("OLLAMA_MAX_LOADED_MODELS:", "1 model in VRAM at a time, as the worker's fit check assumes; raise on big GPUs."),
    ("stop_grace_period:", "SIGKILL only after the drain: more than SHUTDOWN_GRACE_S + 5 s."),
    ("- -orchestrator", "Not set: -pricePerUnit (with -aiWorker, aiModels.json prices each model), -nvidia."),
    ("-aiRunnerImageOverrides=", "go-livepeer may pull the llm image even for `url` models: name ours, already local."),
    ("- /var/run/docker.sock:", "-aiWorker lists its managed containers through the Docker API at start, or exits."),
    ("-startupAvailabilityCheck=", "Else it exits at start when it cannot reach its own -serviceAddr (NAT, tests)."),
)


def parse_gpus(value: str) -> list[int]:
    """`N` means GPUs 0..N-1; `0,2` (or `2,` for one index) lists host GPU indices."""
    text = value.strip()
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise argparse.ArgumentTypeError(f"expected at least 1 GPU, got {value!r}")
            return list(range(count))
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a GPU count like 2 or indices like 0,1; got {value!r}") from None
    if not gpus or any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"expected distinct GPU indices >= 0, got {value!r}")
    return gpus


def command_line(
    gpus: list[int],
    *,
    image: str = DEFAULT_IMAGE,
    ollama_image: str = DEFAULT_OLLAMA_IMAGE,
    include_golivepeer: bool = False,
) -> str:
    """The `llm-runner compose` invocation that generates this file."""
    words = ["llm-runner", "compose", "--gpus", _gpus_arg(gpus)]
    if image != DEFAULT_IMAGE:
        words += ["--image", image]
    if ollama_image != DEFAULT_OLLAMA_IMAGE:
        words += ["--ollama-image", ollama_image]
    if include_golivepeer:
        words.append("--golivepeer")
    return " ".join(words)


def render_compose(
    gpus: list[int],
    *,
    image: str = DEFAULT_IMAGE,
    ollama_image: str = DEFAULT_OLLAMA_IMAGE,
    include_golivepeer: bool = False,
) -> str:
    """The docker-compose YAML for these host GPUs (one Ollama and one worker each)."""
    if not gpus or len(set(gpus)) != len(gpus) or any(g < 0 for g in gpus):
        raise ValueError(f"expected distinct GPU indices >= 0, got {gpus!r}")
    services: dict[str, Any] = {
        "redis": _redis(),
        "web": _web(image),
        "dashboard": _dashboard(image),
    }
    volumes: dict[str, Any] = {}
    for gpu in gpus:
        services[f"ollama-gpu{gpu}"] = _ollama(gpu, ollama_image)
        services[f"worker-gpu{gpu}"] = _worker(gpu, image)
        volumes[f"ollama-gpu{gpu}"] = {}
    if include_golivepeer:
        services["go-livepeer"] = _golivepeer(image, gpus)
        volumes["golivepeer-data"] = {}
    document = {
        "name": "llm-runner",
        "services": services,
        "networks": {NETWORK: {"name": NETWORK}},
        "volumes": volumes,
    }
    # A JSON round trip gives every service its own objects, so the dump has no YAML aliases.
    plain = json.loads(json.dumps(document))
    body: str = yaml.safe_dump(plain, sort_keys=False, default_flow_style=False, width=10_000)
    command = command_line(gpus, image=image, ollama_image=ollama_image, include_golivepeer=include_golivepeer)
    header = (
        f"# Generated by `{command}` (ops/compose.py); regenerate it rather than edit it.\n"
        "# Compose fills in its variables from .env beside this file (cp .env.example .env); it refuses to\n"
        "# start until .env sets REDIS_PASSWORD and RQ_DASHBOARD_PASSWORD (`--output` generates both).\n"
    )
    return header + _annotate(body)


def add_parser(subparsers: Any) -> None:
    """Register the `compose` subcommand on an argparse subparsers object."""
    text = "write a docker-compose file: Redis, web, rq-dashboard, and an Ollama plus a worker per GPU"
    p = subparsers.add_parser("compose", help=text, description=text)
    p.add_argument(
        "--gpus",
        type=parse_gpus,
        default=[0],
        help="a GPU count N (GPUs 0..N-1) or host GPU indices such as 0,1 (one index: 2,); default 1",
    )
    p.add_argument("--golivepeer", action="store_true", help="add a go-livepeer AI orchestrator that uses this runner")
    p.add_argument(
        "--image", default=DEFAULT_IMAGE, help=f"name of the runner image built here (default {DEFAULT_IMAGE})"
    )
    p.add_argument(
        "--ollama-image", default=DEFAULT_OLLAMA_IMAGE, help=f"Ollama image (default {DEFAULT_OLLAMA_IMAGE})"
    )
    p.add_argument(
        "--output",
        "-o",
        help="file to write (default: standard output); also writes the passwords it needs into .env beside it",
    )
    p.set_defaults(func=cmd_compose)


def cmd_compose(args: argparse.Namespace) -> int:
    """Write the compose file to --output or standard output."""
    text = render_compose(
        args.gpus, image=args.image, ollama_image=args.ollama_image, include_golivepeer=args.golivepeer
    )
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
        env_path, written = secrets_file.ensure(os.path.join(os.path.dirname(args.output) or ".", ".env"))
        if written:
            print(f"wrote new {', '.join(written)} into {env_path}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _gpus_arg(gpus: list[int]) -> str:
    if gpus == list(range(len(gpus))):
        return str(len(gpus))
    return ",".join(str(g) for g in gpus) + ("," if len(gpus) == 1 else "")


def _var(name: str, default: object) -> str:
    """`${NAME:-default}`, the default written as the runner parses it."""
    if isinstance(default, bool):
        text = "true" if default else "false"
    elif isinstance(default, float):
        text = f"{default:g}"
    else:
        text = str(default)
    return f"${{{name}:-{text}}}"


def _setting_defaults() -> dict[str, object]:
    """Default of each runner variable the services pass through ('' leaves it unset)."""
    s = Settings
    return {
        "MODELS": DEFAULT_MODELS,
        "AUTH_TOKEN": "",
        "METRICS_TOKEN": "",
        "MAX_QUEUE": "",
        "QUEUE_TIMEOUT_S": s.queue_timeout_s,
        "WORKER_SILENCE_S": s.worker_silence_s,
        "MAX_BODY_BYTES": s.max_body_bytes,
        "MAX_MESSAGES": s.max_messages,
        "MAX_PROMPT_CHARS": s.max_prompt_chars,
        "MAX_TOKENS": s.max_tokens_limit,
        "OLLAMA_NUM_PARALLEL": s.slots,
        "NUM_CTX": s.num_ctx,
        "KEEP_ALIVE": s.keep_alive,
        "PULL_MODELS": s.pull_models,
        "VRAM_MB": "",
        "VRAM_RESERVE_MB": s.vram_reserve_mb,
        "OLLAMA_CONNECT_TIMEOUT_S": s.connect_timeout_s,
        "OLLAMA_FIRST_BYTE_TIMEOUT_S": s.first_byte_timeout_s,
        "OLLAMA_IDLE_TIMEOUT_S": s.idle_timeout_s,
        "SHUTDOWN_GRACE_S": s.shutdown_grace_s,
        "PROMPT_RETENTION_S": s.prompt_retention_s,
        "DROP_PROMPTS_AT_START": s.drop_prompts_at_start,
        "LOG_LEVEL": s.log_level,
    }


def _env(*names: str) -> dict[str, str]:
    defaults = _setting_defaults()
    return {name: _var(name, defaults[name]) for name in names}


def _python_check(code: str, *, interval: str, start_period: str) -> dict[str, Any]:
    return {
        "test": ["CMD", "python", "-c", code],
        "interval": interval,
        "timeout": "5s",
        "retries": 3,
        "start_period": start_period,
    }


def _runner_service(image: str) -> dict[str, Any]:
    """What the web, the dashboard and the workers share: our image, built from the repository."""
    return {
        "image": image,
        "build": {"context": BUILD_CONTEXT, "dockerfile": "Dockerfile"},
        "init": True,
        "restart": "unless-stopped",
    }


def _redis() -> dict[str, Any]:
    return {
        "image": REDIS_IMAGE,
        # Queues and streams are transient: no snapshots, no append-only file. redis-server replaces
        # its process title, so `ps` does not show the password.
        "command": ["redis-server", "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no"],
        # redis-cli (the healthcheck) authenticates with REDISCLI_AUTH.
        "environment": {"REDISCLI_AUTH": REDIS_PASSWORD},
        "restart": "unless-stopped",
        "healthcheck": {
            "test": ["CMD-SHELL", "redis-cli ping | grep -q PONG"],
            "interval": "5s",
            "timeout": "3s",
            "retries": 10,
        },
        "networks": [NETWORK],
    }


def _web(image: str) -> dict[str, Any]:
    environment = {"REDIS_URL": REDIS_URL}
    environment.update(
        _env(
            "MODELS", "AUTH_TOKEN", "METRICS_TOKEN", "MAX_QUEUE", "QUEUE_TIMEOUT_S", "WORKER_SILENCE_S",
            "MAX_BODY_BYTES", "MAX_MESSAGES", "MAX_PROMPT_CHARS", "MAX_TOKENS", "SHUTDOWN_GRACE_S", "LOG_LEVEL",
        )
    )  # fmt: skip
    environment["ACCESS_LOG"] = "${ACCESS_LOG:-}"
    return {
        **_runner_service(image),
        "command": ["llm-runner", "web"],
        "environment": environment,
        "ports": [f"${{WEB_BIND:-127.0.0.1}}:${{PORT:-{WEB_PORT}}}:{WEB_PORT}"],
        "depends_on": {"redis": {"condition": "service_healthy"}},
        "stop_grace_period": STOP_GRACE_PERIOD,
        "healthcheck": _python_check(WEB_HEALTHCHECK, interval="10s", start_period="20s"),
        "networks": [NETWORK],
    }


def _dashboard(image: str) -> dict[str, Any]:
    return {
        **_runner_service(image),
        # The Procfile's dashboard, listening on the container's network (the host publishes it on
        # 127.0.0.1 only); it refuses to start without its login.
        "command": ["llm-runner", "dashboard", "--bind", "0.0.0.0", "--port", str(DASHBOARD_PORT)],
        "environment": {
            "REDIS_URL": REDIS_URL,
            "RQ_DASHBOARD_USERNAME": DASHBOARD_USERNAME,
            "RQ_DASHBOARD_PASSWORD": DASHBOARD_PASSWORD,
        },
        "ports": [f"127.0.0.1:${{DASHBOARD_PORT:-{DASHBOARD_PORT}}}:{DASHBOARD_PORT}"],
        "depends_on": {"redis": {"condition": "service_healthy"}},
        "healthcheck": _python_check(DASHBOARD_HEALTHCHECK, interval="30s", start_period="20s"),
        "networks": [NETWORK],
    }


def _gpu_reservation(gpu: int, capability: str) -> dict[str, Any]:
    device = {"driver": "nvidia", "device_ids": [str(gpu)], "capabilities": [capability]}
    return {"resources": {"reservations": {"devices": [device]}}}


def _ollama(gpu: int, ollama_image: str) -> dict[str, Any]:
    defaults = _setting_defaults()
    return {
        "image": ollama_image,
        "environment": {
            "OLLAMA_NUM_PARALLEL": _var("OLLAMA_NUM_PARALLEL", defaults["OLLAMA_NUM_PARALLEL"]),
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_MAX_LOADED_MODELS": "${OLLAMA_MAX_LOADED_MODELS:-1}",
            "OLLAMA_CONTEXT_LENGTH": _var("NUM_CTX", defaults["NUM_CTX"]),
        },
        "volumes": [f"ollama-gpu{gpu}:/root/.ollama"],
        "deploy": _gpu_reservation(gpu, "gpu"),
        "restart": "unless-stopped",
        # The image has the ollama client but no curl; `ollama list` fails unless the server answers.
        "healthcheck": {
            "test": ["CMD", "ollama", "list"],
            "interval": "10s",
            "timeout": "5s",
            "retries": 5,
            "start_period": "30s",
        },
        "networks": [NETWORK],
    }


def _worker(gpu: int, image: str) -> dict[str, Any]:
    environment = {
        "REDIS_URL": REDIS_URL,
        "OLLAMA_URL": f"http://ollama-gpu{gpu}:{OLLAMA_PORT}",
        "GPU_INDEX": "0",
    }
    environment.update(
        _env(
            "MODELS", "OLLAMA_NUM_PARALLEL", "NUM_CTX", "KEEP_ALIVE", "PULL_MODELS", "VRAM_MB", "VRAM_RESERVE_MB",
            "OLLAMA_CONNECT_TIMEOUT_S", "OLLAMA_FIRST_BYTE_TIMEOUT_S", "OLLAMA_IDLE_TIMEOUT_S", "SHUTDOWN_GRACE_S",
            "PROMPT_RETENTION_S", "DROP_PROMPTS_AT_START", "LOG_LEVEL",
        )
    )  # fmt: skip
    # NVML (nvidia-ml-py) needs libnvidia-ml.so, which the toolkit mounts for the `utility` capability.
    environment["NVIDIA_DRIVER_CAPABILITIES"] = "utility"
    return {
        **_runner_service(image),
        "command": ["python", "-m", "worker"],
        "environment": environment,
        "deploy": _gpu_reservation(gpu, "utility"),
        "depends_on": {
            "redis": {"condition": "service_healthy"},
            f"ollama-gpu{gpu}": {"condition": "service_healthy"},
        },
        "stop_grace_period": STOP_GRACE_PERIOD,
        "healthcheck": _python_check(WORKER_HEALTHCHECK, interval="15s", start_period="30s"),
        "networks": [NETWORK],
    }


def _golivepeer(image: str, gpus: list[int]) -> dict[str, Any]:
    overrides = json.dumps({"batch": {"llm": image}}, separators=(",", ":"))
    return {
        "image": GOLIVEPEER_IMAGE,
        # The image's entrypoint is the livepeer binary: these are its flags. Left out on purpose:
        # -pricePerUnit (with -aiWorker each model's price comes from aiModels.json), -nvidia (the
        # runner owns the GPUs), -ethKeystorePath (default: the keystore in the data directory).
        "command": [
            "-orchestrator",
            "-aiWorker",
            f"-aiModels={AI_MODELS_PATH}",
            f"-aiRunnerImageOverrides={overrides}",
            "-serviceAddr=${GOLIVEPEER_SERVICE_ADDR:?set GOLIVEPEER_SERVICE_ADDR (public host:port) in .env}",
            f"-httpAddr=0.0.0.0:{GOLIVEPEER_PORT}",
            "-network=${GOLIVEPEER_NETWORK:-offchain}",
            "-ethUrl=${GOLIVEPEER_ETH_URL:-}",
            "-ethOrchAddr=${GOLIVEPEER_ETH_ORCH_ADDR:-}",
            "-ethPassword=${GOLIVEPEER_ETH_PASSWORD:-}",
            "-startupAvailabilityCheck=false",
        ],
        "volumes": [
            {
                "type": "bind",
                "source": "./aiModels.json",
                "target": AI_MODELS_PATH,
                "read_only": True,
                "bind": {"create_host_path": False},
            },
            "golivepeer-data:/root/.lpData",
            "/var/run/docker.sock:/var/run/docker.sock",
        ],
        "ports": [f"${{GOLIVEPEER_PORT:-{GOLIVEPEER_PORT}}}:{GOLIVEPEER_PORT}"],
        # go-livepeer reads /hardware/info once, at start: the workers must have registered their GPUs.
        "depends_on": {
            "web": {"condition": "service_healthy"},
            **{f"worker-gpu{gpu}": {"condition": "service_healthy"} for gpu in gpus},
        },
        "restart": "unless-stopped",
        # No curl in that image either; bash's /dev/tcp tells whether the node listens yet.
        "healthcheck": {
            "test": ["CMD", "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{GOLIVEPEER_PORT}"],
            "interval": "15s",
            "timeout": "5s",
            "retries": 5,
            "start_period": "300s",
        },
        "networks": [NETWORK],
    }


def _annotate(body: str) -> str:
    """Insert the _NOTES comments above the lines they explain, at those lines' indentation."""
    out: list[str] = []
    for line in body.splitlines():
        for fragment, note in _NOTES:
            if fragment in line:
                indent = line[: len(line) - len(line.lstrip())]
                out.append(f"{indent}# {note}")
        out.append(line)
    return "\n".join(out) + "\n"
