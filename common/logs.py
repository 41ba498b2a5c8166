"""The runner's one log format, set up by each entry point (web, worker, operator CLI)."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"


def configure_logging(level: str) -> None:
    """Plain timestamped lines on stderr, for the entry points only."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
