"""The project's shape: imports go one way, the Procfile runs what the code documents."""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys
from pathlib import Path

from worker.supervise import web_command, worker_command

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
