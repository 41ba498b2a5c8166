"""The documentation against the code: the settings reference, links, module paths, the README's size.

The configuration reference (docs/configuration.md) has one table row per environment variable:
`| `NAME` | default | meaning |`. Every variable the code reads must have a row, every row must be
read by the code, and a default written as code (it starts with a code span) must be the value
the code uses: setting the variable to it changes nothing.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings
from ops.serve import dashboard_port

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
REFERENCE = REPO / "docs" / "configuration.md"
PAGES = [README, REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
PACKAGES = ("common", "web", "worker", "ops")
README_MAX_LINES = 250

ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*[A-Z0-9]$")
ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|\s*(.*?)\s*\|.*\|\s*$")
LEADING_CODE = re.compile(r"^`([^`]*)`")
# Env readers (common/env.py) whose variable has no default value of its own (unset reads as None,
# "" or nothing): the readers that take no `default` argument.


def _optional_readers() -> frozenset[str]:
    """Every public Env reader without a `default` parameter."""
    tree = ast.parse((REPO / "common" / "env.py").read_text())
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and not node.name.startswith("_")
        and "default" not in {arg.arg for arg in node.args.args + node.args.kwonlyargs}
    )


OPTIONAL_READERS = _optional_readers()
# Variables a library reads on the runner's behalf: name → (file in site-packages, what it contains).
LIBRARY_READS = {"WEB_CONCURRENCY": ("gunicorn/config.py", 'os.environ.get("WEB_CONCURRENCY"')}


def documented() -> dict[str, str]:
    """Each variable of the configuration reference → its default cell."""
    rows: dict[str, str] = {}
    for line in REFERENCE.read_text().splitlines():
        match = ROW.match(line)
        if match:
            name, default = match.groups()
            assert name not in rows, f"{name} has two rows in {REFERENCE.name}"
            rows[name] = default
    return rows


class _Recorder(dict[str, str]):
    """An empty environment that remembers every variable asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        self.asked.add(key)
        return default

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return False

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)


def _settings_calls() -> Iterator[tuple[str, str]]:
    """(reader, variable) for every `env.<reader>("NAME", ...)` in common/settings.py."""
    tree = ast.parse((REPO / "common" / "settings.py").read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "env"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and ENV_NAME.match(node.args[0].value)
        ):
            yield node.func.attr, node.args[0].value


def read_by_settings() -> set[str]:
    """Every variable Settings.from_env reads: asked of an empty environment, or named in its code."""
    recorder = _Recorder()
    Settings.from_env(recorder)
    return recorder.asked | {name for _, name in _settings_calls()}


def literal_defaults() -> set[str]:
    """Settings variables whose default is a value of their own (not "unset")."""
    calls = list(_settings_calls())
    optional = {name for reader, name in calls if reader in OPTIONAL_READERS}
    return {name for _, name in calls} - optional


_ENV_RECEIVERS = frozenset({"environ", "env", "_environ"})


def _is_environ(node: ast.expr) -> bool:
    """`os.environ`, `environ`, `env`, `self._environ`: an environment mapping by its name."""
    if isinstance(node, ast.Name):
        return node.id in _ENV_RECEIVERS
    return isinstance(node, ast.Attribute) and node.attr in _ENV_RECEIVERS


def _strings(node: ast.expr, constants: dict[str, list[str]]) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name):
        return constants.get(node.id, [])
    return []


def _reads_in(path: Path) -> set[str]:
    """Variables a module reads from an environment mapping (get, setdefault, pop, [], in, os.getenv)."""
    tree = ast.parse(path.read_text())
    constants: dict[str, list[str]] = {}
    for node in tree.body:  # module-level NAME = "VALUE"
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            constants[node.targets[0].id] = _strings(node.value, {})
    for node in ast.walk(tree):  # loop variables over a tuple of names: `for name in (A, B)`
        looping = isinstance(node, ast.For | ast.comprehension) and isinstance(node.target, ast.Name)
        if looping and isinstance(node.iter, ast.Tuple | ast.List):
            constants[node.target.id] = [s for item in node.iter.elts for s in _strings(item, constants)]
    found: set[str] = set()
    for node in ast.walk(tree):
        keys: list[ast.expr] = []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            is_getenv = node.func.attr == "getenv" and isinstance(node.func.value, ast.Name)
            if is_getenv or (node.func.attr in ("get", "setdefault", "pop") and _is_environ(node.func.value)):
                keys.append(node.args[0])
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            keys.append(node.slice)
        elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            keys.append(node.left)
        found |= {s for key in keys for s in _strings(key, constants) if ENV_NAME.match(s)}
    return found


