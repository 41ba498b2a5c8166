"""The Docker deployment: compose/ files are the generator's output and agree with the runner."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.models import parse_models
from common.settings import Settings
from ops.compose import add_parser, command_line, parse_gpus, render_compose
from ops.secrets_file import GENERATED as GENERATED_SECRETS
from worker.publisher import RETRY_S

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"

# (file, GPUs, with go-livepeer, with Redis HA): the committed outputs of `llm-runner compose`.
GENERATED = [
    ("docker-compose.yml", [0], False, False),
    ("docker-compose.2gpu.yml", [0, 1], False, False),
    ("docker-compose.golivepeer.yml", [0], True, False),
    ("docker-compose.redis-ha.yml", [0], False, True),
]
FILES = [name for name, _, _, _ in GENERATED]
HA_SERVICES = {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}

# Upstream images a service may use instead of building ours; each must carry an explicit tag.
ALLOWED_UPSTREAM = {"redis", "ollama/ollama", "livepeer/go-livepeer"}
# Ollama's own knobs (ollama/ollama envconfig/config.go) that the ollama-gpuN services set.
OLLAMA_KNOBS = {"OLLAMA_NUM_PARALLEL", "OLLAMA_KEEP_ALIVE", "OLLAMA_CONTEXT_LENGTH", "OLLAMA_MAX_LOADED_MODELS"}
# Variables our containers get that common/settings.py does not read, and who reads them.
NON_SETTINGS = {
    "ACCESS_LOG": ROOT / "web" / "gunicorn_conf.py",
    "RQ_DASHBOARD_USERNAME": ROOT / "ops" / "serve.py",
    "RQ_DASHBOARD_PASSWORD": ROOT / "ops" / "serve.py",
}
# go-livepeer flags the generator may use: each checked in go-livepeer's cmd/livepeer/starter/flags.go.
GOLIVEPEER_FLAGS = {
    "orchestrator", "aiWorker", "aiModels", "aiRunnerImageOverrides", "serviceAddr", "httpAddr", "network",
    "ethUrl", "ethOrchAddr", "ethPassword", "startupAvailabilityCheck",
}  # fmt: skip

INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


@cache
def text(name: str) -> str:
    return (COMPOSE_DIR / name).read_text(encoding="utf-8")


@cache
def doc(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(text(name))
    return loaded


def services(name: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = doc(name)["services"]
    return found


def ours(name: str) -> dict[str, dict[str, Any]]:
    """The services running this repository's image."""
    return {n: s for n, s in services(name).items() if "build" in s}


def interpolations(name: str) -> list[tuple[str, str, str | None]]:
    """(variable, operator, default) of every `${...}` outside comments."""
    found = []
    for line in text(name).splitlines():
        if line.lstrip().startswith("#"):
            continue
        for var, op, default in INTERPOLATION.findall(line):
            found.append((var, op, default if op in ("-", ":-") else None))
    return found


def compose_default(value: str) -> str | None:
    """The default of a value that is exactly one `${NAME:-default}`; None otherwise."""
    match = INTERPOLATION.fullmatch(value)
    return match.group(3) if match and match.group(2) == ":-" else None


@cache
def env_example() -> dict[str, str]:
    values = {}
    for line in (COMPOSE_DIR / ".env.example").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            values[match.group(1)] = match.group(2)
    return values


@cache
def settings_variables() -> frozenset[str]:
    """Names passed to the `env.<reader>("NAME", ...)` calls of Settings.from_env."""
    source = (ROOT / "common" / "settings.py").read_text(encoding="utf-8")
    body = source[source.index("def from_env") :]
    return frozenset(re.findall(r"\benv\.[a-z_]+\(\s*\"([A-Z][A-Z0-9_]*)\"", body))


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert match, f"unparsable duration {duration!r}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def resolved(value: str) -> str:
    """A compose value with every `${NAME:-default}` replaced by its default."""
    return INTERPOLATION.sub(lambda m: m.group(3) or "", value)


