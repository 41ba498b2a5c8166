"""`llm-runner liverunner`: the static registration of this runner for go-livepeer's live runners.

Prints `{"runners": [...]}`, one entry per served model, for `-liveRunnerConfig` or
`POST /registerLiveRunners` on the orchestrator's CLI port. Capacity comes from the fleet's
slots now (read as `llm-runner aimodels` reads it); the orchestrator polls each `health_url`
(the model's /ready) and proxies `/apps/<label>/app/<path>` to `<url>/<model_id>/<path>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

from redis.exceptions import RedisError

from common.errors import ConfigError
from common.fleet import WorkerRecord, capacity, read_fleet
from common.live_runner import registration_label, static_entry
from common.redis_client import make_redis
from common.settings import Settings

ROUTINGS = ("label", "runner-id")


def static_config(
    settings: Settings, records: list[WorkerRecord], *, base_url: str, label: str, default_usd: float,
    usd: dict[str, float], routing: str,
) -> dict[str, Any]:  # fmt: skip
    """The static configuration document: one single-shot runner per configured model."""
    runners = []
    for spec in settings.models:
        runners.append(static_entry(
            settings, records, spec.model_id, base_url=base_url, label=registration_label(label, spec.model_id),
            price_usd=usd.get(spec.model_id, default_usd), routing=routing,
        ))  # fmt: skip
    return {"runners": runners}


def _price(value: str) -> tuple[str, float]:
    model_id, sep, price = value.rpartition("=")
    if not sep or not model_id:
        raise argparse.ArgumentTypeError(f"expected MODEL_ID=USD_PER_REQUEST, got {value!r}")
    return model_id, _usd(price)


def cmd_liverunner(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Print the static live-runner configuration (warnings on stderr)."""
    settings = Settings.from_env(os.environ)
    base_url = args.url or settings.live_runner_url
    if not base_url:
        print("liverunner: give --url (this runner's URL as the orchestrator reaches it) or set LIVE_RUNNER_URL",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        records: list[WorkerRecord] = read_fleet(make_redis(settings.redis_target, max_connections=4))
    except (RedisError, OSError):
        print("warning: cannot read the fleet from Redis; every capacity written as 1", file=sys.stderr)
        records = []
    unknown = sorted(set(dict(args.price)) - {m.model_id for m in settings.models})
    if unknown:
        print(f"liverunner: --price for a model not in MODELS: {', '.join(unknown)}", file=sys.stderr)
        return 2
    for spec in settings.models:
        if records and not capacity(records, spec.model_id):
            print(f"warning: no ready worker serves {spec.model_id} now; capacity 1 written", file=sys.stderr)
    config = static_config(
        settings, records, base_url=base_url, label=args.label or settings.live_runner_label,
        default_usd=settings.live_runner_price_usd if args.price_usd is None else args.price_usd,
        usd=dict(args.price), routing=args.routing,
    )  # fmt: skip
    print(json.dumps(config, indent=2), file=out)
    return 0


def add_parser(sub: Any) -> None:
    """Register `liverunner` on the CLI's subcommands."""
    p = sub.add_parser(
        "liverunner",
        help="print go-livepeer's static live-runner configuration for this runner (capacity from the fleet)",
    )
    p.add_argument("--url", help="this runner's URL as the orchestrator reaches it (default: LIVE_RUNNER_URL)")
    p.add_argument("--label", type=_label, help="labels start with this (default: LIVE_RUNNER_LABEL, llm-runner)")
    p.add_argument("--price-usd", type=_usd, help="USD per request, every model (default: LIVE_RUNNER_PRICE_USD)")
    p.add_argument("--price", type=_price, action="append", default=[], metavar="MODEL_ID=USD",
                   help="USD per request for one model (repeatable)")  # fmt: skip
    p.add_argument("--routing", choices=ROUTINGS, default="label",
                   help="label (default): clients call /apps/<label>/app, stable across orchestrator restarts; "
                        "runner-id: the orchestrator's generated id")  # fmt: skip
    p.set_defaults(func=cmd_liverunner)


def _label(value: str) -> str:
    try:
        return Settings.from_env({"LIVE_RUNNER_LABEL": value}).live_runner_label
    except ConfigError:
        raise argparse.ArgumentTypeError(f"expected letters, digits, '.', '_' or '-' only, got {value!r}") from None


def _usd(value: str) -> float:
    try:
        return Settings.from_env({"LIVE_RUNNER_PRICE_USD": value}).live_runner_price_usd
    except ConfigError:
        raise argparse.ArgumentTypeError(f"expected a price in USD of 0 or more, got {value!r}") from None
