"""The HTTP side of our go-livepeer live-runner model: the orchestrator's service and CLI ports.

Routes as go-livepeer registers them at 176aa415: server/ai_http.go (service port: POST
/runners/heartbeat, POST /runners/{runner_id}/unregister, GET /discovery, ANY
/apps/{runner_id}/app/{app_path...}) and server/webserver.go (CLI port: /registerLiveRunners).
Errors are Go's http.Error (text/plain, the message and a newline). The single-shot proxy is
ProxyLiveRunnerSingleShot + proxyLiveRunner over Go's httputil.ReverseProxy.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from tests.golivepeer_live import LiveRunnerRegistry, Runner, RunnerError

# net/http/httputil reverseproxy.go hopHeaders: never forwarded, either way.
HOP_HEADERS = frozenset(
    h.lower() for h in ("Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
                        "Te", "Trailer", "Transfer-Encoding", "Upgrade")
)  # fmt: skip
# ProxyRequest.Rewrite strips these from the outbound request (reverseproxy.go, ServeHTTP).
FORWARDED = frozenset(("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"))


def join_path(base: str, app_path: str) -> str:
    """url.JoinPath("/", target.Path, appPath): joined, cleaned (path.Join), a trailing "/" kept."""
    parts = [p for p in f"{base}/{app_path}".split("/") if p not in ("", ".")]
    cleaned: list[str] = []
    for part in parts:
        if part == "..":
            if cleaned:
                cleaned.pop()
        else:
            cleaned.append(part)
    path = "/" + "/".join(cleaned)
    return path + "/" if app_path.endswith("/") and not path.endswith("/") else path


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the registry's events say what happened."""

    def _dispatch(self) -> None:
        try:
            self.server.route(self)
        except RunnerError as exc:
            self.error(exc.status, exc.message)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def body(self) -> bytes:
        """The request's body (Content-Length)."""
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def error(self, status: int, message: str) -> None:
        """http.Error: text/plain, nosniff, the message and a newline."""
        self.send(status, (message + "\n").encode(), "text/plain; charset=utf-8", {"X-Content-Type-Options": "nosniff"})

    def send(
        self, status: int, payload: bytes, content_type: str | None, headers: dict[str, str] | None = None
    ) -> None:
        """A whole answer with its Content-Length."""
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def json(self, obj: Any) -> None:
        """respondJsonOk: json.Marshal, application/json, 200."""
        self.send(200, json.dumps(obj, separators=(",", ":")).encode(), "application/json")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: LiveRunnerRegistry

    def route(self, handler: _Handler) -> None:
        raise NotImplementedError


