"""Our model of go-livepeer as the runner's client: the URLs it calls, how it reads each answer,
and what its gateway then does with the orchestrator.

Every rule follows go-livepeer's source (github.com/livepeer/go-livepeer); the comment on each
names the file and function. The chain is: the orchestrator's AI worker calls the runner
(`ai/worker`), the orchestrator answers the gateway (`server/ai_http.go`), and the gateway judges
the orchestrator by that answer (`server/ai_process.go`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

from tests.gotypes import decode_http_error, decode_llm_response, zero_usage

# bufio.MaxScanTokenSize: a bufio.Scanner's buffer never grows past it, and a line must fit in
# it *with* its newline, or the scan stops with ErrTooLong (Go's bufio/scan.go, Scanner.Scan).
MAX_TOKEN_SIZE = 64 * 1024


class GoCrash(AssertionError):
    """What would panic in go-livepeer (an unchecked index), or abort its reading."""


# ---------------------------------------------------------------------------------------- URLs


def route_url(entry_url: str, operation: str) -> str:
    """The URL go-livepeer calls for `operation` ("llm", "health", ...) of an aiModels.json `url`.

    ai/worker/runner.gen.go NewClient appends "/" to the server URL when it lacks one, and each
    New<Op>Request resolves "./<op>" against it (url.Parse, then serverURL.Parse).
    """
    base = entry_url if entry_url.endswith("/") else entry_url + "/"
    return urljoin(base, "./" + operation)


# ---------------------------------------------------------------------------------- streaming


def scan_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """bufio.Scanner with ScanLines over a body: lines split at \\n, a trailing \\r dropped.

    A line that does not fit MAX_TOKEN_SIZE together with its newline stops the scan with
    ErrTooLong: go-livepeer logs it and reads no further (ai/worker/worker.go
    handleStreamingResponse): raised here as GoCrash.
    """
    pending = b""
    for chunk in chunks:
        pending += chunk
        while (end := pending.find(b"\n")) >= 0 and end + 1 <= MAX_TOKEN_SIZE:
            line, pending = pending[:end], pending[end + 1 :]
            yield line.removesuffix(b"\r")
        if len(pending) >= MAX_TOKEN_SIZE:  # no newline within a full buffer
            raise GoCrash(f"a line of more than {MAX_TOKEN_SIZE - 1} bytes: bufio.Scanner: token too long")
    if pending:
        yield pending.removesuffix(b"\r")


@dataclass
class StreamResult:
    """What go-livepeer's gateway would have taken from a stream."""

    text: str = ""
    finish_reason: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    chunks: list[dict[str, Any]] = field(default_factory=list)
    saw_done_marker: bool = False
    lines: list[bytes] = field(default_factory=list)
    skipped: list[bytes] = field(default_factory=list)


def read_stream(lines: Iterable[bytes]) -> StreamResult:
    """Read a 200 SSE answer's lines (without line endings) as go-livepeer does.

    - ai/worker/worker.go handleStreamingResponse: each line of at most 64 KiB with its newline
      (bufio.Scanner), `data: ` trimmed *if present* (strings.TrimPrefix: a bare JSON line is
      decoded too), empty lines and `[DONE]` skipped, the rest decoded into LLMResponse; a line
      Go cannot decode is logged and skipped.
    - server/ai_http.go handleAIRequest (the orchestrator's answer to the gateway): indexes
      `chunk.Choices[0]` of every decoded chunk unchecked (a chunk without choices panics) and
      stops at the first chunk whose finish_reason is non-empty.
    - server/ai_process.go handleSSEStream (the gateway): keeps the usage of the last chunk read
      for its latency score.
    """
    result = StreamResult()
    finished = False
    for line in lines:
        result.lines.append(line)
        if len(line) + 1 > MAX_TOKEN_SIZE:
            raise GoCrash(f"a line of {len(line)} bytes would stop go-livepeer's bufio.Scanner")
        if finished:
            result.saw_done_marker |= line == b"data: [DONE]"
            continue
        data = line.removeprefix(b"data: ")
        if data in (b"", b"[DONE]"):
            continue
        chunk = decode_llm_response(data)
        if chunk is None:
            result.skipped.append(line)
            continue
        choices = chunk.get("choices") or []
        if not choices:
            raise GoCrash(f"chunk without choices would panic go-livepeer (index out of range): {line[:200]!r}")
        result.chunks.append(chunk)
        delta = choices[0].get("delta") or {}
        result.text += delta.get("content", "")
        result.usage = chunk["usage"] if "usage" in chunk else zero_usage()
        if choices[0].get("finish_reason"):
            result.finish_reason = choices[0]["finish_reason"]
            finished = True
    return result


def read_body(body: bytes) -> StreamResult:
    """read_stream over a raw SSE body, split as bufio.Scanner splits it."""
    return read_stream(scan_lines([body]))


# ---------------------------------------------------------------------- what the gateway does

SERVED, EMPTY, RETRIED, SUSPENDED = "served", "empty answer", "retried, kept in the pool", "suspended"


@dataclass
class Verdict:
    """What the gateway made of one /llm answer."""

    outcome: str  # SERVED, EMPTY, RETRIED or SUSPENDED
    error: str = ""  # the error text the gateway judged
    response: dict[str, Any] | None = None
    bad_request: str | None = None  # what the end user is told after a 400


