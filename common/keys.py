"""Every Redis key, channel and RQ queue name the runner owns, built in one place."""

from __future__ import annotations

from rq.command import PUBSUB_CHANNEL_TEMPLATE

PREFIX = "llmrunner"

# The RQ job function, by dotted path, so the web never imports worker code.
GENERATE_JOB = "worker.jobs.generate"


def queue_name(model_id: str) -> str:
    """RQ queue holding the jobs for one model; workers that can serve it listen on it."""
    return f"llm:{model_id}"


def worker_commands(worker_name: str) -> str:
    """RQ's command channel of a worker (`rq:pubsub:<name>`, rq.command), which its process stays
    subscribed to for as long as it lives (worker.channel): Redis drops the subscriber when the
    process's socket closes."""
    return PUBSUB_CHANNEL_TEMPLATE % worker_name


def reply_channel(web_id: str) -> str:
    """Pub/sub channel on which workers publish the events of one web process's jobs."""
    return f"{PREFIX}:events:{web_id}"


def job_backlog(job_id: str) -> str:
    """Redis stream of a job's numbered events (entry id `<seq>-0`), for replay after a gap."""
    return f"{PREFIX}:backlog:{job_id}"


def cancel_channel() -> str:
    """Pub/sub channel on which the web asks every worker to cancel a job by id."""
    return f"{PREFIX}:cancel"


def fleet_set() -> str:
    """Set of the names of workers that have announced themselves."""
    return f"{PREFIX}:fleet"


def fleet_worker(name: str) -> str:
    """A worker's announcement (JSON, expires unless refreshed by its heartbeat)."""
    return f"{PREFIX}:fleet:{name}"


def metrics_counters() -> str:
    """Hash of fleet-wide counters the workers keep (worker deaths seen, ...)."""
    return f"{PREFIX}:metrics"


def prompt_retention() -> str:
    """Sorted set of jobs whose prompts are blanked once retention ends (scored by end time, start time until then)."""
    return f"{PREFIX}:prompts"


def model_claim(model_id: str) -> str:
    """Held (with a TTL) by the worker switching its GPU to a model, so two GPUs don't both switch."""
    return f"{PREFIX}:claim:{model_id}"


def take_token(worker_name: str, token: str) -> str:
    """What one take moved (queue key, then job ids), so a retried take answers the same ids."""
    return f"{PREFIX}:take:{worker_name}:{token}"


def prompt_sweep_lock() -> str:
    """Held (with a TTL) by the one worker sweeping expired prompts for the whole fleet."""
    return f"{PREFIX}:prompts:sweeper"


def live_runner_lease(label: str) -> str:
    """Held (with a TTL) by the one web process that heartbeats a live-runner registration."""
    return f"{PREFIX}:liverunner:{label}:lease"


def live_runner_state(label: str) -> str:
    """A live-runner registration's orchestrator credentials (JSON), so another holder carries it on."""
    return f"{PREFIX}:liverunner:{label}:state"
