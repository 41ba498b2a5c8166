"""Live-runner registration pieces: Go durations, labels, URLs, the wire fields (checked by our model of
go-livepeer's registry), settings, the CLI's document, and the Redis lease."""

from __future__ import annotations

import json
from urllib.parse import urljoin

import pytest
from redis import Redis

from common.errors import ConfigError
from common.fleet import READY, GpuInfo, ModelFit, WorkerRecord
from common.live_runner import (
    heartbeat_body,
    model_url,
    parse_go_duration,
    ready_url,
    registration_label,
    static_entry,
)
from common.settings import Settings
from ops.liverunner import static_config
from tests.golivepeer_live import LiveRunnerRegistry, RunnerError, go_duration, static_health_url
from web.live_lease import STATE_TTL_FACTOR, Credentials, Lease

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"
GIB = 1 << 30


def gpu(uuid: str, name: str, gib: int) -> GpuInfo:
    return GpuInfo(0, uuid, name, gib * GIB, gib * GIB, 8, 6)


def record(
    name: str, *, slots: int, gpu_info: GpuInfo | None, models: tuple[str, ...], state: str = READY
) -> WorkerRecord:
    fits = {m: ModelFit(m, installed=True, fits=True) for m in models}
    return WorkerRecord(name, "h", 1, "v", "http://o", state=state, slots=slots, gpu=gpu_info, models=fits)


FLEET = [
    record("a", slots=4, gpu_info=gpu("GPU-a", "NVIDIA GeForce RTX 4090", 24), models=(LLAMA, QWEN)),
    record("b", slots=4, gpu_info=gpu("GPU-b", "NVIDIA GeForce RTX 4090", 24), models=(LLAMA,)),
    record("c", slots=2, gpu_info=gpu("GPU-c", "NVIDIA GeForce RTX 3060", 12), models=(LLAMA,)),
]
SETTINGS = Settings(models=Settings.from_env({"MODELS": f"{LLAMA},{QWEN}"}).models, version="1.2.3")


# ------------------------------------------------------------------------------ Go durations
@pytest.mark.parametrize(
    "seconds", [0.0, 0.000_000_5, 0.000_25, 0.0015, 0.5, 1.0, 1.5, 5, 20, 59.999, 60, 90, 3600, 3725.5]
)
def test_go_durations_as_go_writes_them_read_back(seconds: float) -> None:
    assert parse_go_duration(go_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "1.2.3s", "5 s", "-1s", "5sec", "1d"])
def test_what_is_not_a_go_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_go_duration_strings_are_those_go_livepeer_sends() -> None:
    # time.Duration.String of go-livepeer's defaults and of test timings
    assert [go_duration(s) for s in (5, 20, 0.5, 60, 90)] == ["5s", "20s", "500ms", "1m0s", "1m30s"]


# ------------------------------------------------------------------------------ labels and URLs
def test_labels_are_one_path_segment_a_label_routed_registration_may_use() -> None:
    assert registration_label("llm-runner", LLAMA) == "llm-runner-meta-llama-meta-llama-3.1-8b-instruct"
    assert registration_label("gpu-farm", "llama3.1:8b") == "gpu-farm-llama3.1-8b"
    assert registration_label("x", "/../") == "x"
    registry = LiveRunnerRegistry(orch_secret="s", service_url="http://o", health_check=lambda url, t: 200)
    entry = static_entry(SETTINGS, FLEET, LLAMA, base_url="http://web:8000", label=registration_label("l", LLAMA),
                         price_usd=0, routing="label")  # fmt: skip
    answer = registry.register_static(json.dumps({"runners": [entry]}).encode())
    assert answer["runners"][0]["healthy"] is True
    assert registry.discovery()[0]["runners"][0]["url"] == f"http://o/apps/{entry['label']}/app"


def test_the_readiness_url_is_what_go_livepeer_makes_of_a_root_relative_path() -> None:
    runner_url = model_url("http://web:8000/", LLAMA)
    assert runner_url == f"http://web:8000/{LLAMA}"
    # go-livepeer appends a root-relative health_url to runner_url, keeping the model's prefix ...
    assert static_health_url(runner_url, "/ready") == ready_url("http://web:8000", LLAMA) == f"{runner_url}/ready"
    # ... where RFC 3986 resolution would lose it: hence the absolute health_url we write.
    assert urljoin(runner_url, "/ready") == "http://web:8000/ready"
    assert static_health_url(runner_url, "http://elsewhere/ready") == "http://elsewhere/ready"
    assert model_url("http://web:8000", "llama3.1:8b") == "http://web:8000/llama3.1:8b"


