"""One final state per job: the web and the workers record a job's start and end only through here.

RQ writes a job's status with plain HSETs, so two processes ending the same job (the web giving
up on a silent worker, the worker finishing it after all) would both win, one after the other.
Here each writer's bookkeeping is RQ's own (its functions write into a pipeline that is never
executed, only read back) and goes to Redis in one script that checks the status the writer
expects and runs the commands only then: whoever gets there first wins, the other sees the new
status and records nothing. One round trip and one reply, where WATCH, a read and MULTI/EXEC
took three round trips and a reply per command (this is on every job's path).

A write can run twice: the Redis client retries a command whose reply was lost (the script ran,
the connection broke before its answer arrived). A block may therefore name a key that only its
own commands create (`done_if`, e.g. the RQ execution a start creates): found, the block counts
as written by this very call, and is not run again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError
from rq.job import JobStatus

FINAL = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED})
MISSING = "missing"

Command = tuple[bytes | str | int | float, ...]

# KEYS: the guarded jobs' hashes. ARGV: the commands run first whatever the statuses, then per
# key its expected statuses, its `done_if` key ('' for none) and its commands, then the commands
# run last. A block of commands is its count, then per command its argument count and arguments;
# a status list is its count and the statuses. Returns, per key, false once its commands ran
# (now, or by an earlier run of the same call: its `done_if` key exists), else the status found.
_SCRIPT = """
local a = 1
local function run_block()
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    local c = tonumber(ARGV[a])
    redis.call(unpack(ARGV, a + 1, a + c))
    a = a + c + 1
  end
end
local function skip_block()
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    a = a + tonumber(ARGV[a]) + 1
  end
end
run_block()
local found = {}
for k = 1, #KEYS do
  local status = redis.call('HGET', KEYS[k], 'status') or 'missing'
  local n = tonumber(ARGV[a])
  local ok = false
  for i = a + 1, a + n do
    if ARGV[i] == status then ok = true end
  end
  a = a + n + 1
  local done = ARGV[a]
  a = a + 1
  if ok then
    run_block()
    found[k] = false
  elseif done ~= '' and redis.call('EXISTS', done) == 1 then
    skip_block()
    found[k] = false
  else
    skip_block()
    found[k] = status
  end
end
run_block()
return found
"""
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()


def commands(redis: Redis, write: Callable[[Pipeline], object]) -> list[Command]:
    """The commands `write` issues on a pipeline, recorded, not sent (RQ's functions take a pipeline)."""
    pipe = redis.pipeline(transaction=False)
    try:
        write(pipe)
        return [args for args, _options in pipe.command_stack]
    finally:
        pipe.reset()


@dataclass
class Guarded:
    """Commands to run only if the job's status (its hash's `status`) is one of `expected`, and
    not again if `done_if` (a key only these commands create) exists."""

    job_key: str
    expected: Collection[str]
    commands: list[Command] = field(default_factory=list)
    done_if: str = ""


def _block(out: list[bytes | str | int | float], block: Sequence[Command]) -> None:
    out.append(len(block))
    for command in block:
        out.append(len(command))
        out.extend(command)


def run_guarded(
    redis: Redis, guarded: Sequence[Guarded], *, first: Sequence[Command] = (), last: Sequence[Command] = ()
) -> list[str | None]:
    """Atomically: `first`, then each block whose job has an expected status, then `last`.

    Returns per block None once written, or the status that stopped it (MISSING for a job that is gone).
    """
    args: list[bytes | str | int | float] = []
    _block(args, first)
    for item in guarded:
        args.append(len(item.expected))
        args.extend(item.expected)
        args.append(item.done_if)
        _block(args, item.commands)
    _block(args, last)
    job_keys = [item.job_key for item in guarded]
    try:
        found = redis.evalsha(_SHA, len(job_keys), *job_keys, *args)
    except NoScriptError:  # a restarted Redis has no scripts cached: send it whole (cached from then on)
        found = redis.eval(_SCRIPT, len(job_keys), *job_keys, *args)
    return [None if status is None else _text(status) for status in found]


def transition(
    redis: Redis, job_key: str, expected: Collection[str], write: Callable[[Pipeline], object]
) -> str | None:
    """Run `write` (RQ's bookkeeping, buffered in a pipeline) atomically if the job's status is one
    of `expected`. Returns None once written, or the status that stopped it (MISSING: job gone)."""
    (status,) = run_guarded(redis, [Guarded(job_key, expected, commands(redis, write))])
    return status


def _text(value: bytes | str | None) -> str:
    if value is None:
        return MISSING
    return value.decode() if isinstance(value, bytes) else value
