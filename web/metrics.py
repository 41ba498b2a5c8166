"""Prometheus metrics of the runner, served at /metrics, correct under several gunicorn processes.

Per-job figures are recorded by the web process that followed the job; prometheus_client's
multiprocess mode sums them when PROMETHEUS_MULTIPROC_DIR is set (web/gunicorn_conf.py sets it).
Fleet figures (GPUs, slots, queues, worker deaths) are read from Redis at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from flask import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector
from redis.exceptions import RedisError

from common.fleet import capacity, read_fleet, worker_deaths
from common.guard import LISTENERS
from web.runtime import Runtime
from web.trace import JobTrace

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_DURATION = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

REQUESTS = Counter("llm_requests_total", "LLM requests by model and outcome", ["model", "outcome"])
# The same requests by the API they came in on: "llm" (go-livepeer's /llm) or "openai" (/v1).
API_REQUESTS = Counter("llm_api_requests_total", "LLM requests by API and outcome", ["api", "outcome"])
TTFT = Histogram("llm_time_to_first_token_seconds", "Request received to first token relayed", ["model"],
                 buckets=_LATENCY)  # fmt: skip
QUEUE_WAIT = Histogram("llm_queue_wait_seconds", "Job enqueued to taken by a worker", ["model"], buckets=_LATENCY)
DURATION = Histogram("llm_request_duration_seconds", "Request received to its last byte", ["model", "outcome"],
                     buckets=_DURATION)  # fmt: skip
PROMPT_TOKENS = Counter("llm_prompt_tokens_total", "Prompt tokens, as Ollama counted them", ["model"])
COMPLETION_TOKENS = Counter("llm_completion_tokens_total", "Generated tokens, as Ollama counted them", ["model"])
TOKENS_PER_SECOND = Histogram("llm_generation_tokens_per_second", "Decode speed Ollama reported per job", ["model"],
                              buckets=(1, 2, 5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500))  # fmt: skip
IN_FLIGHT = Gauge("llm_requests_in_flight", "Requests being answered now (queued or generating)", ["model"],
                  multiprocess_mode="livesum")  # fmt: skip
CANCELLATIONS = Counter("llm_cancellations_total", "Jobs cancelled because the client left", ["model", "phase"])
# Lost generations carried on as a continuation job (or placed again when nothing was sent), by
# what lost them (web.continuation).
CONTINUATIONS = Counter("llm_job_continuations_total", "Lost generations carried on by another job, by cause",
                        ["reason"])  # fmt: skip
BACKEND_ERRORS = Counter("llm_backend_errors_total", "Failed jobs by reason", ["model", "reason"])
HELPER_RESTARTS = Counter("llm_web_helper_restarts_total", "Web helper loops that died and were restarted",
                          ["helper"])  # fmt: skip
LISTENERS.append(lambda helper: HELPER_RESTARTS.labels(helper).inc())


def observe(trace: JobTrace, api: str = "llm") -> None:
    """Record a job that was placed in the queue, once it ended."""
    model = trace.model_id
    REQUESTS.labels(model, trace.outcome).inc()
    API_REQUESTS.labels(api, trace.outcome).inc()
    if trace.ended_at is not None:
        DURATION.labels(model, trace.outcome).observe(trace.ended_at - trace.submitted_at)
    if trace.started_at is not None:
        QUEUE_WAIT.labels(model).observe(trace.started_at - trace.submitted_at)
    if trace.first_token_at is not None:
        TTFT.labels(model).observe(trace.first_token_at - trace.submitted_at)
    if trace.outcome == "ok":
        PROMPT_TOKENS.labels(model).inc(trace.prompt_tokens)
        COMPLETION_TOKENS.labels(model).inc(trace.completion_tokens)
        if trace.eval_ms > 0 and trace.completion_tokens:
            TOKENS_PER_SECOND.labels(model).observe(trace.completion_tokens / (trace.eval_ms / 1000))
    elif trace.outcome == "cancelled":
        CANCELLATIONS.labels(model, "running" if trace.started_at is not None else "queued").inc()
    elif trace.outcome == "failed":
        BACKEND_ERRORS.labels(model, trace.reason or "unknown").inc()


def observe_refusal(model: str, outcome: str, api: str = "llm") -> None:
    """Record a request answered before any job existed (bad request, unauthorized, at capacity)."""
    REQUESTS.labels(model, outcome).inc()
    API_REQUESTS.labels(api, outcome).inc()


class FleetCollector(Collector):
    """Fleet-wide gauges read from Redis at scrape time: per GPU, per model, worker deaths."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        """One scrape's fleet metrics (nothing when Redis is unreachable, plus llm_redis_up 0)."""
        up = GaugeMetricFamily("llm_redis_up", "Whether the web reached Redis for this scrape")
        try:
            records = read_fleet(self.rt.redis)
            queued = {m.model_id: self.rt.queue(m.model_id).count for m in self.rt.settings.models}
            deaths = worker_deaths(self.rt.redis)
        except (RedisError, OSError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        labels = ["gpu", "uuid", "name", "worker"]
        gauges = {
            "memory_total": GaugeMetricFamily("llm_gpu_memory_total_bytes", "GPU memory", labels=labels),
            "memory_free": GaugeMetricFamily("llm_gpu_memory_free_bytes", "GPU memory free", labels=labels),
            "utilization_compute": GaugeMetricFamily("llm_gpu_utilization_compute_percent", "GPU busy", labels=labels),
            "utilization_memory": GaugeMetricFamily(
                "llm_gpu_utilization_memory_percent", "GPU memory busy", labels=labels
            ),
        }
        slots = GaugeMetricFamily("llm_worker_slots", "Parallel slots of each worker", labels=["worker", "state"])
        busy = GaugeMetricFamily("llm_worker_busy_slots", "Slots generating now", labels=["worker"])
        channel = GaugeMetricFamily("llm_worker_command_channel_up", "Whether the worker hears commands and cancels",
                                    labels=["worker"])  # fmt: skip
        switches = CounterMetricFamily(
            "llm_worker_model_switches", "Models the worker unloaded to load another", labels=["worker"]
        )
        pulled = GaugeMetricFamily(
            "llm_model_pull_completed_bytes", "Bytes of a pull in progress", labels=["worker", "model", "status"]
        )
        pull_size = GaugeMetricFamily(
            "llm_model_pull_total_bytes", "Size of a pull in progress", labels=["worker", "model"]
        )
        restarts = CounterMetricFamily("llm_worker_helper_restarts", "Worker helper loops that died and were restarted",
                                       labels=["worker", "helper"])  # fmt: skip
        for record in records:
            slots.add_metric([record.name, record.state], record.slots)
            busy.add_metric([record.name], record.busy)
            channel.add_metric([record.name], 1 if record.command_channel_up else 0)
            switches.add_metric([record.name], record.switches)
            for helper, count in record.restarts.items():
                restarts.add_metric([record.name, helper], count)
            for model_id, fit in record.models.items():
                if fit.pull:
                    pulled.add_metric([record.name, model_id, fit.pull], fit.pull_completed)
                    pull_size.add_metric([record.name, model_id], fit.pull_total)
            if record.gpu is not None:
                values = [str(record.gpu.index), record.gpu.uuid, record.gpu.name, record.name]
                for field, family in gauges.items():
                    family.add_metric(values, getattr(record.gpu, field))
        yield from gauges.values()
        yield slots
        yield busy
        yield channel
        yield switches
        yield pulled
        yield pull_size
        yield restarts
        cap = GaugeMetricFamily(
            "llm_model_capacity_slots", "Slots of ready workers serving the model", labels=["model"]
        )
        waiting = GaugeMetricFamily("llm_queued_jobs", "Jobs waiting for a slot", labels=["model"])
        for model_id, count in queued.items():
            cap.add_metric([model_id], capacity(records, model_id))
            waiting.add_metric([model_id], count)
        yield cap
        yield waiting
        died = CounterMetricFamily("llm_worker_deaths", "Workers that vanished without a clean shutdown")
        died.add_metric([], deaths)
        yield died


def metrics_response(rt: Runtime) -> Response:
    """The /metrics answer: this runner's counters (all processes) and the fleet's gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(FleetCollector(rt))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class _Forward(Collector):
    """Exposes another registry's metrics inside a per-scrape registry (single-process mode)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        """The source registry's metrics."""
        return iter(self.source.collect())
