"""RQ's own command line on the runner's Redis: `rq info -c ops.rq_settings` (any `rq` command
takes `-c`, or RQ_CONFIG=ops.rq_settings), through Sentinel when REDIS_SENTINELS is set.

Its names are RQ's settings for the runner's Redis (ops.rq_config). Importing it also turns RQ's job
hooks off in that `rq` process (ops.job_hooks): `rq info` cleans every queue's registries first,
which would send an abandoned job's webhooks and call its failure callback. RQ imports a settings
module only when no `-u/--url` is given (rq/cli/helpers.py, CliConfig.connection): give `-c` alone.
"""

from __future__ import annotations

import os
from typing import Any

from common.settings import Settings
from ops.job_hooks import disable_job_hooks
from ops.rq_config import rq_settings

disable_job_hooks()
_FOUND = rq_settings(Settings.from_env(os.environ))
# RQ takes REDIS_URL when it is not None, else SENTINEL.
REDIS_URL: str | None = _FOUND.get("REDIS_URL")
SENTINEL: dict[str, Any] | None = _FOUND.get("SENTINEL")
