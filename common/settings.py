"""Configuration: one frozen Settings, read once from the environment at start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from common.env import Env
from common.errors import ConfigError
from common.models import DEFAULT_MODELS, ModelSpec, parse_models
from common.redis_target import RedisTarget
from common.version import __version__

KV_TYPES = ("F16", "Q8_0", "Q4_0")
# What an OpenAI-compatible engine is (OPENAI_ENGINE): it decides how an answer is continued and
# which extra requests the worker may send it. AUTO reads it from /v1/models (`owned_by`).
OPENAI_ENGINES = ("AUTO", "VLLM", "SGLANG", "LLAMA.CPP", "LLAMA-CPP-PYTHON", "OTHER")


@dataclass(frozen=True)
class Settings:
    """Every setting of the runner; `from_env` documents the variable behind each field."""

    redis_url: str = "redis://localhost:6379/0"
    # Redis through Sentinel: the sentinels and the master name they watch (REDIS_URL then gives
    # only the password, database and TLS), and the sentinels' own password.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = ""
    redis_sentinel_password: str | None = None
    # Replicas that must acknowledge a job's placement and its take before the runner goes on
    # (Redis WAIT), and for how long at most. None: 1 with Sentinel, 0 (no WAIT) without.
    redis_wait_replicas: int | None = None
    redis_wait_ms: int = 50
    port: int = 8000
    ollama_url: str = "http://localhost:11434"
    # The worker's engine: Ollama's native API (OLLAMA_URL), or any OpenAI-compatible server.
    backend: str = "ollama"
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    openai_engine: str = "auto"
    # The GGUF file a llama-cpp-python engine serves: its chat template renders continuations.
    openai_gguf: str | None = None
    auth_token: str | None = None
    metrics_token: str | None = None
    models: tuple[ModelSpec, ...] = field(default_factory=lambda: parse_models(DEFAULT_MODELS))
    # Back-pressure: jobs waiting per model (None: twice the fleet's slots for it, at least 4).
    max_queue: int | None = None
    queue_timeout_s: float = 30.0
    # Worker: its GPU, how many requests it sends its engine at once, what it believes about VRAM.
    slots: int = 1
    gpu_index: int = 0
    vram_mb: int | None = None
    vram_reserve_mb: int = 1024
    num_ctx: int = 4096
    keep_alive: int | str = -1
    # Ollama's own KV cache and flash-attention settings, read for the VRAM estimate.
    kv_cache_type: str = "f16"
    flash_attention: bool | None = None
    pull_models: bool = True
    # The GPU's model schedule: models Ollama keeps loaded at once, and how long a model keeps the
    # GPU at least (with work) before another model's waiting jobs may take it.
    max_loaded_models: int = 1
    model_hold_s: float = 5.0
    # Ollama timeouts, seconds.
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 300.0
    idle_timeout_s: float = 30.0
    # Web: how long a started job may stay silent before its worker counts as lost.
    worker_silence_s: float = 5.0
    # Web: how many times one request's lost generation is continued on another slot (0: never).
    migration_limit: int = 2
    # Hostile-input limits.
    max_body_bytes: int = 1 << 20
    max_messages: int = 256
    max_prompt_chars: int = 200_000
    # The most tokens one job generates: a larger max_tokens is served up to it, never refused.
    max_tokens_limit: int = 8192
    shutdown_grace_s: float = 10.0
    # Prompts in Redis: kept this long after a job ends, or (drop_prompts_at_start) not past its start.
    prompt_retention_s: float = 60.0
    drop_prompts_at_start: bool = False
    # Web connections: open ones per web process (past it a new one is answered and closed), how
    # long a new connection may take to send its request head, how long a send may block.
    max_connections: int = 2000
    header_timeout_s: float = 10.0
    send_timeout_s: float = 30.0
    log_level: str = "INFO"
    # What /version reports: ours, or the operator's (VERSION, as Livepeer's reference runner).
    version: str = __version__
    # go-livepeer's live runners (docs/live-runner.md): the orchestrator to register with (its
    # -liveRunnerAddr, else its service address) and its -orchSecret (both, or neither: no dynamic
    # registration); this runner's URL as the orchestrator reaches it (None: http://<hostname>:PORT);
    # the label each model's registration starts with; the USD price of one request.
    live_runner_orch_url: str | None = None
    live_runner_secret: str | None = None
    live_runner_url: str | None = None
    live_runner_label: str = "llm-runner"
    live_runner_price_usd: float = 0.0

    @property
    def redis_target(self) -> RedisTarget:
        """Where every process finds Redis: REDIS_URL, or the master the sentinels name."""
        return RedisTarget(self.redis_url, self.redis_sentinels, self.redis_sentinel_master,
                           self.redis_sentinel_password)  # fmt: skip

    @property
    def wait_replicas(self) -> int:
        """REDIS_WAIT_REPLICAS, or its default: 1 with Sentinel (a replica to fail over to), else 0."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self.redis_sentinels else 0

    @property
    def default_model(self) -> ModelSpec:
        """The model used when a request's `model` is empty: the first of MODELS."""
        return self.models[0]

    @property
    def live_runner_dynamic(self) -> bool:
        """Whether the web registers itself with an orchestrator's live-runner registry."""
        return self.live_runner_orch_url is not None and self.live_runner_secret is not None

    def model(self, model_id: str) -> ModelSpec | None:
        """The configured model with this id, or None."""
        for spec in self.models:
            if spec.model_id == model_id:
                return spec
        return None

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and launchers use it)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read every setting from `environ`; a bad value raises ConfigError naming its variable."""
        env = Env(environ)
        backend = env.choice("BACKEND", cls.backend.upper(), ("OLLAMA", "OPENAI")).lower()
        openai_base_url = env.text("OPENAI_BASE_URL") or None
        if openai_base_url is not None:
            openai_base_url = env.url("OPENAI_BASE_URL", "", schemes=("http", "https")).rstrip("/")
        # SLOTS, else OLLAMA_NUM_PARALLEL (the Ollama setting it mirrors), else 1.
        slots = env.integer("OLLAMA_NUM_PARALLEL", cls.slots, low=1, high=1024)
        live_orch = env.optional_url("LIVE_RUNNER_ORCH_URL", schemes=("http", "https"))
        live_secret = env.text("LIVE_RUNNER_SECRET") or None
        if (live_orch is None) != (live_secret is None):
            missing = "LIVE_RUNNER_SECRET" if live_secret is None else "LIVE_RUNNER_ORCH_URL"
            given = "LIVE_RUNNER_ORCH_URL" if live_secret is None else "LIVE_RUNNER_SECRET"
            raise ConfigError(f"{missing}: required with {given} (the orchestrator's URL and its -orchSecret "
                              "register this runner together)")  # fmt: skip
        sentinels = env.sentinels("REDIS_SENTINELS")
        master = env.text("REDIS_SENTINEL_MASTER")
        if sentinels and not master:
            raise ConfigError("REDIS_SENTINEL_MASTER: required with REDIS_SENTINELS (the name the sentinels monitor)")
        if master and not sentinels:
            raise ConfigError("REDIS_SENTINELS: required with REDIS_SENTINEL_MASTER (host:port,host:port)")
        # Through Sentinel, REDIS_URL names no host to reach, only how to speak to the master.
        redis_schemes = ("redis", "rediss") if sentinels else ("redis", "rediss", "unix")
        return cls(
            redis_url=env.url("REDIS_URL", cls.redis_url, schemes=redis_schemes),
            redis_sentinels=sentinels,
            redis_sentinel_master=master,
            redis_sentinel_password=env.text("REDIS_SENTINEL_PASSWORD") or None,
            redis_wait_replicas=env.optional_integer("REDIS_WAIT_REPLICAS", low=0, high=16),
            redis_wait_ms=env.integer("REDIS_WAIT_MS", cls.redis_wait_ms, low=1, high=10_000),
            port=env.integer("PORT", cls.port, low=1, high=65535),
            ollama_url=env.url("OLLAMA_URL", cls.ollama_url, schemes=("http", "https")).rstrip("/"),
            backend=backend,
            openai_base_url=openai_base_url,
            openai_api_key=env.text("OPENAI_API_KEY") or None,
            openai_engine=env.choice("OPENAI_ENGINE", cls.openai_engine.upper(), OPENAI_ENGINES).lower(),
            openai_gguf=env.file("OPENAI_GGUF") if backend == "openai" else None,
            auth_token=env.text("AUTH_TOKEN") or None,
            metrics_token=env.text("METRICS_TOKEN") or None,
            models=parse_models(env.text("MODELS") or DEFAULT_MODELS, served_as_id=backend == "openai"),
            max_queue=env.optional_integer("MAX_QUEUE", low=0),
            queue_timeout_s=env.number("QUEUE_TIMEOUT_S", cls.queue_timeout_s, low=0.1),
            slots=env.integer("SLOTS", slots, low=1, high=1024),
            gpu_index=env.integer("GPU_INDEX", cls.gpu_index, low=0),
            vram_mb=env.optional_integer("VRAM_MB", low=1),
            vram_reserve_mb=env.integer("VRAM_RESERVE_MB", cls.vram_reserve_mb, low=0),
            num_ctx=env.integer("NUM_CTX", cls.num_ctx, low=256),
            keep_alive=env.keep_alive("KEEP_ALIVE", cls.keep_alive),
            kv_cache_type=env.choice("OLLAMA_KV_CACHE_TYPE", cls.kv_cache_type.upper(), KV_TYPES).lower(),
            flash_attention=env.optional_boolean("OLLAMA_FLASH_ATTENTION"),
            pull_models=env.boolean("PULL_MODELS", cls.pull_models),
            max_loaded_models=env.integer("OLLAMA_MAX_LOADED_MODELS", cls.max_loaded_models, low=0),
            model_hold_s=env.number("MODEL_HOLD_S", cls.model_hold_s, low=0.0),
            connect_timeout_s=env.number("OLLAMA_CONNECT_TIMEOUT_S", cls.connect_timeout_s, low=0.1),
            first_byte_timeout_s=env.number("OLLAMA_FIRST_BYTE_TIMEOUT_S", cls.first_byte_timeout_s, low=0.1),
            idle_timeout_s=env.number("OLLAMA_IDLE_TIMEOUT_S", cls.idle_timeout_s, low=0.1),
            worker_silence_s=env.number("WORKER_SILENCE_S", cls.worker_silence_s, low=1.0),
            migration_limit=env.integer("MIGRATION_LIMIT", cls.migration_limit, low=0, high=100),
            max_body_bytes=env.integer("MAX_BODY_BYTES", cls.max_body_bytes, low=1024),
            max_messages=env.integer("MAX_MESSAGES", cls.max_messages, low=1),
            max_prompt_chars=env.integer("MAX_PROMPT_CHARS", cls.max_prompt_chars, low=1),
            max_tokens_limit=env.integer("MAX_TOKENS", cls.max_tokens_limit, low=1),
            shutdown_grace_s=env.number("SHUTDOWN_GRACE_S", cls.shutdown_grace_s, low=0.0),
            prompt_retention_s=env.number("PROMPT_RETENTION_S", cls.prompt_retention_s, low=0.0),
            drop_prompts_at_start=env.boolean("DROP_PROMPTS_AT_START", cls.drop_prompts_at_start),
            max_connections=env.integer("MAX_CONNECTIONS", cls.max_connections, low=1),
            header_timeout_s=env.number("HEADER_TIMEOUT_S", cls.header_timeout_s, low=0.1),
            send_timeout_s=env.number("SEND_TIMEOUT_S", cls.send_timeout_s, low=0.1),
            log_level=env.choice("LOG_LEVEL", cls.log_level, ("DEBUG", "INFO", "WARNING", "ERROR")),
            version=env.semver("VERSION", cls.version),
            live_runner_orch_url=live_orch,
            live_runner_secret=live_secret,
            live_runner_url=env.optional_url("LIVE_RUNNER_URL", schemes=("http", "https")),
            live_runner_label=env.label("LIVE_RUNNER_LABEL", cls.live_runner_label),
            live_runner_price_usd=env.price("LIVE_RUNNER_PRICE_USD", cls.live_runner_price_usd),
        )
