"""Typed readers over an environment mapping, each failure naming its variable (for common.settings)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from common.errors import ConfigError
from common.redis_target import parse_sentinels
from common.version import SEMVER

# Ollama accepts keep_alive as a number of seconds or as a Go duration string.
_GO_DURATION = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_LABEL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Env:
    """Typed readers over an environment mapping; each failure names the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str:
        return self._environ.get(name, "").strip()

    def integer(self, name: str, default: int, *, low: int | None = None, high: int | None = None) -> int:
        value = self.optional_integer(name, low=low, high=high)
        return default if value is None else value

    def optional_integer(self, name: str, *, low: int | None = None, high: int | None = None) -> int | None:
        raw = self.text(name)
        if not raw:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
        _check_range(name, value, low, high)
        return value

    def number(self, name: str, default: float, *, low: float | None = None) -> float:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{name}: expected a finite number, got {raw!r}")
        _check_range(name, value, low, None)
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.optional_boolean(name)
        return default if value is None else value

    def optional_boolean(self, name: str) -> bool | None:
        raw = self.text(name).lower()
        if not raw:
            return None
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        raw = self.text(name).upper()
        if not raw:
            return default
        if raw not in options:
            raise ConfigError(f"{name}: expected one of {', '.join(options)}, got {raw!r}")
        return raw

    def semver(self, name: str, default: str) -> str:
        raw = self.text(name)
        if not raw:
            return default
        if not SEMVER.match(raw):
            raise ConfigError(f"{name}: expected a semantic version such as 0.14.2, got {raw!r}")
        return raw

    def url(self, name: str, default: str, *, schemes: tuple[str, ...]) -> str:
        raw = self.text(name) or default
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not (parts.netloc or parts.scheme == "unix"):
            raise ConfigError(f"{name}: expected a {'/'.join(schemes)}:// URL, got {raw!r}")
        return raw

    def file(self, name: str) -> str | None:
        raw = self.text(name)
        if raw and not os.path.isfile(raw):
            raise ConfigError(f"{name}: no such file: {raw!r}")
        return raw or None

    def optional_url(self, name: str, *, schemes: tuple[str, ...]) -> str | None:
        """A URL without its trailing slash, or None when unset."""
        return self.url(name, "", schemes=schemes).rstrip("/") if self.text(name) else None

    def label(self, name: str, default: str) -> str:
        """A name that fits in one URL path segment (letters, digits, `.`, `_`, `-`)."""
        raw = self.text(name) or default
        if not _LABEL.match(raw):
            raise ConfigError(f"{name}: expected letters, digits, '.', '_' or '-' only, got {raw!r}")
        return raw

    def price(self, name: str, default: float) -> float:
        """A price in USD: a finite number, zero or more."""
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a price in USD such as 0.002, got {raw!r}") from None
        if not 0.0 <= value < float("inf"):
            raise ConfigError(f"{name}: expected a finite price of 0 or more, got {raw!r}")
        return value

    def sentinels(self, name: str) -> tuple[tuple[str, int], ...]:
        """Sentinel addresses as `host:port,host:port` (empty when unset)."""
        raw = self.text(name)
        if not raw:
            return ()
        try:
            return parse_sentinels(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: expected host:port,host:port ({exc}), got {raw!r}") from None

    def keep_alive(self, name: str, default: int | str) -> int | str:
        raw = self.text(name)
        if not raw:
            return default
        try:
            return int(raw)
        except ValueError:
            pass
        if not _GO_DURATION.match(raw):
            raise ConfigError(f"{name}: expected seconds (e.g. 300, -1) or a duration (e.g. 10m, 24h), got {raw!r}")
        return raw


def _check_range(name: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise ConfigError(f"{name}: must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ConfigError(f"{name}: must be at most {high:g}, got {value:g}")
