"""The Redis part of `llm-runner compose --redis-ha`, run as real processes: the generated commands,
sentinel script and healthchecks, with only what Docker would provide swapped for this machine
(ports, the service names → localhost, /data → a directory, the .env passwords). The sentinels
must agree, every healthcheck pass, and a killed master be replaced by its replica."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions
import yaml
from redis import Redis

from ops.compose import render_compose
from ops.compose_ha import MASTER_NAME, SENTINEL_PORT, SENTINELS
from tests.sentinel_cluster import Node, binaries
from tests.stack import free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PASSWORDS = {"REDIS_PASSWORD": "node-pass-1", "REDIS_SENTINEL_PASSWORD": "sentinel-pass-2"}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")


def filled(value: str) -> str:
    """What Compose makes of a value, with this test's .env."""
    return INTERPOLATION.sub(lambda m: PASSWORDS.get(m.group(1), ""), value)


class Deployment:
    """The generated Redis services as local processes."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.spec: dict[str, Any] = yaml.safe_load(render_compose([0], redis_ha=True))["services"]
        self.server, sentinel = binaries()
        self.path = os.pathsep.join([str(Path(sentinel[0]).parent), os.environ.get("PATH", "")])
        self.ports = {name: free_port() for name in ("redis", "redis-replica", *SENTINELS)}
        self.nodes: dict[str, Node] = {}

    def local(self, text: str) -> str:
        """Service names → localhost, container ports → this machine's, /data → a directory."""
        for name in ("redis-replica", "redis", *SENTINELS):  # longest name first
            text = re.sub(rf"(?<![\w-]){name}(?![\w-])", "localhost", text)
        text = text.replace(f"port {SENTINEL_PORT}", "port {sentinel_port}")
        return text

    def start_node(self, name: str) -> None:
        command = [filled(word) for word in self.spec[name]["command"]]
        assert command[0] == "redis-server"
        if "--replicaof" in command:  # its master is the redis service
            command[command.index("--replicaof") + 2] = str(self.ports["redis"])
        argv = [self.server, *(self.local(w) for w in command[1:]), "--port", str(self.ports[name]),
                "--bind", "127.0.0.1", "--dir", str(self.dir), "--dbfilename", f"{name}.rdb",
                "--appenddirname", f"{name}-aof"]  # fmt: skip
        self.nodes[name] = Node(name, argv, self.dir, self.ports[name])

    def start_sentinel(self, name: str) -> None:
        shell, flag, script = self.spec[name]["command"]
        data = self.dir / name
        data.mkdir()
        script = self.local(filled(script)).replace("/data/", f"{data}/")
        script = script.replace("{sentinel_port}", str(self.ports[name]))
        script = script.replace("localhost 6379 ", f"localhost {self.ports['redis']} ")
        self.nodes[name] = Node(name, [shell, flag, script], self.dir, self.ports[name])

    def healthy(self, name: str) -> bool:
        """The service's own healthcheck, run here, with its environment."""
        test = self.spec[name]["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL"
        command = self.local(test[1]).replace(f"-p {SENTINEL_PORT}", f"-p {self.ports[name]}")
        if "-p " not in command:
            command = command.replace("redis-cli", f"redis-cli -p {self.ports[name]}")
        env = {"PATH": self.path, **{k: filled(v) for k, v in self.spec[name]["environment"].items()}}
        return subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=10).returncode == 0

    def sentinel(self, name: str) -> Redis:
        return Redis(port=self.ports[name], password=PASSWORDS["REDIS_SENTINEL_PASSWORD"], socket_timeout=5)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    found = Deployment(tmp_path)
    try:
        yield found
    finally:
        found.stop()


def test_the_generated_redis_ha_services_fail_over(deployment: Deployment) -> None:
    deployment.start_node("redis")
    wait_until(lambda: deployment.healthy("redis"), 15, "redis healthy")
    deployment.start_node("redis-replica")
    wait_until(lambda: deployment.healthy("redis-replica"), 15, "redis-replica healthy")
    for name in SENTINELS:
        deployment.start_sentinel(name)

    def agreed() -> bool:
        for name in SENTINELS:
            state = deployment.sentinel(name).sentinel_master(MASTER_NAME)
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < len(SENTINELS) - 1:
                return False
        return True

    wait_until(agreed, 30, "three sentinels that see the replica and each other")
    for name in SENTINELS:
        assert deployment.healthy(name), deployment.nodes[name].output()
    with pytest.raises(redis.exceptions.AuthenticationError):
        Redis(port=deployment.ports[SENTINELS[0]], socket_timeout=5).ping()  # the sentinels want their password
    deployment.nodes["redis"].kill()

    def promoted() -> bool:
        _, port = deployment.sentinel(SENTINELS[0]).sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port) == deployment.ports["redis-replica"]

    # down-after-milliseconds as generated, then a vote and the promotion.
    wait_until(promoted, 30, "the replica promoted")
    host, _ = deployment.sentinel(SENTINELS[1]).sentinel_get_master_addr_by_name(MASTER_NAME)
    assert host == b"localhost", "the sentinels announce the master by name (announce-hostnames)"
