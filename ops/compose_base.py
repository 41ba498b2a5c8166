"""What every generated compose service shares: images, ports, passwords, defaults, healthchecks.

Every `${VAR:-default}` is filled in by Compose from compose/.env (see .env.example); the defaults
come from `Settings`, so a file generated today matches the runner's own defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.models import DEFAULT_MODELS
from common.settings import Settings

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
# Through the runner's own client, so it finds the master through Sentinel too (REDIS_SENTINELS).
WORKER_HEALTHCHECK = (
    "import os, socket, sys; from common.fleet import read_fleet; from common.redis_client import make_redis; "
    "from common.settings import Settings; records = read_fleet(make_redis(Settings.from_env(os.environ)"
    ".redis_target, max_connections=1, command_timeout_s=4)); "
    "sys.exit(0 if any(r.host == socket.gethostname() for r in records) else 1)"
)

HEALTHY = {"condition": "service_healthy"}


@dataclass(frozen=True)
class RedisWiring:
    """How the runner's services reach Redis: the variables they get and the services they wait for."""

    env: dict[str, str]
    depends_on: dict[str, dict[str, str]]


# One Redis (the `redis` service, or REDIS_HOST's).
SINGLE = RedisWiring({"REDIS_URL": REDIS_URL}, {"redis": HEALTHY})


def var(name: str, default: object) -> str:
    """`${NAME:-default}`, the default written as the runner parses it."""
    if isinstance(default, bool):
        text = "true" if default else "false"
    elif isinstance(default, float):
        text = f"{default:g}"
    else:
        text = str(default)
    return f"${{{name}:-{text}}}"


def setting_defaults() -> dict[str, object]:
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
        "REDIS_WAIT_REPLICAS": "",
        "REDIS_WAIT_MS": s.redis_wait_ms,
    }


def env(*names: str) -> dict[str, str]:
    """`NAME: ${NAME:-default}` for each runner variable named."""
    defaults = setting_defaults()
    return {name: var(name, defaults[name]) for name in names}


def python_check(code: str, *, interval: str, start_period: str) -> dict[str, Any]:
    """A healthcheck that runs Python code in our image (it has no curl)."""
    return {
        "test": ["CMD", "python", "-c", code],
        "interval": interval,
        "timeout": "5s",
        "retries": 3,
        "start_period": start_period,
    }


def runner_service(image: str) -> dict[str, Any]:
    """What the web, the dashboard and the workers share: our image, built from the repository."""
    return {
        "image": image,
        "build": {"context": BUILD_CONTEXT, "dockerfile": "Dockerfile"},
        "init": True,
        "restart": "unless-stopped",
    }


# A Redis service's healthcheck (redis-cli authenticates with REDISCLI_AUTH from its environment).
REDIS_HEALTHCHECK: dict[str, Any] = {
    "test": ["CMD-SHELL", "redis-cli ping | grep -q PONG"],
    "interval": "5s",
    "timeout": "3s",
    "retries": 10,
}
