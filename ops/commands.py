"""Operator commands: `doctor` (what is wrong and how to fix it), `models pull`, `aimodels`."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from redis import Redis
from redis.exceptions import RedisError

from common.errors import BackendError
from common.fleet import READY, WorkerRecord, capacity, read_fleet, why_unserved
from common.redis_client import make_redis
from common.settings import Settings
from common.vram import GIB
from worker.gpu import GpuMonitor, list_gpus
from worker.ollama_admin import ADMIN_TIMEOUT_S, OllamaAdmin, normalize_tag

PROBE_TIMEOUT_S = 3.0


@dataclass
class Report:
    """Lines of a doctor run; any FAIL makes the command exit 1."""

    out: TextIO
    failures: int = 0
    warnings: int = 0
    lines: list[str] = field(default_factory=list)

    def ok(self, text: str) -> None:
        """A check that passed."""
        self._emit("[ ok ]", text, None)

    def warn(self, text: str, fix: str | None = None) -> None:
        """Something worth a look that does not stop the runner."""
        self.warnings += 1
        self._emit("[warn]", text, fix)

    def fail(self, text: str, fix: str | None = None) -> None:
        """Something that stops jobs from being served."""
        self.failures += 1
        self._emit("[FAIL]", text, fix)

    def _emit(self, tag: str, text: str, fix: str | None) -> None:
        print(f"{tag} {text}", file=self.out)
        if fix:
            print(f"       fix: {fix}", file=self.out)


@contextlib.contextmanager
def _ollama(url: str, timeout: float = PROBE_TIMEOUT_S) -> Iterator[OllamaAdmin]:
    """An Ollama client on a loop thread of its own, closed after use: its aiohttp session would
    otherwise be reported unclosed ("Unclosed client session") when the command exits."""
    admin = OllamaAdmin(url, timeout=timeout)
    try:
        yield admin
    finally:
        admin.http.streams.stop()  # closes the session, then stops the loop


def _read_fleet(settings: Settings) -> list[WorkerRecord]:
    """The fleet's records, on a client closed after the read; RedisError or OSError if unreachable."""
    redis = make_redis(settings.redis_target, max_connections=4)
    try:
        return read_fleet(redis)
    finally:
        redis.close()


