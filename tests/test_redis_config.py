"""Naming a Redis Sentinel deployment: the settings, the clients every process builds from them,
and what RQ's CLI and rq-dashboard are given. No network here (see test_sentinel_failover.py)."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from common.redis_client import make_redis
from common.redis_conn import BlockingSentinelPool, async_pool
from common.settings import Settings
from ops.rq_config import rq_settings
from ops.serve import dashboard_url
from worker.redis_link import RedisLink

SENTINEL_ENV = {
    "REDIS_URL": "rediss://app:s3cret@ignored.example:1/3?ssl_cert_reqs=required",
    "REDIS_SENTINELS": "10.0.0.1:26379, sentinel-b ,[fd00::3]:26380",
    "REDIS_SENTINEL_MASTER": "llm-runner",
    "REDIS_SENTINEL_PASSWORD": "sentinel-secret",
}


def test_sentinels_master_and_passwords_are_read() -> None:
    s = Settings.from_env(SENTINEL_ENV)
    assert s.redis_sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26379), ("fd00::3", 26380))
    assert s.redis_sentinel_master == "llm-runner" and s.redis_sentinel_password == "sentinel-secret"
    target = s.redis_target
    assert target.tls and target.sentinels == s.redis_sentinels
    assert "s3cret" not in target.describe() and "sentinel-secret" not in target.describe()


def test_plain_redis_url_alone_keeps_working() -> None:
    s = Settings.from_env({"REDIS_URL": "unix:///run/redis.sock"})
    assert s.redis_sentinels == () and s.redis_target.sentinels == ()
    assert s.wait_replicas == 0, "no WAIT without replicas to wait for"
    assert s.redis_target.describe() == "unix:///run/redis.sock"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REDIS_SENTINELS": "a:1"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "a:99999", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "a:x", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": ",", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "a:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_URL": "unix:///s.sock"}, "REDIS_URL"),
        ({"REDIS_WAIT_REPLICAS": "-1"}, "REDIS_WAIT_REPLICAS"),
        ({"REDIS_WAIT_MS": "0"}, "REDIS_WAIT_MS"),
    ],
)
def test_a_bad_sentinel_setting_fails_naming_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as failed:
        Settings.from_env(env)
    assert failed.value.msg.startswith(f"{named}:")


def test_replicas_acknowledge_by_default_only_with_sentinel() -> None:
    assert Settings.from_env(SENTINEL_ENV).wait_replicas == 1
    assert Settings.from_env({**SENTINEL_ENV, "REDIS_WAIT_REPLICAS": "0"}).wait_replicas == 0
    assert Settings.from_env({"REDIS_WAIT_REPLICAS": "2", "REDIS_WAIT_MS": "20"}).wait_replicas == 2
    assert Settings.from_env({}).redis_wait_ms == 50


def test_every_client_follows_the_master_with_the_urls_password_db_and_tls() -> None:
    target = Settings.from_env(SENTINEL_ENV).redis_target
    pool = make_redis(target, max_connections=5).connection_pool
    assert isinstance(pool, BlockingSentinelPool) and pool.max_connections == 5
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("app", "s3cret", 3)
    assert kwargs["ssl_cert_reqs"] == "required" and "host" not in kwargs
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    sentinels = pool.sentinel_manager.sentinels
    assert [(c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
            for c in sentinels] == list(target.sentinels)  # fmt: skip
    first = sentinels[0].connection_pool.connection_kwargs
    assert first["password"] == "sentinel-secret" and sentinels[0].connection_pool.connection_class.__name__ == (
        "SSLConnection"
    )
    apool = async_pool(target)
    assert apool.connection_class.__name__ == "SentinelManagedSSLConnection"
    assert apool.connection_kwargs["password"] == "s3cret"
    assert isinstance(RedisLink(target), RedisLink)


def test_rq_cli_gets_rqs_sentinel_settings() -> None:
    found = rq_settings(Settings.from_env(SENTINEL_ENV))
    sentinel = found["SENTINEL"]
    assert "REDIS_URL" not in found, "RQ would take REDIS_URL first"
    assert sentinel["INSTANCES"] == [("10.0.0.1", 26379), ("sentinel-b", 26379), ("fd00::3", 26380)]
    assert (sentinel["MASTER_NAME"], sentinel["DB"], sentinel["USERNAME"], sentinel["PASSWORD"]) == (
        "llm-runner", 3, "app", "s3cret")  # fmt: skip
    assert sentinel["SSL"] is True and sentinel["CONNECTION_KWARGS"] == {"ssl_cert_reqs": "required"}
    assert sentinel["SENTINEL_KWARGS"]["password"] == "sentinel-secret" and sentinel["SENTINEL_KWARGS"]["ssl"]
    assert rq_settings(Settings.from_env({"REDIS_URL": "redis://r:1/0"})) == {"REDIS_URL": "redis://r:1/0"}


def test_rq_dashboard_is_told_where_without_a_password() -> None:
    assert dashboard_url(Settings.from_env(SENTINEL_ENV)) == (
        "redis+sentinel://10.0.0.1:26379,sentinel-b:26379,[fd00::3]:26380/llm-runner/3"
    )
    assert dashboard_url(Settings.from_env({"REDIS_URL": "redis://:pw@r:1/0"})) == "redis://:pw@r:1/0"