# --- the files are the generator's ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "gpus", "golivepeer", "redis_ha"), GENERATED)
def test_committed_files_are_the_generators_output(
    name: str, gpus: list[int], golivepeer: bool, redis_ha: bool
) -> None:
    expected = render_compose(gpus, include_golivepeer=golivepeer, redis_ha=redis_ha)
    command = command_line(gpus, include_golivepeer=golivepeer, redis_ha=redis_ha)
    assert text(name) == expected, f"compose/{name} is stale: regenerate it with `{command}`"


@pytest.mark.parametrize(("name", "gpus", "golivepeer", "redis_ha"), GENERATED)
def test_each_file_parses_and_says_how_it_was_generated(
    name: str, gpus: list[int], golivepeer: bool, redis_ha: bool
) -> None:
    first = text(name).splitlines()[0]
    assert first.startswith("# Generated by `llm-runner compose") and "regenerate" in first
    assert f"`{command_line(gpus, include_golivepeer=golivepeer, redis_ha=redis_ha)}`" in first
    document = doc(name)
    assert set(document) == {"name", "services", "networks", "volumes"}
    expected = {"redis", "web", "dashboard"} | {f"{kind}-gpu{g}" for g in gpus for kind in ("ollama", "worker")}
    expected |= HA_SERVICES if redis_ha else set()
    assert set(document["services"]) == expected | ({"go-livepeer"} if golivepeer else set())
    assert "&id" not in text(name) and "*id" not in text(name), "YAML aliases make the file hard to read"


def test_header_command_regenerates_the_same_file(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="llm-runner")
    add_parser(parser.add_subparsers(dest="command", required=True))
    for gpus, golivepeer, ha in (
        ([0], False, False),
        ([0, 1], True, False),
        ([3], False, True),
        ([1, 2], False, False),
    ):
        out = tmp_path / "out.yml"
        command = command_line(gpus, include_golivepeer=golivepeer, redis_ha=ha)
        args = parser.parse_args([*shlex.split(command)[1:], "--output", str(out)])
        assert args.func(args) == 0
        assert out.read_text(encoding="utf-8") == render_compose(gpus, include_golivepeer=golivepeer, redis_ha=ha)


