"""A settings module for RQ's CLI, as the runner's own one for `rq info` must be: RQ's job hooks
off at import (ops.job_hooks), and Redis's address from the environment. RQ's CLI imports a
settings module only when no `-u/--url` is given (rq/cli/helpers.py, CliConfig.connection):
`rq info -c tests.rq_info_settings`, never with `-u`."""

from __future__ import annotations

import os

from ops.job_hooks import disable_job_hooks

disable_job_hooks()

REDIS_URL = os.environ["REDIS_URL"]