def read_by_code() -> dict[str, str]:
    """Every variable the runner's code (or a library on its behalf) reads → where."""
    where = {name: "common/settings.py" for name in read_by_settings()}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for name in _reads_in(path):
                where.setdefault(name, str(path.relative_to(REPO)))
    for name, (file, _) in LIBRARY_READS.items():
        where.setdefault(name, file)
    return where


def test_every_variable_the_code_reads_is_in_the_reference_and_nothing_else() -> None:
    code, docs = read_by_code(), documented()
    missing = {name: where for name, where in code.items() if name not in docs}
    stale = sorted(set(docs) - set(code))
    assert not missing and not stale, (
        f"add a row to docs/configuration.md for each (variable: read in): {missing}; "
        f"remove the rows of variables the code does not read: {stale}"
    )


def test_libraries_read_what_the_reference_says_they_read() -> None:
    site = Path(pytest.importorskip("gunicorn").__file__).resolve().parent.parent
    for name, (file, needle) in LIBRARY_READS.items():
        assert needle in (site / file).read_text(), f"{file} no longer reads {name}"


def _web_concurrency(value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY"}
    if value is not None:
        env["WEB_CONCURRENCY"] = value
    # gunicorn's own default for its `workers` setting, which web/gunicorn_conf.py leaves alone.
    assert not re.search(r"^workers\s*=", (REPO / "web" / "gunicorn_conf.py").read_text(), re.M)
    code = "from gunicorn.config import Config; print(Config().workers)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


# How to check a default written as code for variables Settings does not read.
PROBES = {
    "DASHBOARD_PORT": lambda value: dashboard_port(value) == dashboard_port(""),
    "WEB_CONCURRENCY": lambda value: _web_concurrency(value) == _web_concurrency(None),
}


def test_defaults_written_as_code_are_the_codes_defaults() -> None:
    settings_vars = read_by_settings()
    unset = Settings.from_env({})
    wrong = []
    for name, cell in documented().items():
        match = LEADING_CODE.match(cell)
        if match is None:
            continue
        value = match.group(1)
        if name in settings_vars:
            holds = Settings.from_env({name: value}) == unset
        elif name in PROBES:
            holds = PROBES[name](value)
        else:
            raise AssertionError(f"{name}: add a probe to tests/test_docs.py PROBES to check its default `{value}`")
        if not holds:
            wrong.append(f"{name}={value}")
    assert not wrong, f"docs/configuration.md gives defaults the code does not use: {wrong}"


def test_settings_with_a_default_value_document_it_as_code() -> None:
    docs = documented()
    prose = sorted(name for name in literal_defaults() if name in docs and not LEADING_CODE.match(docs[name]))
    assert not prose, f"these have a default value in common/settings.py: write it as code in their row: {prose}"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """The heading anchors GitHub makes for a Markdown page (lowercase, punctuation dropped, - for spaces)."""
    found: set[str] = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if line.startswith("#"):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            base, n = slug, 1
            while slug in found:
                slug, n = f"{base}-{n}", n + 1
            found.add(slug)
    return found


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        if not page.exists():
            continue
        for target in LINK.findall(_prose(page.read_text())):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_on_the_readmes_map() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in LINK.findall(_prose(README.read_text()))}
    unlisted = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not unlisted, f"link these from the README's documentation map: {unlisted}"


PATH_SPAN = re.compile(r"`((?:common|web|worker|ops|tests|bench|compose|docs|\.ci)/[\w./-]*)`")


def test_every_module_the_docs_name_exists() -> None:
    """A reader goes from a page to the code in one more hop: each path a page names must be there."""
    missing = []
    for page in PAGES:
        for path in PATH_SPAN.findall(FENCE.sub("", page.read_text())):
            if not (REPO / path).exists():
                missing.append(f"{page.relative_to(REPO)}: {path}")
    assert not missing, "\n".join(missing)


def test_the_readme_is_short_and_the_pages_describe_the_present() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    history = re.compile(r"\b(this release|previous release|release before|last release|tried and dropped)\b", re.I)
    pages = [page for page in PAGES if page.name != "CHANGELOG.md"]
    dated = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in pages for m in history.finditer(p.read_text())]
    assert not dated, f"history belongs in CHANGELOG.md: {dated}"


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    marker = ci.index("# The README's test command, verbatim.")
    command = next(line for line in ci[marker + 1 :] if line.strip())
    assert command in README.read_text().splitlines(), command
