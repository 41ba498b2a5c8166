"""The services of a generated compose file: Redis, web, rq-dashboard, an Ollama and a worker per GPU,
go-livepeer."""

from __future__ import annotations

import json
from typing import Any

from ops.compose_base import (
    AI_MODELS_PATH,
    DASHBOARD_HEALTHCHECK,
    DASHBOARD_PASSWORD,
    DASHBOARD_PORT,
    DASHBOARD_USERNAME,
    GOLIVEPEER_IMAGE,
    GOLIVEPEER_PORT,
    HEALTHY,
    NETWORK,
    OLLAMA_PORT,
    REDIS_HEALTHCHECK,
    REDIS_IMAGE,
    REDIS_PASSWORD,
    STOP_GRACE_PERIOD,
    WEB_HEALTHCHECK,
    WEB_PORT,
    WORKER_HEALTHCHECK,
    RedisWiring,
    env,
    python_check,
    runner_service,
    setting_defaults,
    var,
)


def redis() -> dict[str, Any]:
    """The one Redis: a password, no persistence (queues and streams are transient)."""
    return {
        "image": REDIS_IMAGE,
        # Queues and streams are transient: no snapshots, no append-only file. redis-server replaces
        # its process title, so `ps` does not show the password.
        "command": ["redis-server", "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no"],
        # redis-cli (the healthcheck) authenticates with REDISCLI_AUTH.
        "environment": {"REDISCLI_AUTH": REDIS_PASSWORD},
        "restart": "unless-stopped",
        "healthcheck": dict(REDIS_HEALTHCHECK),
        "networks": [NETWORK],
    }


def web(image: str, wiring: RedisWiring) -> dict[str, Any]:
    """The web front end (the Procfile's `web`), published on WEB_BIND:PORT."""
    environment = dict(wiring.env)
    environment.update(
        env(
            "MODELS", "AUTH_TOKEN", "METRICS_TOKEN", "MAX_QUEUE", "QUEUE_TIMEOUT_S", "WORKER_SILENCE_S",
            "MAX_BODY_BYTES", "MAX_MESSAGES", "MAX_PROMPT_CHARS", "MAX_TOKENS", "SHUTDOWN_GRACE_S", "LOG_LEVEL",
        )
    )  # fmt: skip
    environment["ACCESS_LOG"] = "${ACCESS_LOG:-}"
    return {
        **runner_service(image),
        "command": ["llm-runner", "web"],
        "environment": environment,
        "ports": [f"${{WEB_BIND:-127.0.0.1}}:${{PORT:-{WEB_PORT}}}:{WEB_PORT}"],
        "depends_on": dict(wiring.depends_on),
        "stop_grace_period": STOP_GRACE_PERIOD,
        "healthcheck": python_check(WEB_HEALTHCHECK, interval="10s", start_period="20s"),
        "networks": [NETWORK],
    }


def dashboard(image: str, wiring: RedisWiring) -> dict[str, Any]:
    """rq-dashboard behind its login, published on the host's loopback only."""
    return {
        **runner_service(image),
        # The Procfile's dashboard, listening on the container's network (the host publishes it on
        # 127.0.0.1 only); it refuses to start without its login.
        "command": ["llm-runner", "dashboard", "--bind", "0.0.0.0", "--port", str(DASHBOARD_PORT)],
        "environment": {
            **wiring.env,
            "RQ_DASHBOARD_USERNAME": DASHBOARD_USERNAME,
            "RQ_DASHBOARD_PASSWORD": DASHBOARD_PASSWORD,
        },
        "ports": [f"127.0.0.1:${{DASHBOARD_PORT:-{DASHBOARD_PORT}}}:{DASHBOARD_PORT}"],
        "depends_on": dict(wiring.depends_on),
        "healthcheck": python_check(DASHBOARD_HEALTHCHECK, interval="30s", start_period="20s"),
        "networks": [NETWORK],
    }


def gpu_reservation(gpu: int, capability: str) -> dict[str, Any]:
    """The NVIDIA device of one host GPU, with the capability the service needs."""
    device = {"driver": "nvidia", "device_ids": [str(gpu)], "capabilities": [capability]}
    return {"resources": {"reservations": {"devices": [device]}}}


def ollama(gpu: int, ollama_image: str) -> dict[str, Any]:
    """One GPU's Ollama, its models in a volume of its own."""
    defaults = setting_defaults()
    return {
        "image": ollama_image,
        "environment": {
            "OLLAMA_NUM_PARALLEL": var("OLLAMA_NUM_PARALLEL", defaults["OLLAMA_NUM_PARALLEL"]),
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_MAX_LOADED_MODELS": "${OLLAMA_MAX_LOADED_MODELS:-1}",
            "OLLAMA_CONTEXT_LENGTH": var("NUM_CTX", defaults["NUM_CTX"]),
        },
        "volumes": [f"ollama-gpu{gpu}:/root/.ollama"],
        "deploy": gpu_reservation(gpu, "gpu"),
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


def worker(gpu: int, image: str, wiring: RedisWiring) -> dict[str, Any]:
    """The worker of one GPU, beside that GPU's Ollama."""
    environment = {
        **wiring.env,
        "OLLAMA_URL": f"http://ollama-gpu{gpu}:{OLLAMA_PORT}",
        "GPU_INDEX": "0",
    }
    environment.update(
        env(
            "MODELS", "OLLAMA_NUM_PARALLEL", "NUM_CTX", "KEEP_ALIVE", "PULL_MODELS", "VRAM_MB", "VRAM_RESERVE_MB",
            "OLLAMA_CONNECT_TIMEOUT_S", "OLLAMA_FIRST_BYTE_TIMEOUT_S", "OLLAMA_IDLE_TIMEOUT_S", "SHUTDOWN_GRACE_S",
            "PROMPT_RETENTION_S", "DROP_PROMPTS_AT_START", "LOG_LEVEL",
        )
    )  # fmt: skip
    # NVML (nvidia-ml-py) needs libnvidia-ml.so, which the toolkit mounts for the `utility` capability.
    environment["NVIDIA_DRIVER_CAPABILITIES"] = "utility"
    return {
        **runner_service(image),
        "command": ["python", "-m", "worker"],
        "environment": environment,
        "deploy": gpu_reservation(gpu, "utility"),
        "depends_on": {**wiring.depends_on, f"ollama-gpu{gpu}": HEALTHY},
        "stop_grace_period": STOP_GRACE_PERIOD,
        "healthcheck": python_check(WORKER_HEALTHCHECK, interval="15s", start_period="30s"),
        "networks": [NETWORK],
    }


def golivepeer(image: str, gpus: list[int]) -> dict[str, Any]:
    """A go-livepeer AI orchestrator that uses this runner for `llm`."""
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