# ------------------------------------------------------------------------------ the wire fields
def test_the_static_document_has_one_single_shot_runner_per_model_with_the_fleets_slots() -> None:
    config = static_config(SETTINGS, FLEET, base_url="http://web:8000", label="farm", default_usd=0.002,
                           usd={QWEN: 0.001}, routing="label")  # fmt: skip
    llama, qwen = config["runners"]
    assert llama == {
        "label": "farm-meta-llama-meta-llama-3.1-8b-instruct",
        "routing": "label",
        "runner_url": f"http://web:8000/{LLAMA}",
        "app": f"llm/{LLAMA}",
        "version": "1.2.3",
        "mode": "single-shot",
        "capacity": 10,
        "price_info": {"price": 0.002, "currency": "usd", "unit": "fixed"},
        "gpu": {"id": "GPU-a,GPU-b,GPU-c", "name": "2x NVIDIA GeForce RTX 4090, NVIDIA GeForce RTX 3060",
                "vram_mb": 12 * 1024},
        "health_url": f"http://web:8000/{LLAMA}/ready",
        "healthy_status_code": 200,
    }  # fmt: skip
    assert (qwen["capacity"], qwen["price_info"]["price"], qwen["gpu"]) == (
        4, 0.001, {"id": "GPU-a", "name": "NVIDIA GeForce RTX 4090", "vram_mb": 24 * 1024}
    )  # fmt: skip
    # go-livepeer's own validation accepts the batch, as sent, with runner-id routing too.
    registry = LiveRunnerRegistry(orch_secret="s", service_url="http://o", health_check=lambda url, t: 503)
    config["runners"][1]["routing"] = "runner-id"
    answer = registry.register_static(json.dumps(config).encode())
    assert [r["healthy"] for r in answer["runners"]] == [False, False]
    assert registry.discovery() == [{"address": "http://o"}]  # unhealthy: hidden from discovery


def test_a_model_no_worker_serves_is_written_with_capacity_1_and_no_gpu() -> None:
    entry = static_entry(SETTINGS, [], LLAMA, base_url="http://w", label="l", price_usd=0, routing="label")
    assert entry["capacity"] == 1 and "gpu" not in entry


def test_heartbeats_say_unavailable_until_a_worker_serves_the_model() -> None:
    kwargs = {"base_url": "http://w", "label": "l", "price_usd": 0.0}
    served = heartbeat_body(SETTINGS, FLEET, QWEN, ready=True, **kwargs)
    assert (served["status"], served["capacity"], served["mode"]) == ("ready", 4, "single-shot")
    assert heartbeat_body(SETTINGS, FLEET, QWEN, ready=False, **kwargs)["status"] == "unavailable"
    assert heartbeat_body(SETTINGS, None, QWEN, ready=True, **kwargs)["status"] == "unavailable"
    drained = [record("a", slots=4, gpu_info=None, models=(QWEN,), state="stopping")]
    assert heartbeat_body(SETTINGS, drained, QWEN, ready=True, **kwargs)["status"] == "unavailable"
    registry = LiveRunnerRegistry(orch_secret="orch", service_url="http://o")
    answer = registry.heartbeat({"runner_id": "l", **served}, "orch")
    assert answer["runner_id"] == "l" and answer["heartbeat_interval"] == "5s" and answer["heartbeat_ttl"] == "20s"
    with pytest.raises(RunnerError) as refused:
        registry.heartbeat({"runner_id": "l", **served}, "orch")  # the bootstrap secret is not the heartbeat's
    assert refused.value.status == 401