class _ServicePort(_Server):
    """The orchestrator's HTTP server (-serviceAddr, usually port 8935)."""

    def route(self, h: _Handler) -> None:
        path = urlsplit(h.path).path
        segments = path.split("/")
        if h.command == "POST" and path == "/runners/heartbeat":
            try:  # LiveRunnerHeartbeat: json.NewDecoder(r.Body).Decode into the request struct
                request = json.loads(h.body() or b"null")
                if not isinstance(request, dict):
                    raise ValueError("json: cannot unmarshal into Go value of type runner.LiveRunnerHeartbeatRequest")
            except ValueError as exc:
                raise RunnerError(400, str(exc)) from None
            runner_id = str(request.get("runner_id", ""))
            try:
                answer = self.registry.heartbeat(request, h.headers.get("Authorization", ""))
            except RunnerError as exc:
                self.registry.record("refused", runner_id=runner_id, status=exc.status, message=exc.message)
                raise
            h.json(answer)
        elif h.command == "POST" and len(segments) == 4 and segments[1] == "runners" and segments[3] == "unregister":
            h.body()
            runner_id = unquote(segments[2])
            try:
                self.registry.unregister(runner_id, h.headers.get("Authorization", ""))
            except RunnerError as exc:
                self.registry.record("unregister", runner_id=runner_id, status=exc.status)
                raise
            self.registry.record("unregister", runner_id=runner_id, status=204)
            h.send(204, b"", None)
        elif h.command == "GET" and path == "/discovery":
            h.json(self.registry.discovery())
        elif len(segments) >= 4 and segments[1] == "apps" and segments[3] == "app" and segments[2]:
            if len(segments) == 4:  # ServeMux: "/apps/x/app" redirects to the pattern's "/apps/x/app/"
                h.body()
                h.send(301, b"", None, {"Location": path + "/"})
                return
            self.single_shot(h, unquote(segments[2]), unquote("/".join(segments[4:])))
        else:
            h.body()
            h.error(404, "404 page not found")

    def single_shot(self, h: _Handler, route: str, app_path: str) -> None:
        """ProxyLiveRunnerSingleShot: reserve one slot (503 beyond capacity), proxy, release."""
        body = h.body()
        runner, session_id = self.registry.reserve_single_shot(route)
        try:
            self.proxy(h, runner, route, session_id, app_path, body)
        finally:
            self.registry.release(runner, session_id)

    def proxy(self, h: _Handler, runner: Runner, route: str, session_id: str, app_path: str, body: bytes) -> None:
        """proxyLiveRunner: the app path appended to runner_url's path, the query kept, the four
        Livepeer headers set; the answer streamed back as it comes (flushed at once for SSE and
        for bodies of unknown length: reverseproxy.go flushInterval), 502 when there is none."""
        target = urlsplit(runner.request["runner_url"])
        query = urlsplit(h.path).query
        url = f"{target.scheme}://{target.netloc}{join_path(target.path, app_path)}" + (f"?{query}" if query else "")
        control = f"{self.registry.runner_addr}/runner/{route}/session/{session_id}"
        connection_named = {t.strip().lower() for t in h.headers.get("Connection", "").split(",")}
        dropped = HOP_HEADERS | FORWARDED | connection_named | {"host", "content-length"}
        headers = {k: v for k, v in h.headers.items() if k.lower() not in dropped}
        headers.update({
            "Livepeer-Runner-Route": route,
            "Livepeer-Session-Id": session_id,
            "Livepeer-Session-Token": self.registry.session_token(runner, session_id),
            "Livepeer-Session-Control": control,
        })  # fmt: skip
        self.registry.record("proxied", route=route, session_id=session_id, url=url)
        with requests.Session() as session:
            session.headers.clear()  # Go's transport adds nothing the client did not send
            try:
                upstream = session.request(h.command, url, headers=headers, data=body or None, stream=True,
                                           allow_redirects=False, timeout=(3.0, None))  # fmt: skip
            except requests.RequestException as exc:
                h.error(502, str(exc))
                return
            with upstream:
                self._relay(h, upstream)

    @staticmethod
    def _relay(h: _Handler, upstream: requests.Response) -> None:
        h.send_response_only(upstream.status_code)  # the upstream's own Date and Server pass through
        known_length = "content-length" in {k.lower() for k in upstream.raw.headers}
        for name, value in upstream.raw.headers.items():
            if name.lower() not in HOP_HEADERS:
                h.send_header(name, value)
        if not known_length:
            h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for piece in upstream.raw.stream(65536, decode_content=False):
            if piece:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if not known_length else piece)
        if not known_length:
            h.wfile.write(b"0\r\n\r\n")


class _CliPort(_Server):
    """The orchestrator's CLI server (-cliAddr, 127.0.0.1:7935 by default)."""

    def route(self, h: _Handler) -> None:
        body = h.body()
        if urlsplit(h.path).path != "/registerLiveRunners":
            h.error(404, "404 page not found")
        elif h.command != "POST":  # registerLiveRunnersHandler
            h.error(405, "Method not allowed")
        else:
            h.json(self.registry.register_static(body))


class FakeOrchestrator:
    """An orchestrator with live runners on two free ports: `url` (service) and `cli_url`."""

    def __init__(self, **registry: Any) -> None:
        self._servers: list[_Server] = [_ServicePort(("127.0.0.1", 0), _Handler), _CliPort(("127.0.0.1", 0), _Handler)]
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cli_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        self.registry = LiveRunnerRegistry(service_url=self.url, **registry)
        for server in self._servers:
            server.registry = self.registry
        self._threads: list[threading.Thread] = []

    def start(self, static_config: dict[str, Any] | None = None) -> FakeOrchestrator:
        """Serve both ports; load a -liveRunnerConfig document first if given (starter.go)."""
        if static_config is not None:
            self.registry.register_static(json.dumps(static_config).encode())
        self.registry.start()
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving and the registry's loops."""
        self.registry.stop()
        for server in self._servers:
            with contextlib.suppress(OSError):
                server.shutdown()
                server.server_close()

    def __enter__(self) -> FakeOrchestrator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def discovered(self) -> list[dict[str, Any]]:
        """The runners GET /discovery lists now."""
        answer = requests.get(f"{self.url}/discovery", timeout=5)
        answer.raise_for_status()
        runners: list[dict[str, Any]] = answer.json()[0].get("runners", [])
        return runners


def sse_text(lines: Iterator[bytes]) -> tuple[str, bool]:
    """The text of an OpenAI-style SSE stream read to its end, and whether `[DONE]` ended it."""
    text, done = [], False
    for line in lines:
        if not line.startswith(b"data: "):
            continue
        if line == b"data: [DONE]":
            done = True
            break
        chunk = json.loads(line[6:])
        for choice in chunk.get("choices") or []:
            text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text), done
