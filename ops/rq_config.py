"""RQ's settings for the runner's Redis, as RQ's CLI reads them from a settings module (ops.rq_settings).

RQ reads the upper-case names of a settings module (rq/cli/helpers.py read_config_file): REDIS_URL,
or SENTINEL = {INSTANCES, MASTER_NAME, DB, USERNAME, PASSWORD, SSL, CONNECTION_KWARGS,
SENTINEL_KWARGS} for its get_redis_from_config, which builds redis-py's Sentinel(...).master_for.
They are built here from the runner's own variables, so `rq` reaches Redis as the runner does.
Pure: importing it changes nothing (ops.rq_settings is the module with effects, for `rq -c`).
"""

from __future__ import annotations

from typing import Any

from common.redis_conn import node_options, sentinel_options
from common.settings import Settings


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