# ------------------------------------------------------------------------------ settings
def test_live_runner_settings_are_read() -> None:
    s = Settings.from_env({
        "LIVE_RUNNER_ORCH_URL": "https://orch:8935/", "LIVE_RUNNER_SECRET": "sec", "LIVE_RUNNER_URL": "http://web:8000/",
        "LIVE_RUNNER_LABEL": "farm.eu-1", "LIVE_RUNNER_PRICE_USD": "0.0025",
    })  # fmt: skip
    assert (s.live_runner_orch_url, s.live_runner_secret, s.live_runner_url) == (
        "https://orch:8935",
        "sec",
        "http://web:8000",
    )
    assert (s.live_runner_label, s.live_runner_price_usd, s.live_runner_dynamic) == ("farm.eu-1", 0.0025, True)
    default = Settings.from_env({})
    assert (default.live_runner_dynamic, default.live_runner_label, default.live_runner_price_usd) == (
        False,
        "llm-runner",
        0,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LIVE_RUNNER_ORCH_URL": "http://orch:8935"}, "LIVE_RUNNER_SECRET"),
        ({"LIVE_RUNNER_SECRET": "s"}, "LIVE_RUNNER_ORCH_URL"),
        ({"LIVE_RUNNER_ORCH_URL": "orch:8935", "LIVE_RUNNER_SECRET": "s"}, "LIVE_RUNNER_ORCH_URL"),
        ({"LIVE_RUNNER_URL": "web:8000"}, "LIVE_RUNNER_URL"),
        ({"LIVE_RUNNER_LABEL": "a/b"}, "LIVE_RUNNER_LABEL"),
        ({"LIVE_RUNNER_PRICE_USD": "-1"}, "LIVE_RUNNER_PRICE_USD"),
        ({"LIVE_RUNNER_PRICE_USD": "nan"}, "LIVE_RUNNER_PRICE_USD"),
        ({"LIVE_RUNNER_PRICE_USD": "cheap"}, "LIVE_RUNNER_PRICE_USD"),
    ],
)
def test_a_bad_live_runner_setting_fails_naming_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.msg.startswith(f"{named}:")


# ------------------------------------------------------------------------------ the lease
def test_one_process_holds_a_registration_and_only_it_writes_the_credentials(redis: Redis) -> None:
    a, b = Lease(redis, "farm-x", "host:1:a"), Lease(redis, "farm-x", "host:2:b")
    credentials = Credentials("http://orch", "farm-x", "secret", 5.0, 20.0)
    assert a.hold(2.0) and not b.hold(2.0) and a.hold(2.0)
    assert a.holder() == "host:1:a"
    assert not b.save(credentials) and a.load("http://orch") is None
    assert a.save(credentials) and b.load("http://orch") == credentials
    assert b.load("http://another-orch") is None  # credentials of another orchestrator are stale
    assert not b.forget() and b.load("http://orch") == credentials
    b.release()  # not its lease: nothing happens
    assert a.holder() == "host:1:a"
    a.release()
    assert b.hold(2.0) and b.load("http://orch") == credentials  # the next holder carries the registration on
    # Kept past the orchestrator's TTL (a slow takeover still finds them), yet expiring.
    assert 20_000 < redis.pttl("llmrunner:liverunner:farm-x:state") <= 20_000 * STATE_TTL_FACTOR
    assert b.forget() and b.load("http://orch") is None


# ------------------------------------------------------------------------------ the CLI and the proxy model
def test_the_cli_refuses_bad_prices_and_labels() -> None:
    from ops.cli import build_parser

    args = build_parser().parse_args(["liverunner", "--price", f"{QWEN}=0.5", "--price-usd", "0.1", "--label", "eu-1"])
    assert (args.price, args.price_usd, args.label, args.routing) == ([(QWEN, 0.5)], 0.1, "eu-1", "label")
    for bad in (["--price", "0.5"], ["--price", f"{QWEN}=-1"], ["--price-usd", "free"], ["--label", "a/b"],
                ["--routing", "random"]):  # fmt: skip
        with pytest.raises(SystemExit):
            build_parser().parse_args(["liverunner", *bad])


def test_the_proxy_appends_the_app_path_as_go_joins_paths() -> None:
    from tests.golivepeer_live_http import join_path

    # url.JoinPath("/", target.Path, appPath): cleaned, one trailing slash kept
    assert join_path(f"/{LLAMA}", "v1/chat/completions") == f"/{LLAMA}/v1/chat/completions"
    assert join_path("", "") == "/" and join_path("/", "llm") == "/llm"
    assert join_path("/a/", "b/") == "/a/b/" and join_path("/a", "../x//y/./z") == "/x/y/z"
