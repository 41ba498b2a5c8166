"""Functions a hostile RQ job could name: each leaves a file behind if it is ever imported or called."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Importing this module is itself a side effect a worker must never have.
if os.environ.get("CANARY_IMPORTED"):
    Path(os.environ["CANARY_IMPORTED"]).write_text("imported")


def mark(path: Any, *args: Any) -> None:
    """Write 'ran' to `path` (a job's first argument), or to the path a job's description names."""
    target = path if isinstance(path, str) else path.description
    Path(target).write_text("ran")
