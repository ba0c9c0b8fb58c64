"""Helpers for the deployment tests: external tools, Dockerfiles, .dockerignore rules and metric names."""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILES = (REPO_ROOT / "docker" / "Dockerfile", REPO_ROOT / "docker" / "Dockerfile.cuda")
PROMETHEUS_CONFIG = REPO_ROOT / "docker" / "prometheus" / "prometheus.yml"
GRAFANA_DIR = REPO_ROOT / "docker" / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "terdguard.json"

REQUIRE_TOOLS_VARIABLE = "TERDGUARD_REQUIRE_DEPLOY_TOOLS"
TOOL_TIMEOUT_SECONDS = 120
METRIC_NAME = re.compile(r"\bterdguard_[A-Za-z0-9_]+")

# Series names each metric type exposes in the Prometheus text format, by suffix.
SERIES_SUFFIXES = {
    "counter": ("", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "untyped": ("",),
}


# -- external tools ----------------------------------------------------------------------------


def require_tool(command: str, package: str) -> str:
    """Return the path of `command`. A missing tool skips the test, or fails it when tools are required."""
    path = shutil.which(command)
    if path is not None:
        return path
    message = f"{command} not found: install the Debian package {package} (apt-get install -y {package})"
    if os.environ.get(REQUIRE_TOOLS_VARIABLE) == "1":
        pytest.fail(f"{message}; {REQUIRE_TOOLS_VARIABLE}=1 requires it")
    pytest.skip(message)


def run_tool(args: Sequence[str | Path], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool from the repository root and return its result, whatever the exit status."""
    return subprocess.run([str(arg) for arg in args], input=stdin, capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=TOOL_TIMEOUT_SECONDS, check=False)


def tool_output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


# -- Dockerfiles -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    arguments: str
    stage: int  # index of the FROM it belongs to


def read_dockerfile(path: Path) -> list[Instruction]:
    """Parse a Dockerfile into instructions, dropping comments and blank lines."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), arguments.strip(), stage))
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(instruction.stage for instruction in instructions)
    return [instruction for instruction in instructions if instruction.stage == last]


def exec_form(arguments: str) -> list[str]:
    """Parse a JSON-array (exec form) argument list. Raises ValueError for the shell form."""
    parsed = json.loads(arguments)
    if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
        raise ValueError(f"exec form invalid: got {arguments!r}, expected a JSON array of strings")
    return parsed


def env_values(instructions: list[Instruction]) -> dict[str, str]:
    """Collect `ENV KEY=VALUE ...` pairs. The legacy `ENV KEY VALUE` form is not supported."""
    values: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for pair in instruction.arguments.split():
                key, _, value = pair.partition("=")
                values[key] = value
    return values


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """Return the build-context sources of every COPY and ADD that does not copy from a stage."""
    sources = []
    for instruction in instructions:
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        words = instruction.arguments.split()
        if any(word.startswith("--from=") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources.extend(paths[:-1])
    return sources


# -- .dockerignore ---------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Translate a .dockerignore pattern (Go filepath.Match plus `**`) into a regular expression."""
    parts = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
            continue
        if pattern.startswith("**", index):
            parts.append(".*")
            index += 2
            continue
        if char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        elif char == "[":
            end = pattern.index("]", index)
            body = pattern[index + 1:end]
            parts.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
            index = end
        else:
            parts.append(re.escape(char))
        index += 1
    return re.compile("".join(parts))


@dataclass(frozen=True)
class DockerIgnore:
    """The rules of a .dockerignore file: the last rule that matches a path or one of its parents wins."""

    rules: tuple[tuple[bool, re.Pattern[str]], ...]  # (excludes, pattern)

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        rules = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            excludes = not line.startswith("!")
            pattern = posixpath.normpath(line.lstrip("!").strip().lstrip("/"))
            rules.append((excludes, _pattern_regex(pattern)))
        return cls(tuple(rules))

    def excludes(self, relative: str) -> bool:
        """Whether the path, relative to the build context, stays out of the context."""
        parts = relative.strip("/").split("/")
        candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
        excluded = False
        for excludes, pattern in self.rules:
            if any(pattern.fullmatch(candidate) for candidate in candidates):
                excluded = excludes
        return excluded


# -- metrics ---------------------------------------------------------------------------------


def exported_series(exposition: str) -> set[str]:
    """Return every series name a Prometheus text exposition can carry, from its `# TYPE` lines.

    A family declared without samples (a labelled metric nothing has observed yet)
    still counts, so the result does not depend on which requests ran.
    """
    names = set()
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, metric_type = line.split(maxsplit=3)
        for suffix in SERIES_SUFFIXES[metric_type]:
            names.add(name + suffix)
        if metric_type == "counter" and not name.endswith("_total"):
            names.add(name + "_total")
    return names


def dashboard_queries(node: Any) -> Iterator[str]:
    """Yield every PromQL expression in a dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str):
                yield value
            else:
                yield from dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_queries(item)


def metric_names(expression: str) -> set[str]:
    return set(METRIC_NAME.findall(expression))
