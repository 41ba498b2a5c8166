"""Redis without a single point of failure in compose (`llm-runner compose --redis-ha`): a master,
a replica and three Redis Sentinels, every one behind a password, none published on the host.

The sentinels watch the master `llm-runner` (first the `redis` service) and promote the replica
when a majority of them has seen the master down for DOWN_AFTER_MS. Containers address each other
by service name: the nodes announce their names (`replica-announce-ip`) and the sentinels resolve
and announce names (`resolve-hostnames`, `announce-hostnames`, Redis 6.2+), so the master the
sentinels name is one the runner's containers can reach. The runner's services get
REDIS_SENTINELS and REDIS_SENTINEL_MASTER; REDIS_URL only carries the password and database.

The data nodes keep an append-only file in a volume: a master that crashes and restarts before
the sentinels notice must not come back empty, or its replica would copy the empty data set
(Redis's replication documentation warns of masters without persistence that restart).
"""

from __future__ import annotations

from typing import Any

from ops.compose_base import (
    HEALTHY,
    NETWORK,
    REDIS_HEALTHCHECK,
    REDIS_IMAGE,
    REDIS_PASSWORD,
    REDIS_URL,
    RedisWiring,
    env,
)

MASTER_NAME = "llm-runner"
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
QUORUM = 2
SENTINEL_PORT = 26379
# Sentinel's default is 30 s. The runner rides out an outage as long as its publisher keeps events
# (10 s): the master's detection plus a vote and a promotion (1 to 2 s) must fit in it.
DOWN_AFTER_MS = 5000
FAILOVER_TIMEOUT_MS = 60000
SENTINEL_PASSWORD = (
    "${REDIS_SENTINEL_PASSWORD:?set REDIS_SENTINEL_PASSWORD in .env (llm-runner compose --output writes one)}"
)
SENTINEL_CONFIG = "/data/sentinel.conf"

# The runner's services: Sentinel names the master; REDIS_URL gives its password and database.
HA = RedisWiring(
    {
        "REDIS_URL": REDIS_URL,
        "REDIS_SENTINELS": ",".join(f"{name}:{SENTINEL_PORT}" for name in SENTINELS),
        "REDIS_SENTINEL_MASTER": MASTER_NAME,
        "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        **env("REDIS_WAIT_REPLICAS", "REDIS_WAIT_MS"),
    },
    {name: HEALTHY for name in SENTINELS},
)


def _node(name: str, replica_of: str | None) -> dict[str, Any]:
    command = ["redis-server", "--requirepass", REDIS_PASSWORD, "--masterauth", REDIS_PASSWORD,
               "--replica-announce-ip", name, "--appendonly", "yes", "--save", ""]  # fmt: skip
    if replica_of is not None:
        command += ["--replicaof", replica_of, "6379"]
    service: dict[str, Any] = {
        "image": REDIS_IMAGE,
        # redis-server replaces its process title, so `ps` does not show the password.
        "command": command,
        "environment": {"REDISCLI_AUTH": REDIS_PASSWORD},
        "volumes": [f"{name}-data:/data"],
        "restart": "unless-stopped",
        "healthcheck": dict(REDIS_HEALTHCHECK),
        "networks": [NETWORK],
    }
    if replica_of is not None:
        service["depends_on"] = {replica_of: HEALTHY}
    return service


def _sentinel(name: str) -> dict[str, Any]:
    lines = [
        f"port {SENTINEL_PORT}",
        "sentinel resolve-hostnames yes",
        "sentinel announce-hostnames yes",
        f"sentinel announce-ip {name}",
        f"sentinel monitor {MASTER_NAME} redis 6379 {QUORUM}",
        f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
        f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
        f"sentinel parallel-syncs {MASTER_NAME} 1",
        f"sentinel auth-pass {MASTER_NAME} {REDIS_PASSWORD}",
        f"requirepass {SENTINEL_PASSWORD}",
        f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
    ]
    quoted = " ".join(f"'{line}'" for line in lines)
    # A sentinel rewrites its configuration with what it learns (the current master, the epoch):
    # it is written once into the volume and kept, so a restarted sentinel knows where the master went.
    script = (f"[ -f {SENTINEL_CONFIG} ] || printf '%s\\n' {quoted} > {SENTINEL_CONFIG}; "
              f"exec redis-sentinel {SENTINEL_CONFIG}")  # fmt: skip
    return {
        "image": REDIS_IMAGE,
        "command": ["sh", "-c", script],
        "user": "redis",
        "environment": {"REDISCLI_AUTH": SENTINEL_PASSWORD},
        "volumes": [f"{name}:/data"],
        "depends_on": {"redis": HEALTHY, "redis-replica": HEALTHY},
        "restart": "unless-stopped",
        # Healthy once it names a master (a port line; an error has no line starting with a digit).
        "healthcheck": {
            "test": [
                "CMD-SHELL",
                f"redis-cli -p {SENTINEL_PORT} sentinel get-master-addr-by-name {MASTER_NAME} | grep -q '^[0-9]'",
            ],
            "interval": "5s",
            "timeout": "3s",
            "retries": 10,
        },
        "networks": [NETWORK],
    }


def services() -> dict[str, dict[str, Any]]:
    """The master, its replica and the three sentinels, by service name."""
    found = {"redis": _node("redis", None), "redis-replica": _node("redis-replica", "redis")}
    for name in SENTINELS:
        found[name] = _sentinel(name)
    return found


def volumes() -> dict[str, dict[str, Any]]:
    """Their volumes: the nodes' append-only files and the sentinels' configuration."""
    return {name: {} for name in ("redis-data", "redis-replica-data", *SENTINELS)}
