"""One error tree for the runner; each error knows the HTTP status go-livepeer should see."""

from __future__ import annotations


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
    """The runner cannot take the job now (queue full, waited too long, no worker): 500."""

    reason = "capacity"


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