def gateway_verdict(orchestrator_error: str) -> Verdict:
    """server/ai_process.go processAIRequest, for an error from the orchestrator.

    The gateway sees "unexpected status code: 500, body: <orchestrator's text>" (submitLLM; the
    orchestrator answers with http.Error, server/handlers.go respondWithError). It retries on
    another orchestrator and keeps this one when the text contains "insufficient capacity",
    case-insensitively (isNoCapacityError / errContainsMsg); any other error removes this
    orchestrator from its session pool, and a "returned 400" error goes back to the end user
    (parseBadRequestError).
    """
    error = f"unexpected status code: 500, body: {orchestrator_error}\n"
    if "insufficient capacity" in error.lower():
        return Verdict(RETRIED, error)
    bad = None
    if "returned 400" in error:
        bad = error.split("returned 400", 1)[1].strip() or "bad request"
    return Verdict(SUSPENDED, error, bad_request=bad)


def non_streaming_verdict(status: int, content_type: str, body: bytes) -> Verdict:
    """A non-streaming /llm answer, as go-livepeer's orchestrator and then its gateway take it.

    ai/worker/runner.gen.go ParseGenLLMResponse decodes the body only when Content-Type
    contains "json" and the status is 200, 400, 401, 422 or 500 (a body Go cannot decode is an
    error); ai/worker/worker.go handleNonStreamingResponse turns 400/401/500 into
    "LLM container returned N: <detail.msg>" and returns JSON200 otherwise, which is nil for
    any other status or content type. server/ai_http.go handleAIRequest answers an error with a
    500 carrying its text, and a nil response as a 200 `null`: an empty answer for the user.
    """
    if "json" not in content_type or status not in (200, 400, 401, 422, 500):
        return Verdict(EMPTY)
    if status == 200:
        response = decode_llm_response(body)
        if response is None:
            return gateway_verdict("json: cannot unmarshal the runner's answer into worker.LLMResponse")
        return Verdict(SERVED, response=response)
    if status == 422:
        return Verdict(EMPTY)
    msg = decode_http_error(body)
    if msg is None:
        return gateway_verdict("json: cannot unmarshal the runner's error into worker.HTTPError")
    return gateway_verdict(f"LLM container returned {status}: {msg}")


def streaming_verdict(status: int) -> Verdict | None:
    """A streaming /llm answer's status: None for 200 (read its body with read_stream).

    ai/worker/worker.go handleStreamingResponse returns "unexpected status code: N" for any
    other status without reading the body, so no refusal of a stream is ever a capacity error.
    """
    if status == 200:
        return None
    return gateway_verdict(f"unexpected status code: {status}")


# ------------------------------------------------------------------------------------- startup


@dataclass
class Registered:
    """What go-livepeer keeps about an external runner once it has started using it."""

    is_loading: bool
    hardware: dict[str, Any]
    version: dict[str, Any]


def register_external_runner(
    get: Callable[[str], tuple[int, Any]], entry_url: str, pipeline: str, model_id: str, *, polls: int = 240
) -> Registered:
    """ai/worker/container.go NewRunnerContainer, for an aiModels.json entry with a `url`.

    `get(url)` returns (status, decoded JSON or None). runnerWaitUntilReady polls /health every
    500 ms (2 minutes, externalContainerTimeout in ai/worker/docker.go): a non-200 or no answer
    polls again, `ERROR` stops the node, any other status is ready, `LOADING` included. Then
    /hardware/info is read once (getRunnerHardware: on failure, no GPU info) and /version once
    (on failure, version 0.0.0 for the entry's model_id). Neither is read again.
    """
    for _ in range(polls):
        status, health = get(route_url(entry_url, "health"))
        if status == 200 and isinstance(health, dict):
            if health.get("status") == "ERROR":
                raise GoCrash("runner is in error state: go-livepeer does not start")
            break
        time.sleep(0.5)
    else:
        raise GoCrash("timed out waiting for runner: go-livepeer does not start")
    status, hardware = get(route_url(entry_url, "hardware/info"))
    if status != 200 or not isinstance(hardware, dict):
        hardware = {"pipeline": pipeline, "model_id": model_id, "gpu_info": None}
    status, version = get(route_url(entry_url, "version"))
    if status != 200 or not isinstance(version, dict):
        version = {"pipeline": pipeline, "model_id": model_id, "version": "0.0.0"}
    return Registered(health.get("status") == "LOADING", hardware, version)


# ------------------------------------------------------------------------------------ versions

# github.com/Masterminds/semver/v3 NewVersion (what go-livepeer parses runner versions with):
# an optional "v", 1 to 3 numeric parts, then an optional pre-release and build metadata.
_SEMVER = re.compile(
    r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


def parse_semver(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) as Masterminds/semver reads it, or None where NewVersion fails."""
    match = _SEMVER.match(text)
    if match is None:
        return None
    return int(match[1]), int(match[2] or 0), int(match[3] or 0)


def advertised_version(versions: list[dict[str, Any]], pipeline: str, model_id: str) -> str:
    """ai/worker/utils.go LowestVersion: the lowest parseable version among the runners' /version
    answers whose pipeline and model_id equal the aiModels.json entry's; "" when none matches."""
    best: tuple[tuple[int, int, int], str] | None = None
    for version in versions:
        if version.get("pipeline") != pipeline or version.get("model_id") != model_id:
            continue
        parsed = parse_semver(str(version.get("version", "")))
        if parsed is not None and (best is None or parsed < best[0]):
            best = (parsed, str(version["version"]))
    return best[1] if best else ""


def version_compatible(minimum: str, version: str) -> bool:
    """core/capabilities.go isVersionCompatible: a gateway's minimum runner version against the
    advertised one; pre-release suffixes are ignored, an empty or unparseable version fails."""
    if not minimum:
        return True
    if version in ("", "undefined"):
        return False
    wanted, got = parse_semver(minimum), parse_semver(version)
    if wanted is None:
        return True
    return got is not None and got >= wanted