def test_gpu_arguments() -> None:
    assert parse_gpus("2") == [0, 1]
    assert parse_gpus("0,1") == [0, 1]
    assert parse_gpus("3,") == [3]
    assert parse_gpus(" 2,0 ") == [2, 0]
    for bad in ("0", "-1", "a", "1,1", ",", "0,-2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_gpus(bad)
    for gpus in ([], [0, 0], [-1]):
        with pytest.raises(ValueError):
            render_compose(gpus)


# --- images and dependencies -------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_every_service_builds_our_dockerfile_or_pins_an_allowed_image(name: str) -> None:
    for service_name, service in services(name).items():
        if "build" in service:
            build = service["build"]
            assert build["context"] == "..", service_name
            assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
            assert "$" not in service["image"], "our image name is a generator argument, not a variable"
            continue
        image = service["image"]
        repo, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag, f"{service_name}: {image} has no explicit tag"
        assert repo in ALLOWED_UPSTREAM, f"{service_name}: {repo} is not an allowed upstream image"
        assert tag != "latest" and "$" not in image, f"{service_name}: {image} is not pinned"


@pytest.mark.parametrize("name", FILES)
def test_depends_on_names_services_in_the_file(name: str) -> None:
    names = set(services(name))
    for service_name, service in services(name).items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in names, f"{service_name} depends on unknown {dependency}"
            assert dependency != service_name
            assert condition == {"condition": "service_healthy"}
            assert "healthcheck" in services(name)[dependency], f"{dependency} can never become healthy"


# --- environment ---------------------------------------------------------------------------------------


def test_settings_variables_are_parsed_from_settings_py() -> None:
    names = settings_variables()
    assert {"REDIS_URL", "OLLAMA_URL", "OLLAMA_NUM_PARALLEL", "GPU_INDEX", "SHUTDOWN_GRACE_S", "LOG_LEVEL"} <= names
    assert len(names) >= 20


@pytest.mark.parametrize("name", FILES)
def test_our_services_set_only_variables_the_runner_reads(name: str) -> None:
    readers = settings_variables()
    for service_name, service in ours(name).items():
        for variable in service.get("environment", {}):
            if variable in readers or variable.startswith("NVIDIA_") or variable == "PYTHONUNBUFFERED":
                continue
            reader = NON_SETTINGS.get(variable)
            assert reader is not None, f"{service_name} sets {variable}, which nothing in the runner reads"
            assert f'"{variable}"' in reader.read_text(encoding="utf-8"), f"{reader} no longer reads {variable}"
    for service_name, service in services(name).items():
        if service_name.startswith("ollama-"):
            assert set(service["environment"]) <= OLLAMA_KNOBS


@pytest.mark.parametrize("name", FILES)
def test_compose_defaults_are_the_runners_defaults(name: str) -> None:
    baseline = Settings.from_env({})
    checked = 0
    for service in ours(name).values():
        for variable, value in service.get("environment", {}).items():
            default = compose_default(value)
            if default is None or variable not in settings_variables() or variable == "REDIS_URL":
                continue  # REDIS_URL deliberately names the compose network's Redis
            assert value.startswith("${" + variable + ":-"), f"{variable} reads another variable: {value}"
            assert Settings.from_env({variable: default}) == baseline, f"{variable}: {default!r} is not the default"
            checked += 1
    assert checked >= 15


@pytest.mark.parametrize("name", FILES)
def test_every_interpolated_variable_is_documented(name: str) -> None:
    documented = env_example()
    for variable, _, _ in interpolations(name):
        assert variable in documented, f"{variable} is used in compose/{name} but missing from .env.example"
    for line in text(name).splitlines():
        if not line.lstrip().startswith("#"):
            assert "$" not in INTERPOLATION.sub("", line), f"Compose would reject or mangle: {line.strip()}"


@pytest.mark.parametrize("name", FILES)
def test_gpu_index_is_explained_where_it_is_set(name: str) -> None:
    lines = text(name).splitlines()
    places = [i for i, line in enumerate(lines) if line.strip().startswith("GPU_INDEX:")]
    assert places
    for i in places:
        assert lines[i - 1].strip().startswith("#") and "NVML" in lines[i - 1]


def test_env_example_documents_only_used_variables_with_their_defaults() -> None:
    defaults: dict[str, set[str | None]] = {}
    for name in FILES:
        for variable, _, default in interpolations(name):
            defaults.setdefault(variable, set()).add(default)
    example = env_example()
    assert set(example) == set(defaults), "stale or missing variables in .env.example"
    for variable, value in example.items():
        assert len(defaults[variable]) == 1, f"{variable} has different defaults in different places"
        (default,) = defaults[variable]
        if variable == "MODELS":
            ids = {spec.model_id for spec in parse_models(value)}
            assert {entry["model_id"] for entry in ai_models_example()} <= ids
        elif default is None:
            assert value == "", f"{variable} is required: .env.example must leave it for the operator"
        else:
            assert value == default, f".env.example sets {variable}={value}, compose defaults to {default!r}"


# --- workers, their Ollama and their GPU --------------------------------------------------------------


def devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = service["deploy"]["resources"]["reservations"]["devices"]
    return found


@pytest.mark.parametrize(("name", "gpus", "golivepeer", "redis_ha"), GENERATED)
def test_each_worker_uses_its_own_ollama_on_the_same_gpu(
    name: str, gpus: list[int], golivepeer: bool, redis_ha: bool
) -> None:
    all_services = services(name)
    workers = {n: s for n, s in all_services.items() if s.get("command") == ["python", "-m", "worker"]}
    assert len(workers) == len(gpus)
    seen: set[str] = set()
    seen_gpus: set[str] = set()
    for worker in workers.values():
        env = worker["environment"]
        match = re.fullmatch(r"http://([a-z0-9-]+):11434", env["OLLAMA_URL"])
        assert match, env["OLLAMA_URL"]
        ollama_name = match.group(1)
        ollama = all_services[ollama_name]
        assert ollama["image"].startswith("ollama/ollama:")
        (worker_gpu,) = devices(worker)
        (ollama_gpu,) = devices(ollama)
        assert worker_gpu["device_ids"] == ollama_gpu["device_ids"] and len(worker_gpu["device_ids"]) == 1
        assert worker_gpu["driver"] == ollama_gpu["driver"] == "nvidia"
        assert worker_gpu["capabilities"] == ["utility"] and env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
        assert ollama_gpu["capabilities"] == ["gpu"]
        assert env["GPU_INDEX"] == "0", "the container sees one GPU, NVML index 0"
        assert env["OLLAMA_NUM_PARALLEL"] == ollama["environment"]["OLLAMA_NUM_PARALLEL"]
        assert resolved(env["NUM_CTX"]) == resolved(ollama["environment"]["OLLAMA_CONTEXT_LENGTH"])
        assert worker["depends_on"][ollama_name] == {"condition": "service_healthy"}
        (volume,) = ollama["volumes"]
        assert volume.endswith(":/root/.ollama") and volume.split(":")[0] in doc(name)["volumes"]
        seen.update((ollama_name, volume))
        seen_gpus.add(worker_gpu["device_ids"][0])
    assert len(seen) == 2 * len(gpus), "two workers share an Ollama or a model volume"
    assert seen_gpus == {str(g) for g in gpus}


@pytest.mark.parametrize("name", FILES)
def test_internal_services_are_not_published(name: str) -> None:
    for service_name, service in services(name).items():
        if service_name.startswith(("redis", "sentinel-", "ollama-")):
            assert "ports" not in service, f"{service_name} must stay inside the llm-runner network"
    (dashboard_port,) = services(name)["dashboard"]["ports"]
    assert dashboard_port.startswith("127.0.0.1:"), "the dashboard is published on the host's loopback only"
    for service_name, service in services(name).items():
        for port in service.get("ports", []):
            assert resolved(port).rpartition(":")[2] != "6379", f"{service_name} publishes Redis"
    (web_port,) = services(name)["web"]["ports"]
    assert web_port.endswith(":8000")


# --- commands, lifecycle, network ----------------------------------------------------------------------


def procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text(encoding="utf-8").splitlines()
    return {k.strip(): shlex.split(v) for k, _, v in (line.partition(":") for line in lines if line.strip())}


@pytest.mark.parametrize("name", FILES)
def test_commands_are_the_procfiles(name: str) -> None:
    web = services(name)["web"]
    assert web["command"] == procfile()["web"] == ["llm-runner", "web"]
    assert "http://127.0.0.1:8000/health" in web["healthcheck"]["test"][-1]
    for service_name, service in ours(name).items():
        if service_name.startswith("worker-"):
            assert service["command"] == procfile()["worker"]
    dashboard = services(name)["dashboard"]["command"]
    assert dashboard == [*procfile()["dashboard"], "--bind", "0.0.0.0", "--port", "9181"]


# --- secrets -------------------------------------------------------------------------------------------

PASSWORD_REQUIRED = re.compile(r"\$\{REDIS_PASSWORD:\?[^}]+\}")


def redis_urls(value: Any) -> list[str]:
    """Every string mentioning a redis:// or rediss:// URL inside a service definition."""
    if isinstance(value, dict):
        return [url for item in value.values() for url in redis_urls(item)]
    if isinstance(value, list):
        return [url for item in value for url in redis_urls(item)]
    return [value] if isinstance(value, str) and ("redis://" in value or "rediss://" in value) else []


@pytest.mark.parametrize("name", FILES)
def test_redis_requires_a_password_and_every_url_carries_it(name: str) -> None:
    redis = services(name)["redis"]
    command = redis["command"]
    assert PASSWORD_REQUIRED.fullmatch(command[command.index("--requirepass") + 1])
    assert PASSWORD_REQUIRED.fullmatch(redis["environment"]["REDISCLI_AUTH"]), "the healthcheck must authenticate"
    assert "redis-cli ping" in redis["healthcheck"]["test"][-1]
    urls = [url for service in services(name).values() for url in redis_urls(service)]
    assert len(urls) == 2 + len([n for n in services(name) if n.startswith("worker-")])
    for url in urls:
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@\$\{REDIS_HOST:-redis\}:6379/0", url), url
    for service in ours(name).values():
        assert "REDIS_URL" not in " ".join(service["command"]), "a password on a command line shows in ps"
    if "redis-replica" in services(name):
        replica = services(name)["redis-replica"]["command"]
        assert PASSWORD_REQUIRED.fullmatch(replica[replica.index("--requirepass") + 1])
        for node in ("redis", "redis-replica"):  # either may be the replica after a failover
            command = services(name)[node]["command"]
            assert PASSWORD_REQUIRED.fullmatch(command[command.index("--masterauth") + 1])


@pytest.mark.parametrize("name", FILES)
def test_the_dashboard_requires_a_login(name: str) -> None:
    dashboard = services(name)["dashboard"]
    env = dashboard["environment"]
    assert compose_default(env["RQ_DASHBOARD_USERNAME"])
    assert re.fullmatch(r"\$\{RQ_DASHBOARD_PASSWORD:\?[^}]+\}", env["RQ_DASHBOARD_PASSWORD"])
    assert "status == 401" in dashboard["healthcheck"]["test"][-1], "healthy only while it asks for a login"
    assert "--username" not in dashboard["command"] and "--password" not in dashboard["command"]


def test_compose_output_writes_missing_passwords_into_env(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="llm-runner")
    add_parser(parser.add_subparsers(dest="command", required=True))
    env_file = tmp_path / ".env"
    env_file.write_text("MODELS=x\nREDIS_PASSWORD=\nAUTH_TOKEN=keep\n", encoding="utf-8")
    args = parser.parse_args(["compose", "--output", str(tmp_path / "docker-compose.yml")])
    assert args.func(args) == 0
    values = dict(line.split("=", 1) for line in env_file.read_text(encoding="utf-8").splitlines())
    assert values["MODELS"] == "x" and values["AUTH_TOKEN"] == "keep"
    assert "REDIS_SENTINEL_PASSWORD" not in values, "only the passwords this file requires"
    args = parser.parse_args(["compose", "--redis-ha", "--output", str(tmp_path / "docker-compose.yml")])
    assert args.func(args) == 0
    values = dict(line.split("=", 1) for line in env_file.read_text(encoding="utf-8").splitlines())
    for secret in GENERATED_SECRETS:
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", values[secret]), secret
    assert len({values[secret] for secret in GENERATED_SECRETS}) == len(GENERATED_SECRETS)
    assert env_file.stat().st_mode & 0o777 == 0o600
    before = env_file.read_text(encoding="utf-8")
    assert args.func(args) == 0
    assert env_file.read_text(encoding="utf-8") == before, "set passwords are kept"
    required = {v for name in FILES for v, op, _ in interpolations(name) if op == ":?"}
    assert set(GENERATED_SECRETS) == required - {"GOLIVEPEER_SERVICE_ADDR"}


@pytest.mark.parametrize("name", FILES)
def test_restart_policies_healthchecks_and_grace(name: str) -> None:
    drain = Settings.shutdown_grace_s + 5
    for service_name, service in services(name).items():
        assert service.get("restart") in ("unless-stopped", "always"), f"{service_name} has no restart policy"
        check = service.get("healthcheck")
        assert check, f"{service_name} runs for good and needs a healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) >= 2
        if "build" in service:
            assert service.get("init") is True, f"{service_name}: PID 1 must forward SIGTERM"
    for service_name in ["web"] + [n for n in services(name) if n.startswith("worker-")]:
        grace = services(name)[service_name]["stop_grace_period"]
        assert seconds(resolved(grace)) > drain, f"{service_name} would be killed before it drains"


@pytest.mark.parametrize("name", FILES)
def test_every_service_joins_the_named_network(name: str) -> None:
    assert doc(name)["networks"] == {"llm-runner": {"name": "llm-runner"}}
    for service_name, service in services(name).items():
        assert service["networks"] == ["llm-runner"], service_name


# --- go-livepeer --------------------------------------------------------------------------------------


@cache
def ai_models_example() -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads((COMPOSE_DIR / "aiModels.example.json").read_text(encoding="utf-8"))
    return loaded


def test_ai_models_example_points_at_this_runner() -> None:
    entries = ai_models_example()
    assert [e["model_id"] for e in entries] == ["meta-llama/Meta-Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"]
    for entry in entries:
        assert entry["pipeline"] == "llm"
        assert entry["url"] == f"http://web:8000/{entry['model_id']}"
        parse_models(entry["model_id"])  # a well-known id, so MODELS can list it without a tag
        assert "AUTH_TOKEN" in entry["token"]
        assert isinstance(entry["capacity"], int) and entry["capacity"] >= 1
        assert entry["price_per_unit"] > 0 and entry["pixels_per_unit"] >= 1
        assert entry["currency"] == "USD" and entry["warm"] is True


def test_golivepeer_service() -> None:
    service = services("docker-compose.golivepeer.yml")["go-livepeer"]
    flags = {word[1:].partition("=")[0] for word in service["command"]}
    assert flags <= GOLIVEPEER_FLAGS, f"unconfirmed go-livepeer flags: {flags - GOLIVEPEER_FLAGS}"
    assert {"orchestrator", "aiWorker", "aiModels", "serviceAddr", "network"} <= flags
    values = dict(word[1:].partition("=")[::2] for word in service["command"])
    mounts = {m["target"]: m for m in service["volumes"] if isinstance(m, dict)}
    assert mounts[values["aiModels"]]["source"] == "./aiModels.json"
    assert mounts[values["aiModels"]]["read_only"] is True
    overrides = json.loads(values["aiRunnerImageOverrides"])
    assert overrides["batch"]["llm"] == services("docker-compose.golivepeer.yml")["web"]["image"]
    healthy = {"condition": "service_healthy"}
    assert service["depends_on"] == {"web": healthy, "worker-gpu0": healthy}  # their GPUs registered first
    for name in ("docker-compose.yml", "docker-compose.2gpu.yml"):
        assert "go-livepeer" not in services(name)


# --- the image -----------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    steps = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            steps.append((instruction.upper(), rest.strip()))
    return steps


def test_dockerfile_installs_the_package_and_runs_unprivileged() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = " && ".join(args for ins, args in steps if ins == "RUN")
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs)
    users = [args for ins, args in steps if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("EXPOSE", "8000") in steps and ("STOPSIGNAL", "SIGTERM") in steps
    env = " ".join(args for ins, args in steps if ins == "ENV")
    assert "PYTHONUNBUFFERED=1" in env and "NVIDIA_DRIVER_CAPABILITIES=utility" in env
    (cmd,) = [args for ins, args in steps if ins == "CMD"]
    assert json.loads(cmd) == procfile()["web"]


def test_dockerfile_copies_what_the_build_needs_and_dockerignore_keeps_it() -> None:
    copied = [word for ins, args in dockerfile() if ins == "COPY" for word in args.split()[:-1]]
    for package in ("common", "web", "worker", "setup.cfg", "pyproject.toml"):
        assert package in copied
    for source in copied:
        assert "*" in source or (ROOT / source).exists(), f"COPY {source}: no such file"
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in copied:
        top = source.rstrip("*").split("/")[0]
        assert not any(Path(top).match(pattern) or top == pattern for pattern in ignored), f"{source} is ignored"
    assert ".git" in ignored and "bench" in ignored


# --- Redis high availability ----------------------------------------------------------------------------

HA_FILE = "docker-compose.redis-ha.yml"


def sentinel_lines(service: dict[str, Any]) -> list[str]:
    """The configuration lines a sentinel service writes before it starts."""
    script = service["command"][-1]
    return re.findall(r"'([^']+)'", script.split(" > ")[0].split("printf '%s\\n' ", 1)[1])


def sentinel_options(lines: list[str]) -> dict[str, str]:
    """Directive (one word, two for `sentinel ...`) → the rest of its line."""
    options = {}
    for line in lines:
        words = 2 if line.startswith("sentinel ") else 1
        parts = line.split(" ", words)
        options[" ".join(parts[:words])] = parts[words]
    return options


def test_ha_runner_services_follow_the_sentinels() -> None:
    sentinels = sorted(n for n in services(HA_FILE) if n.startswith("sentinel-"))
    assert len(sentinels) == 3
    monitors = {line.split()[2] for n in sentinels for line in sentinel_lines(services(HA_FILE)[n])
                if line.startswith("sentinel monitor ")}  # fmt: skip
    for service_name, service in ours(HA_FILE).items():
        env = {k: resolved(v) for k, v in service["environment"].items() if k.startswith("REDIS_")}
        settings = Settings.from_env({**env, "REDIS_URL": "redis://:password@redis:6379/0"})
        assert sorted(host for host, _ in settings.redis_sentinels) == sentinels, service_name
        assert {port for _, port in settings.redis_sentinels} == {26379}
        assert {settings.redis_sentinel_master} == monitors
        assert re.fullmatch(r"\$\{REDIS_SENTINEL_PASSWORD:\?[^}]+\}", service["environment"]["REDIS_SENTINEL_PASSWORD"])
        assert set(sentinels) <= set(service["depends_on"]), f"{service_name} starts before the sentinels"
        assert settings.wait_replicas == 1, "placements and takes wait for the replica by default"


def test_ha_sentinels_watch_the_master_with_passwords_and_fail_over_within_the_runners_window() -> None:
    quorum = None
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        service = services(HA_FILE)[name]
        lines = sentinel_lines(service)
        options = sentinel_options(lines)
        master, host, port, quorum = options["sentinel monitor"].split()
        assert (host, port) == ("redis", "6379") and services(HA_FILE)["redis"]["command"][0] == "redis-server"
        named, password = options["sentinel auth-pass"].split(" ", 1)
        assert named == master and PASSWORD_REQUIRED.fullmatch(password), "the sentinels authenticate to Redis"
        assert re.fullmatch(r"\$\{REDIS_SENTINEL_PASSWORD:\?[^}]+\}", options["requirepass"])
        assert options["sentinel announce-ip"] == name and options["sentinel resolve-hostnames"] == "yes"
        # The master's detection plus a vote (a second or two) must end within the publisher's retry window.
        down_after_s = int(options["sentinel down-after-milliseconds"].split()[1]) / 1000
        assert down_after_s + 2 < RETRY_S
        assert re.fullmatch(r"\$\{REDIS_SENTINEL_PASSWORD:\?[^}]+\}", service["environment"]["REDISCLI_AUTH"])
        assert "get-master-addr-by-name " + master in service["healthcheck"]["test"][-1]
        assert service["user"] == "redis" and service["volumes"] == [f"{name}:/data"]
    assert quorum == "2", "a majority of the three sentinels"
    replica = services(HA_FILE)["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1 :] == ["redis", "6379"]
    for node in ("redis", "redis-replica"):
        command = services(HA_FILE)[node]["command"]
        assert command[command.index("--replica-announce-ip") + 1] == node
        # A master that restarts before the sentinels notice must not come back empty.
        assert command[command.index("--appendonly") + 1] == "yes"
