"""The runner's side of go-livepeer's dynamic live-runner protocol, over HTTP (requests).

go-livepeer server/ai_http.go: `POST /runners/heartbeat` (LiveRunnerHeartbeat) creates or updates
a runner, `POST /runners/{runner_id}/unregister` (UnregisterLiveRunner) removes it; both read the
credential from `Authorization` as is (no scheme): the orchestrator's -orchSecret to register,
then the `heartbeat_secret` the first answer returned. Errors come as http.Error text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from common.live_runner import parse_go_duration
from web.live_lease import Credentials

_SHOWN_CHARS = 300


@dataclass(frozen=True)
class OrchAnswer:
    """An orchestrator's answer: its status, its JSON (on 200) and its error text (otherwise)."""

    status: int
    data: dict[str, Any]
    message: str


class OrchestratorClient:
    """Calls one orchestrator's live-runner endpoints; one HTTP session, reused."""

    def __init__(self, orch_url: str) -> None:
        self.orch_url = orch_url
        self._session = requests.Session()

    def heartbeat(self, body: dict[str, Any], authorization: str, timeout_s: float) -> OrchAnswer:
        """POST /runners/heartbeat; raises requests.RequestException when there is no answer."""
        response = self._session.post(
            f"{self.orch_url}/runners/heartbeat", json=body, headers={"Authorization": authorization},
            timeout=timeout_s, allow_redirects=False,
        )  # fmt: skip
        return _answer(response)

    def unregister(self, runner_id: str, secret: str, timeout_s: float) -> OrchAnswer:
        """POST /runners/{runner_id}/unregister (204 when removed); raises requests.RequestException."""
        response = self._session.post(
            f"{self.orch_url}/runners/{quote(runner_id, safe='')}/unregister", headers={"Authorization": secret},
            timeout=timeout_s, allow_redirects=False,
        )  # fmt: skip
        return _answer(response)


def _answer(response: requests.Response) -> OrchAnswer:
    with response:
        data: dict[str, Any] = {}
        if response.status_code == 200:
            try:
                parsed = response.json()
            except ValueError:
                parsed = None
            data = parsed if isinstance(parsed, dict) else {}
        message = "" if data else response.text.strip()[:_SHOWN_CHARS]
        return OrchAnswer(response.status_code, data, message)


def credentials_from(answer: OrchAnswer, orch_url: str, previous: Credentials | None) -> Credentials:
    """The credentials a 200 answer gives: a first registration's secret, or the previous one kept
    (go-livepeer returns `heartbeat_secret` on first registration only, live_runner.go Heartbeat);
    ValueError when the answer lacks what the protocol promises."""
    data = answer.data
    runner_id = data.get("runner_id")
    secret = data.get("heartbeat_secret") or (previous.secret if previous is not None else None)
    if not isinstance(runner_id, str) or not runner_id or not isinstance(secret, str) or not secret:
        raise ValueError(f"an answer without runner_id or heartbeat_secret: {sorted(data)}")
    interval = parse_go_duration(str(data.get("heartbeat_interval", "")))
    ttl = parse_go_duration(str(data.get("heartbeat_ttl", "")))
    if interval <= 0 or ttl <= 0:
        raise ValueError(f"heartbeat_interval {interval:g} s and heartbeat_ttl {ttl:g} s must be positive")
    return Credentials(orch_url=orch_url, runner_id=runner_id, secret=secret, interval_s=interval, ttl_s=ttl)
