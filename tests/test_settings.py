"""Settings from the environment: defaults, every variable, and failures that name the variable."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from common.models import ModelSpec, parse_models
from common.settings import Settings
from common.version import __version__
from tests.golivepeer import parse_semver


def test_defaults_match_the_documented_ones() -> None:
    s = Settings.from_env({})
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.port == 8000
    assert s.ollama_url == "http://localhost:11434"
    assert s.auth_token is None
    assert s.models == (ModelSpec("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama3.1:8b"),)
    assert s.default_model.model_id == "meta-llama/Meta-Llama-3.1-8B-Instruct"
    assert s.slots == 1 and s.num_ctx == 4096 and s.keep_alive == -1
    assert s.version == __version__ and parse_semver(s.version) is not None


def test_every_variable_is_read() -> None:
    s = Settings.from_env(
        {
            "REDIS_URL": "redis://r:1/2",
            "PORT": "9000",
            "OLLAMA_URL": "http://gpu0:11434/",
            "AUTH_TOKEN": "secret",
            "MODELS": "Qwen/Qwen2.5-7B-Instruct, my/model=mine:3b",
            "MAX_QUEUE": "7",
            "QUEUE_TIMEOUT_S": "2.5",
            "OLLAMA_NUM_PARALLEL": "4",
            "GPU_INDEX": "1",
            "VRAM_MB": "8192",
            "NUM_CTX": "8192",
            "KEEP_ALIVE": "10m",
            "PULL_MODELS": "false",
            "OLLAMA_IDLE_TIMEOUT_S": "3",
            "MAX_TOKENS": "100",
            "VERSION": "0.14.2",
        }
    )
    assert s.redis_url == "redis://r:1/2" and s.port == 9000
    assert s.ollama_url == "http://gpu0:11434"
    assert s.auth_token == "secret"
    assert s.models == (ModelSpec("Qwen/Qwen2.5-7B-Instruct", "qwen2.5:7b"), ModelSpec("my/model", "mine:3b"))
    assert (s.max_queue, s.queue_timeout_s, s.slots, s.gpu_index, s.vram_mb) == (7, 2.5, 4, 1, 8192)
    assert (s.num_ctx, s.keep_alive, s.pull_models, s.idle_timeout_s, s.max_tokens_limit) == (
        8192, "10m", False, 3.0, 100
    )  # fmt: skip
    assert s.version == "0.14.2"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"OLLAMA_NUM_PARALLEL": "0"}, "OLLAMA_NUM_PARALLEL"),
        ({"QUEUE_TIMEOUT_S": "soon"}, "QUEUE_TIMEOUT_S"),
        ({"QUEUE_TIMEOUT_S": "nan"}, "QUEUE_TIMEOUT_S"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"OLLAMA_URL": "ftp://x"}, "OLLAMA_URL"),
        ({"KEEP_ALIVE": "ten minutes"}, "KEEP_ALIVE"),
        ({"PULL_MODELS": "maybe"}, "PULL_MODELS"),
        ({"MODELS": "some/unknown-model"}, "MODELS"),
        ({"MODELS": "a=x, a=y"}, "MODELS"),
        ({"MODELS": " , "}, "MODELS"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"VERSION": "undefined"}, "VERSION"),
        ({"VERSION": "1.2.3.4"}, "VERSION"),
    ],
)
def test_a_bad_value_fails_naming_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.msg.startswith(f"{named}:")


def test_keep_alive_seconds_become_a_number() -> None:
    assert Settings.from_env({"KEEP_ALIVE": "300"}).keep_alive == 300


def test_unknown_model_message_says_how_to_fix_it() -> None:
    with pytest.raises(ConfigError, match="some/model=<ollama tag>"):
        parse_models("some/model")


@pytest.mark.parametrize("value", ["0.14.2", "v1", "1.2", "0.0.1-dev.3", "2.0.0+build.7"])
def test_version_takes_what_go_livepeer_parses_as_semver(value: str) -> None:
    assert Settings.from_env({"VERSION": value}).version == value and parse_semver(value) is not None
