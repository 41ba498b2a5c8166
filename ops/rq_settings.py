"""RQ's own command line on the runner's Redis: `rq info -c ops.rq_settings` (any `rq` command
takes `-c`, or RQ_CONFIG=ops.rq_settings), through Sentinel when REDIS_SENTINELS is set.

RQ reads the upper-case names of a settings module (rq/cli/helpers.py read_config_file): REDIS_URL,
or SENTINEL = {INSTANCES, MASTER_NAME, DB, USERNAME, PASSWORD, SSL, CONNECTION_KWARGS,
SENTINEL_KWARGS} for its get_redis_from_config, which builds redis-py's Sentinel(...).master_for.
They are built here from the runner's own variables, so `rq` reaches Redis as the runner does.
Importing it also turns RQ's job hooks off in that `rq` process (ops.job_hooks): `rq info` cleans
every queue's registries first, which would send an abandoned job's webhooks and call its failure
callback. RQ imports a settings module only when no `-u/--url` is given (rq/cli/helpers.py,
CliConfig.connection): give `-c` alone.
"""

from __future__ import annotations

import os
from typing import Any

from common.redis_conn import node_options, sentinel_options
from common.settings import Settings
from ops.job_hooks import disable_job_hooks


def rq_settings(settings: Settings) -> dict[str, Any]:
    """RQ's settings for the runner's Redis: SENTINEL with Sentinel, else REDIS_URL (REDIS_URL wins in RQ)."""
    if not settings.redis_sentinels:
        return {"REDIS_URL": settings.redis_url}
    node = node_options(settings.redis_url)
    return {
        "SENTINEL": {
            "INSTANCES": list(settings.redis_sentinels),
            "MASTER_NAME": settings.redis_sentinel_master,
            "DB": node.pop("db", 0),
            "USERNAME": node.pop("username", None),
            "PASSWORD": node.pop("password", None),
            "SSL": node.pop("ssl", False),
            "SOCKET_TIMEOUT": 10,
            "CONNECTION_KWARGS": node,  # TLS options from REDIS_URL's query (ssl_cert_reqs, ...)
            "SENTINEL_KWARGS": sentinel_options(settings.redis_target),
        }
    }


disable_job_hooks()
_FOUND = rq_settings(Settings.from_env(os.environ))
# RQ takes REDIS_URL when it is not None, else SENTINEL.
REDIS_URL: str | None = _FOUND.get("REDIS_URL")
SENTINEL: dict[str, Any] | None = _FOUND.get("SENTINEL")
