"""What `llm-runner up` tells its user once the runner answers: where it is, and a request to try."""

from __future__ import annotations

import json
import logging
import sys
import threading
import urllib.request

logger = logging.getLogger("llm-runner")

POLL_S = 0.5
# The README's first request: the default model, streamed.
_BODY = '{"messages":[{"role":"user","content":"Hi"}],"stream":true}'


def curl_line(port: int, *, auth: bool) -> str:
    """The curl command that streams an answer from the runner on this host (the token by name only)."""
    header = ' -H "Authorization: Bearer $AUTH_TOKEN"' if auth else ""
    return f"curl -N localhost:{port}/llm{header} -d '{_BODY}'"


def serving(url: str, timeout: float = 2.0) -> bool:
    """Whether the web at `url` answers /health with OK (every configured model is served)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            answer = json.loads(response.read())
    except (OSError, ValueError):  # refused, an error status (HTTPError), not JSON
        return False
    return isinstance(answer, dict) and answer.get("status") == "OK"


def announce_when_ready(port: int, summary: str, *, auth: bool, stop: threading.Event) -> threading.Thread:
    """On a daemon thread: once /health says OK, log `summary` and print the curl line to try
    (unless `stop` is set first)."""

    def watch() -> None:
        url = f"http://127.0.0.1:{port}"
        while not stop.wait(POLL_S):
            if serving(url):
                logger.info("ready at http://localhost:%d: %s; try:", port, summary)
                print(f"    {curl_line(port, auth=auth)}", file=sys.stderr, flush=True)
                return

    thread = threading.Thread(target=watch, name="ready", daemon=True)
    thread.start()
    return thread