def doctor(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Check Redis, the fleet's workers and their Ollamas, GPUs and every model's fit; 0 if all is well."""
    report = Report(out)
    report.ok(f"configuration: {len(settings.models)} model(s): {', '.join(m.model_id for m in settings.models)}")
    redis = make_redis(settings.redis_target, max_connections=4)
    where = settings.redis_target.describe()
    try:
        version = redis.info("server").get("redis_version", "?")
        report.ok(f"Redis at {where} answers (version {version})")
        if settings.wait_replicas:
            _check_replicas(redis, settings, report)
        records = read_fleet(redis)
    except (RedisError, OSError) as exc:
        report.fail(f"cannot reach Redis at {where}: {exc}", "start Redis or fix REDIS_URL (or REDIS_SENTINELS)")
        records = None
    finally:
        redis.close()
    _check_local(settings, report)
    if records is not None:
        _check_fleet(settings, records, report)
    summary = f"{report.failures} problem(s), {report.warnings} warning(s)"
    print(summary if report.failures or report.warnings else "all good", file=out)
    return 1 if report.failures else 0


def _check_replicas(redis: Redis, settings: Settings, report: Report) -> None:
    """Whether the master has the replicas that acknowledge placements (REDIS_WAIT_REPLICAS)."""
    replication = redis.info("replication")
    replicas = int(replication.get("connected_slaves", 0))
    line = f"Redis master has {replicas} replica(s) connected; {settings.wait_replicas} must acknowledge each job"
    if replicas >= settings.wait_replicas:
        report.ok(line)
    else:
        report.warn(line + ": a failover now could lose the last jobs placed, and one has nowhere to go",
                    "start a replica (after a failover: bring the old master back, Sentinel makes it one)")  # fmt: skip


def _check_local(settings: Settings, report: Report) -> None:
    gpus = list_gpus()
    if gpus:
        for index in gpus:
            info = GpuMonitor(index).read()
            if info:
                report.ok(f"GPU {index} on this host: {info.name}, {info.memory_total / GIB:.1f} GiB, "
                          f"{info.memory_free / GIB:.1f} GiB free, compute {info.major}.{info.minor}")  # fmt: skip
    else:
        report.warn("no NVIDIA GPU visible through NVML on this host",
                    "run this where the workers run, or set VRAM_MB on CPU-only test machines")  # fmt: skip
    if settings.backend == "openai":
        # Not probed from here: a request to an engine that serves one at a time (llama-cpp-python's
        # server) would interrupt the stream it is generating. Its workers checked it at start.
        report.ok(f"BACKEND=openai: the engine at {settings.openai_base_url} is checked by its workers at start")
        return
    try:
        with _ollama(settings.ollama_url) as admin:
            version = admin.version()
            installed = admin.tags()
    except BackendError as exc:
        report.warn(f"Ollama at OLLAMA_URL={settings.ollama_url} does not answer: {exc.msg}",
                    "start Ollama there, or point OLLAMA_URL at it")  # fmt: skip
        return
    report.ok(f"Ollama {version} at {settings.ollama_url}")
    missing = [m.tag for m in settings.models if normalize_tag(m.tag) not in installed]
    if missing:
        report.warn(f"Ollama at {settings.ollama_url} lacks {', '.join(missing)}",
                    "`llm-runner models pull` (workers also pull on start unless PULL_MODELS=false)")  # fmt: skip


def _describe_gpu(record: WorkerRecord) -> str:
    if record.vram_budget is None:
        return "CPU, no VRAM bound"
    name = record.gpu.name if record.gpu else "VRAM_MB"
    return f"{name} ({record.vram_budget / GIB:.1f} GiB usable)"


def _check_fleet(settings: Settings, records: list[WorkerRecord], report: Report) -> None:
    if not records:
        report.fail("no worker has announced itself in Redis",
                    "start `python -m worker` (or `llm-runner workers`) with the same REDIS_URL")  # fmt: skip
    for record in records:
        gpu = _describe_gpu(record)
        line = (
            f"worker {record.name}: {record.state}, {gpu}, {record.busy}/{record.slots} slots busy, "
            f"{record.backend} at {record.engine_url or record.ollama_url}"
        )
        (report.ok if record.state == READY else report.warn)(line)
        for model_id, fit in record.models.items():
            if fit.note:
                report.warn(f"  {model_id}: {fit.note}")
    for spec in settings.models:
        slots = capacity(records, spec.model_id)
        if slots:
            report.ok(f"model {spec.model_id} ({spec.tag}): {slots} slot(s) → aiModels.json capacity {slots}")
        else:
            report.fail(f"model {spec.model_id} ({spec.tag}): {why_unserved(records, spec.model_id)}",
                        "use a smaller quantisation or context (NUM_CTX, OLLAMA_NUM_PARALLEL), a bigger GPU, "
                        "or drop it from MODELS")  # fmt: skip


class ProgressBar:
    """A pull's progress: a redrawn bar on a terminal, a line per 10 % otherwise."""

    def __init__(self, label: str, out: TextIO) -> None:
        self.label = label
        self.out = out
        self.tty = out.isatty()
        self._last_tenth = -1

    def __call__(self, line: dict[str, Any]) -> None:
        """Show one progress line of Ollama's pull."""
        total, done = line.get("total"), line.get("completed")
        status = str(line.get("status", ""))
        if not (isinstance(total, int) and isinstance(done, int) and total):
            if not self.tty or status == "success":
                print(f"{self.label}: {status}", file=self.out)
            return
        fraction = done / total
        bar = "#" * int(fraction * 30)
        text = f"{self.label}: [{bar:<30}] {fraction:4.0%} {done / 1e9:.2f}/{total / 1e9:.2f} GB"
        if self.tty:
            print(f"\r{text}", end="", file=self.out, flush=True)
        elif int(fraction * 10) != self._last_tenth:
            self._last_tenth = int(fraction * 10)
            print(text, file=self.out)


def ollama_urls(settings: Settings, explicit: list[str] | None) -> list[str]:
    """The Ollamas to act on: those given, else every worker's plus OLLAMA_URL."""
    if explicit:
        return explicit
    urls = [settings.ollama_url]
    with contextlib.suppress(RedisError, OSError):
        records = _read_fleet(settings)
        urls += [r.ollama_url for r in records if r.backend == "ollama" and r.ollama_url]
    return list(dict.fromkeys(urls))


def pull_models(settings: Settings, urls: list[str], out: TextIO = sys.stdout) -> int:
    """Pull every configured model each Ollama lacks, with progress; 0 if all are installed after."""
    failed = 0
    for url in urls:
        with _ollama(url, ADMIN_TIMEOUT_S) as admin:
            failed += _pull_missing(settings, admin, url, out)
    return 1 if failed else 0


def _pull_missing(settings: Settings, admin: OllamaAdmin, url: str, out: TextIO) -> int:
    """Pull the configured models one Ollama lacks; how many could not be pulled (1 if it does not answer)."""
    try:
        installed = admin.tags()
    except BackendError as exc:
        print(f"{url}: {exc.msg}", file=out)
        return 1
    failed = 0
    for spec in settings.models:
        if normalize_tag(spec.tag) in installed:
            print(f"{url}: {spec.tag} already installed", file=out)
            continue
        try:
            admin.pull(spec.tag, ProgressBar(f"{url} {spec.tag}", out), stop=threading.Event())
            print(f"{url}: {spec.tag} pulled", file=out)
        except BackendError as exc:
            print(f"{url}: {exc.msg}", file=out)
            failed += 1
    return failed


def aimodels(
    settings: Settings, base_url: str, *, token: str | None, usd_per_million: dict[str, float], default_usd: float,
    warm: bool = True,
) -> list[dict[str, Any]]:  # fmt: skip
    """aiModels.json entries: one per model, its URL under this runner, capacity from the fleet's slots.

    go-livepeer bills max_tokens × price_per_unit / pixels_per_unit, so a price in USD per
    million tokens is price_per_unit = that price with pixels_per_unit = 1 000 000.
    """
    try:
        records = _read_fleet(settings)
    except (RedisError, OSError):
        records = []
    entries = []
    for spec in settings.models:
        slots = capacity(records, spec.model_id)
        if not slots:
            print(f"warning: no ready worker serves {spec.model_id} now; capacity 1 written", file=sys.stderr)
        entry: dict[str, Any] = {
            "pipeline": "llm",
            "model_id": spec.model_id,
            "url": f"{base_url.rstrip('/')}/{spec.model_id}",
            "warm": warm,
            "capacity": max(1, slots),
            "price_per_unit": usd_per_million.get(spec.model_id, default_usd),
            "pixels_per_unit": 1_000_000,
            "currency": "USD",
        }
        if token:
            entry["token"] = token
        entries.append(entry)
    return entries


def print_aimodels(entries: list[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    """Ready-to-paste JSON."""
    print(json.dumps(entries, indent=2), file=out)
