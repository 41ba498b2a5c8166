"""A Redis Sentinel deployment on loopback for tests: a master, a replica and three sentinels.

Every process is real (`redis-server`, `redis-sentinel`), on free ports, in a temporary
directory, stopped at the end. Sentinel detects a dead master after DOWN_AFTER_MS (Redis's
default is 30 s; 1 s here, as an operator who wants fast failovers would set it). Readiness and
failover are waited on through positive signals: the replica's `master_link_status:up`, each
sentinel seeing the replica and the two other sentinels (`SENTINEL MASTER`), and the sentinels'
`+switch-master` event (SUBSCRIBE).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from redis import Redis
from redis.sentinel import Sentinel

from common.redis_target import RedisTarget
from ops.supervise import redis_server_binary
from tests.stack import free_port, wait_until

MASTER_NAME = "llm-runner"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
QUORUM = 2
SENTINELS = 3


def binaries() -> tuple[str, list[str]]:
    """redis-server and how to start a sentinel: Debian's `redis-sentinel` and the `redis-server`
    beside it (same version, built with TLS), else `redis-server --sentinel`."""
    system = "/usr/bin/redis-sentinel"
    found = system if os.path.exists(system) else shutil.which("redis-sentinel")
    if found:
        beside = Path(found).with_name("redis-server")
        return (str(beside) if beside.exists() else redis_server_binary() or "redis-server"), [found]
    server = redis_server_binary()
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("redis-sentinel is required under CI (Debian's redis-sentinel package)")
        pytest.skip("neither redis-sentinel nor redis-server is installed")
    return server, [server, "--sentinel"]


@dataclass
class Certs:
    """A throwaway CA and a certificate for 127.0.0.1 (trustme), as files."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> Certs:
        """Write them under `directory`."""
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1", "localhost")
        paths = cls(directory / "ca.pem", directory / "node.pem", directory / "node.key")
        ca.cert_pem.write_to_path(str(paths.ca))
        issued.cert_chain_pems[0].write_to_path(str(paths.cert))
        issued.private_key_pem.write_to_path(str(paths.key))
        return paths


