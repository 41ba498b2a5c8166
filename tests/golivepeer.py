"""A reader for the runner's SSE stream that behaves exactly like go-livepeer's (ai/worker/worker.go,
Worker.handleStreamingResponse).

It strips exactly `data: `, skips undecodable lines, indexes `choices[0]` of every decoded chunk
without a bounds check (an IndexError/KeyError here is a crash in go-livepeer), and stops at the
first chunk whose finish_reason is non-empty. It also enforces the 64 KiB line limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_LINE = 64 * 1024


@dataclass
class StreamResult:
    """What go-livepeer would have taken from a stream."""

    text: str = ""
    finish_reason: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    chunks: list[dict[str, Any]] = field(default_factory=list)
    saw_done_marker: bool = False
    lines: list[bytes] = field(default_factory=list)


def read_stream(lines: Iterable[bytes]) -> StreamResult:
    """Consume raw lines (without line endings) the way go-livepeer's handler does."""
    result = StreamResult()
    finished = False
    for line in lines:
        result.lines.append(line)
        assert len(line) <= MAX_LINE, f"line of {len(line)} bytes would abort go-livepeer's scanner"
        if finished:
            if line == b"data: [DONE]":
                result.saw_done_marker = True
            continue
        if not line.startswith(b"data: "):
            continue
        payload = line[len(b"data: ") :]
        try:
            chunk = json.loads(payload)
        except ValueError:
            continue
        choice = chunk["choices"][0]  # go-livepeer does this unchecked: a crash if missing
        result.chunks.append(chunk)
        delta = choice.get("delta") or {}
        result.text += delta.get("content", "")
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]
            result.usage = chunk.get("usage") or {}
            finished = True
    return result
