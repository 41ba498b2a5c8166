"""Where Redis is (REDIS_URL, or a master named by Redis Sentinel), as plain data.

No redis-py here: the settings import it, and gunicorn's configuration imports the settings
before its gevent worker patches `ssl`, which redis-py imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

# Sentinel's own default port.
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisTarget:
    """REDIS_URL, and when REDIS_SENTINELS is set the sentinels and the master name they watch."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    sentinel_password: str | None = None

    @property
    def tls(self) -> bool:
        """Whether Redis (and its sentinels) are spoken to over TLS (`rediss://`)."""
        return self.url.startswith("rediss://")

    def describe(self) -> str:
        """Where this is, for logs: no password."""
        if self.sentinels:
            listed = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"the master {self.master!r} of the sentinels at {listed}"
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def parse_sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (a bare host means port 26379; IPv6 in brackets); ValueError if malformed."""
    found = []
    for item in raw.split(","):
        text = item.strip()
        if not text:
            continue
        if text.startswith("["):  # [::1]:26379
            host, _, rest = text[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:
            host, port_text = text, ""
        if not host:
            raise ValueError(f"no host in {text!r}")
        port = int(port_text) if port_text else SENTINEL_PORT
        if not 1 <= port <= 65535:
            raise ValueError(f"bad port in {text!r}")
        found.append((host, port))
    if not found:
        raise ValueError("no sentinel listed")
    return tuple(found)
