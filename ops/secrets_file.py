"""The passwords a compose deployment needs, generated into its .env when they are missing."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

# Variables the compose files require (`${NAME:?...}`) that nobody has to choose by hand.
GENERATED = ("REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD", "RQ_DASHBOARD_PASSWORD")
_ASSIGNMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def new_password() -> str:
    """A random password that is safe inside a URL (letters, digits, '-' and '_')."""
    return secrets.token_urlsafe(24)


def shown_url(url: str) -> str:
    """A URL fit for logs and terminals: its password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def required(compose_text: str) -> list[str]:
    """The GENERATED variables a compose file requires (`${NAME:?...}`)."""
    return [name for name in GENERATED if f"${{{name}:?" in compose_text]


def ensure(path: str, names: Sequence[str] = GENERATED) -> tuple[str, list[str]]:
    """Give each of `names` (GENERATED variables) in the .env at `path` a value if it has none;
    returns (path, names written).

    An empty assignment (as copied from .env.example) is filled in place; a missing one is
    appended; a value already set is kept. The file is readable by its owner only.
    """
    lines = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as existing:
            lines = existing.read().splitlines()
    values = {m.group(1): (i, m.group(2)) for i, line in enumerate(lines) if (m := _ASSIGNMENT.match(line))}
    written = []
    for name in names:
        index, value = values.get(name, (None, ""))
        if value.strip("'\""):
            continue
        assignment = f"{name}={new_password()}"
        if index is None:
            lines.append(assignment)
        else:
            lines[index] = assignment
        written.append(name)
    if written:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
        os.chmod(path, 0o600)
    return path, written