class Node:
    """One redis-server or redis-sentinel process, its config file and its log."""

    def __init__(self, name: str, argv: list[str], directory: Path, port: int) -> None:
        self.name, self.port = name, port
        self.log = directory / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=str(directory))

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def output(self) -> str:
        """What it logged."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing flushed, as a host that died."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SentinelCluster:
    """Master, replica and three sentinels; `password` guards the nodes, `sentinel_password` the
    sentinels, `certs` puts every link (clients, replication, sentinels) on TLS."""

    def __init__(
        self,
        directory: Path,
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
        certs: Certs | None = None,
    ) -> None:
        self.server, self.sentinel_argv = binaries()
        self.dir = directory
        self.password = password
        self.sentinel_password = sentinel_password
        self.certs = certs
        self.nodes: list[Node] = []
        self.data: dict[int, Node] = {}  # port → redis-server
        self.sentinels: list[Node] = []
        self.switched: list[tuple[float, str, int]] = []  # (monotonic time, new master host, port)
        self._switch = threading.Event()
        self._watching = threading.Event()
        self._stop = threading.Event()

    # --- what the runner is given -------------------------------------------------------------

    @property
    def url(self) -> str:
        """REDIS_URL for the runner: password and database only; its host is never used."""
        scheme = "rediss" if self.certs else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}unused.invalid:1/0"

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """The sentinels' addresses."""
        return tuple(("127.0.0.1", node.port) for node in self.sentinels)

    def env(self) -> dict[str, str]:
        """The runner's Redis variables for this deployment."""
        env = {
            "REDIS_URL": self.url,
            "REDIS_SENTINELS": ",".join(f"{host}:{port}" for host, port in self.addresses),
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
        }
        if self.sentinel_password:
            env["REDIS_SENTINEL_PASSWORD"] = self.sentinel_password
        if self.certs:
            env["SSL_CERT_FILE"] = str(self.certs.ca)
        return env

    def target(self) -> RedisTarget:
        """The same deployment as a RedisTarget."""
        return RedisTarget(self.url, self.addresses, MASTER_NAME, self.sentinel_password)

    # --- clients for the test's own checks -----------------------------------------------------

    def _tls(self) -> dict[str, Any]:
        return {"ssl": True, "ssl_ca_certs": str(self.certs.ca)} if self.certs else {}

    def node_client(self, port: int) -> Redis:
        """A client on one data node."""
        return Redis(host="127.0.0.1", port=port, password=self.password, socket_timeout=5, **self._tls())

    def sentinel_client(self, index: int = 0) -> Redis:
        """A client on one sentinel."""
        _, port = self.addresses[index]
        return Redis(host="127.0.0.1", port=port, password=self.sentinel_password, socket_timeout=5, **self._tls())

    def master(self) -> Redis:
        """A client that follows the master (redis-py's Sentinel)."""
        sentinel = Sentinel(list(self.addresses), sentinel_kwargs={"password": self.sentinel_password, **self._tls()},
                            password=self.password, socket_timeout=5, **self._tls())  # fmt: skip
        return sentinel.master_for(MASTER_NAME)

    def master_port(self) -> int:
        """The port of the master the sentinels name now."""
        _, port = self.sentinel_client().sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    # --- life -----------------------------------------------------------------------------------

    def _tls_args(self, port: int) -> list[str]:
        if not self.certs:
            return ["--port", str(port)]
        c = self.certs
        return ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(c.cert), "--tls-key-file", str(c.key),
                "--tls-ca-cert-file", str(c.ca), "--tls-auth-clients", "no", "--tls-replication", "yes"]  # fmt: skip

    def _start_data(self, name: str, replica_of: int | None = None) -> Node:
        port = free_port()
        argv = [self.server, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                "--dbfilename", f"{name}.rdb", *self._tls_args(port)]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        node = Node(name, argv, self.dir, port)
        self.nodes.append(node)
        self.data[port] = node
        return node

    def _start_sentinel(self, index: int, master_port: int) -> Node:
        port = free_port()
        lines = [
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {QUORUM}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        if self.certs:
            c = self.certs
            lines += ["port 0", f"tls-port {port}", f"tls-cert-file {c.cert}", f"tls-key-file {c.key}",
                      f"tls-ca-cert-file {c.ca}", "tls-auth-clients no", "tls-replication yes"]  # fmt: skip
        else:
            lines.append(f"port {port}")
        if self.password:
            lines.append(f"sentinel auth-pass {MASTER_NAME} {self.password}")
        if self.sentinel_password:
            # Its own password, and the one it gives the other sentinels.
            lines += [f"requirepass {self.sentinel_password}", f"sentinel sentinel-pass {self.sentinel_password}"]
        config = self.dir / f"sentinel-{index}.conf"
        config.write_text("\n".join(lines) + "\n")  # sentinel rewrites it: it must be writable
        node = Node(f"sentinel-{index}", [*self.sentinel_argv, str(config)], self.dir, port)
        self.nodes.append(node)
        self.sentinels.append(node)
        return node

    def start_nodes(self) -> tuple[Node, Node]:
        """Start the master and its replica only; return once the replica is in sync."""
        master = self._start_data("master")
        wait_until(lambda: self.node_client(master.port).ping(), 10, "the master")
        replica = self._start_data("replica", replica_of=master.port)
        wait_until(lambda: self.node_client(replica.port).info("replication")["master_link_status"] == "up", 15,
                   "the replica in sync")  # fmt: skip
        return master, replica

    def start(self) -> SentinelCluster:
        """Start everything; return once the replica is in sync and every sentinel knows the others."""
        master, _ = self.start_nodes()
        for index in range(SENTINELS):
            self._start_sentinel(index, master.port)

        def sentinels_agree() -> bool:
            for index in range(SENTINELS):
                state = self.sentinel_client(index).sentinel_master(MASTER_NAME)
                if state["num-slaves"] < 1 or state["num-other-sentinels"] < SENTINELS - 1:
                    return False
            return True

        # Sentinels find each other through the master's hello channel, every 2 s.
        wait_until(sentinels_agree, 30, "three sentinels that see the replica and each other")
        threading.Thread(target=self._watch, name="switch-master", daemon=True).start()
        assert self._watching.wait(10), "could not subscribe to +switch-master"
        return self

    def _watch(self) -> None:
        """Record every `+switch-master` (SUBSCRIBE on a sentinel), resubscribing if it drops."""
        while not self._stop.is_set():
            try:
                pubsub = self.sentinel_client(0).pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe("+switch-master")
                self._watching.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is None:
                        continue
                    # "<name> <old ip> <old port> <new ip> <new port>"
                    _, _, _, host, port = message["data"].decode().split()
                    self.switched.append((time.monotonic(), host, int(port)))
                    self._switch.set()
            except Exception:  # the sentinel restarting: watch again
                time.sleep(0.1)

    def kill_master(self) -> tuple[float, int]:
        """SIGKILL the master; returns when, and which port it had."""
        port = self.master_port()
        self._switch.clear()
        killed_at = time.monotonic()
        self.data[port].kill()
        return killed_at, port

    def wait_switch(self, timeout: float = 30.0) -> tuple[float, int]:
        """Wait for the sentinels' `+switch-master`; (when it came, the new master's port)."""
        assert self._switch.wait(timeout), f"no +switch-master within {timeout:g} s:\n{self.logs()}"
        at, _, port = self.switched[-1]
        return at, port

    def logs(self) -> str:
        """The last lines of every node's log."""
        return "\n".join(f"----- {n.name} -----\n{n.output()[-4000:]}" for n in self.nodes)

    def stop(self) -> None:
        """Stop every process."""
        self._stop.set()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
