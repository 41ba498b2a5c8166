"""The Flask front end go-livepeer calls; gunicorn serves `web:create_app()`.

This package's import is kept light: gunicorn's master loads `web.gunicorn_conf` before gevent
patches the standard library, so Flask, Redis and RQ are imported only when the app is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from common.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app (settings from the environment unless given)."""
    from web.app import build_app

    return build_app(settings)
