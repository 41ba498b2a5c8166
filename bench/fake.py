"""The fake Ollama as its own process, re-pacable between scenarios through its stdin.

`python -m bench.fake --slots N --tokens-per-s R --reply-tokens T` prints `READY <port>`, then
reads one JSON object of behaviour knobs per line on stdin (e.g. `{"tokens_per_s": 25}`),
applies it to every model with `FakeOllama.set_behavior("*", ...)` and answers `OK`; the line
`{"records": true}` is answered `RECORDS <json>`: when each chat request arrived (time.monotonic()).
EOF on stdin, SIGTERM or SIGINT stop it.

The listen backlog is raised from asyncio's 100 to the kernel's somaxconn, as Go's net/http (real
Ollama) does: with 100, a burst of 256 connects overflows it and some clients wait a 1 s SYN retry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tests.fake_ollama import FakeOllama

_start_server = asyncio.start_server


def _somaxconn() -> int:
    """The kernel's cap on listen backlogs (Go uses it as its backlog)."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return 4096


async def _start_server_go_backlog(*args: Any, **kwargs: Any) -> asyncio.Server:
    kwargs.setdefault("backlog", _somaxconn())
    return await _start_server(*args, **kwargs)


asyncio.start_server = _start_server_go_backlog


def _records(fake: FakeOllama) -> dict[str, float]:
    """First word of each chat's last user message (the bench's stream label) → time.monotonic() received."""
    out = {}
    for rec in fake.chat_records():
        users = [m for m in rec.body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
        words = str(users[-1].get("content") or "").split() if users else []
        if words:
            out[words[0]] = rec.received_at
    return out


def _control(fake: FakeOllama, stop: threading.Event) -> None:
    """Apply knob lines from stdin until EOF."""
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            knobs = json.loads(line)
            if knobs == {"records": True}:
                print("RECORDS " + json.dumps(_records(fake)), flush=True)
                continue
            fake.set_behavior("*", **knobs)
            fake.requests.clear()  # its per-request records would otherwise grow for the whole run
            print("OK", flush=True)
        except (ValueError, TypeError) as exc:
            print(f"ERROR {exc}", flush=True)
    stop.set()


def main(argv: list[str] | None = None) -> int:
    """Serve until stopped; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m bench.fake", description=__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--slots", type=int, default=1024)
    p.add_argument("--tokens-per-s", type=float, default=0.0)
    p.add_argument("--reply-tokens", type=int, default=10**9, help="natural length; num_predict cuts it")
    a = p.parse_args(argv)
    fake = FakeOllama("127.0.0.1", a.port, slots=a.slots, tokens_per_s=a.tokens_per_s)
    fake.set_behavior("*", reply_tokens=a.reply_tokens)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    fake.start()
    print(f"READY {fake.port}", flush=True)
    threading.Thread(target=_control, args=(fake, stop), daemon=True).start()
    while not stop.wait(3600):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
