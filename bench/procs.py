"""Child processes with log files, polling waits, and a stop that always ends them."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")
STOP_TIMEOUT_S = 20.0


class StartError(RuntimeError):
    """A process did not start or did not become ready."""


@dataclass
class Child:
    """One started process: its name, Popen and the file its stderr (and maybe stdout) goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.popen.poll() is None

    def output(self, limit: int = 20000) -> str:
        """The tail of its log."""
        return self.log.read_text(errors="replace")[-limit:] if self.log.exists() else ""


def spawn(name: str, argv: list[str], env: dict[str, str], logdir: Path, cwd: Path, **kw: Any) -> Child:
    """Start `argv` in its own session (Ctrl-C reaches only us; we stop it), output to a log file."""
    log = logdir / f"{name}.log"
    out: IO[bytes]
    with open(log, "wb") as out:
        stdout = kw.pop("stdout", out)
        popen = subprocess.Popen(argv, env=env, cwd=str(cwd), stdout=stdout, stderr=out, start_new_session=True, **kw)
    return Child(name, popen, log)


def wait_until(child: Child, predicate: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll `predicate` (errors count as not yet) while `child` lives; StartError on exit or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise StartError(f"{child.name} exited with status {child.popen.returncode} before {what}")
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise StartError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def stop_all(children: list[Child], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every child (last started first), wait for them, SIGKILL what is left."""
    for child in reversed(children):
        if child.alive():
            child.popen.terminate()
    deadline = time.monotonic() + timeout
    for child in reversed(children):
        try:
            child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.popen.kill()
            child.popen.wait()
        for pipe in (child.popen.stdin, child.popen.stdout):
            if pipe is not None:
                pipe.close()
