"""One error tree for the runner; each error knows the HTTP status go-livepeer should see."""

from __future__ import annotations

# go-livepeer's gateway retries a failed job on another orchestrator *and keeps this one in its
# pool* only when the error's text contains this phrase, case-insensitively (server/ai_process.go,
# isNoCapacityError); any other error takes the orchestrator out of the gateway's session pool.
NO_ROOM = "insufficient capacity"
# The reasons of the refusals that mean "no room right now": never a fault of the orchestrator.
NO_ROOM_REASONS = frozenset({"queue_full", "queue_timeout", "no_worker", "shutdown", "busy", "admission"})
# The reasons of a Failed event that say a generation was lost after the engine took it, through
# no fault of the request: the connection to the engine was reset or closed mid-stream
# ("truncated"), the stream ended without a finish_reason ("interrupted": llama-cpp-python cut off
# by a second request, vLLM's "abort"), the engine sent an error mid-stream ("stream_error": a 5xx
# error event, Ollama's runner dying or restarting), or it went silent ("stalled"). The web may
# continue such a job on a slot (a continuation job: GenerateJob.continue_final); the tokens sent
# before the failure were real, and nothing the client was told needs to be taken back.
CONTINUABLE_REASONS = frozenset({"interrupted", "truncated", "stream_error", "stalled"})
# The reason of a continuation job refused by a worker whose engine cannot continue the model's
# answer (its chat template closes the assistant turn): it would restart the answer, so it fails.
NOT_CONTINUABLE = "not_continuable"


def no_room(msg: str) -> str:
    """`msg` as a refusal the gateway reads as "no room right now" (the phrase first, once)."""
    return msg if NO_ROOM in msg.lower() else f"{NO_ROOM}: {msg}"


class RunnerError(Exception):
    """Base of every error the runner raises on purpose; carries a message for a person."""

    status = 500
    reason = "internal"

    def __init__(self, msg: str, *, reason: str | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        if reason is not None:
            self.reason = reason


class ConfigError(RunnerError):
    """A setting is missing or malformed; raised at start, naming the variable."""

    reason = "config"


class BadRequest(RunnerError):
    """The client's request is invalid; retrying elsewhere will not help (400)."""

    status = 400
    reason = "bad_request"


class Unauthorized(RunnerError):
    """The bearer token is missing or wrong (401)."""

    status = 401
    reason = "unauthorized"


class CapacityError(RunnerError):
    """The runner cannot take the job now (queue full, waited too long, no worker): 500 whose
    message says `insufficient capacity`, so the gateway tries elsewhere and keeps us."""

    reason = "capacity"

    def __init__(self, msg: str, *, reason: str | None = None) -> None:
        super().__init__(no_room(msg), reason=reason)


class QueueUnavailable(RunnerError):
    """Redis cannot be reached, so no job can be placed or followed (500)."""

    reason = "redis"


class BackendError(RunnerError):
    """Ollama failed or misbehaved; `reason` says how (unreachable, busy, timeout, ...)."""

    reason = "backend"

    def __init__(self, msg: str, *, reason: str = "backend", status: int = 500) -> None:
        super().__init__(msg, reason=reason)
        self.status = status


class WorkerLost(RunnerError):
    """The worker running a job died or stopped sending events (500)."""

    reason = "worker_lost"


class JobCancelled(RunnerError):
    """The job was cancelled (client gone, or the worker is stopping) before it finished."""

    reason = "cancelled"
