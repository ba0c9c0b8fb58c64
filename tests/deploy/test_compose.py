"""docker-compose.yml: validated by docker-compose, and checked against the images, settings and files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from terdguard.service.cli import build_parser
from terdguard.service.settings import Settings

from .deploy_helpers import (
    COMPOSE_FILE,
    DOCKERFILES,
    REPO_ROOT,
    env_values,
    read_dockerfile,
    require_tool,
    run_tool,
    tool_output,
)

SERVICES = ("guard", "sampler", "prometheus", "grafana")
PUBLISHED_PORTS = {"guard": 8000, "prometheus": 9090, "grafana": 3000}
SECRET_NAME = re.compile(r"(KEY|PASSWORD|SECRET|TOKEN)$")
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")
COMMENTED_SETTING = re.compile(r"^\s*#\s+(?P<key>image|build): (?P<value>.+)$", re.MULTILINE)


def _defaults(value: str) -> str:
    """Interpolate `${VAR:-default}` with its default only, ignoring the caller's environment."""
    return VARIABLE.sub(lambda match: match.group("default") or "", value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    return {name: _defaults(str(value)) for name, value in service.get("environment", {}).items()}


def _serve_args(service: dict[str, Any]) -> Any:
    return build_parser().parse_args(service["command"])


def _volume_parts(volume: str) -> tuple[str, str]:
    source, target, *_ = _defaults(volume).split(":")
    return source, target


def _commented_block(text: str, first_line: str) -> str:
    """Return the commented YAML block that starts at `first_line`, uncommented."""
    lines = text.splitlines()
    starts = [n for n, line in enumerate(lines) if line.strip() == first_line]
    assert starts, f"{COMPOSE_FILE.name} has no line {first_line!r}"
    column = lines[starts[0]].index("#")
    block = []
    for line in lines[starts[0]:]:
        if not line.strip().startswith("#") or line.index("#") != column:
            break
        block.append(line[column + 2:])
    return "\n".join(block)


def _gpu_variant(compose: dict[str, Any]) -> dict[str, Any]:
    """Return the compose file after the edit that the sampler's comment describes for NVIDIA hosts."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    sampler = dict(compose["services"]["sampler"])
    for match in COMMENTED_SETTING.finditer(text):
        sampler.update(yaml.safe_load(f"{match['key']}: {match['value']}"))
    sampler.update(yaml.safe_load(_commented_block(text, "# deploy:")))
    return {**compose, "services": {**compose["services"], "sampler": sampler}}


def _compose_config(path: Path) -> None:
    docker_compose = require_tool("docker-compose", "docker-compose")
    result = run_tool([docker_compose, "--project-directory", REPO_ROOT, "--file", path, "config", "--quiet"])
    assert result.returncode == 0, tool_output(result)


def test_compose_config_valid() -> None:
    _compose_config(COMPOSE_FILE)


def test_compose_gpu_variant_valid(compose: dict[str, Any], tmp_path: Path) -> None:
    variant = tmp_path / "docker-compose.gpu.yml"
    variant.write_text(yaml.safe_dump(_gpu_variant(compose)), encoding="utf-8")
    _compose_config(variant)


def test_gpu_variant_reserves_gpu(compose: dict[str, Any]) -> None:
    sampler = _gpu_variant(compose)["services"]["sampler"]
    assert sampler["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    devices = sampler["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in compose["services"]["sampler"]


def test_compose_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == set(SERVICES)


@pytest.mark.parametrize("service", sorted(PUBLISHED_PORTS))
def test_compose_published_port(compose: dict[str, Any], service: str) -> None:
    port = PUBLISHED_PORTS[service]
    published = [_defaults(entry).split(":")[-2:] for entry in compose["services"][service]["ports"]]
    assert [str(port), str(port)] in published


def test_compose_referenced_files(compose: dict[str, Any]) -> None:
    checked = []
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = REPO_ROOT / build["context"]
            assert context.is_dir(), f"{name}: build context {context} missing"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
            checked.append(build["dockerfile"])
        for volume in service.get("volumes", []):
            source, _ = _volume_parts(volume)
            if source.startswith((".", "/")):
                assert (REPO_ROOT / source).exists(), f"{name}: mounted {source} missing"
                checked.append(source)
    assert "docker/Dockerfile" in checked
    assert "./docker/prometheus/prometheus.yml" in checked


def test_compose_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, _ = _volume_parts(volume)
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"


def test_guard_volumes_match_image(compose: dict[str, Any]) -> None:
    env = env_values(read_dockerfile(DOCKERFILES[0]))
    guard = dict(_volume_parts(volume)[::-1] for volume in compose["services"]["guard"]["volumes"])
    sampler = dict(_volume_parts(volume)[::-1] for volume in compose["services"]["sampler"]["volumes"])

    assert env["TERDGUARD_DATA_DIR"] in guard
    models_targets = [target for target in guard if target.startswith(env["TERDGUARD_MODELS_ROOT"] + "/")]
    assert len(models_targets) == 1
    # The guard sends model paths under the models root, so the sampler must see the same folder there.
    assert sampler[models_targets[0]] == guard[models_targets[0]]


def test_guard_reaches_sampler(compose: dict[str, Any]) -> None:
    services = compose["services"]
    guard_env = _environment(services["guard"])
    url = httpx.URL(guard_env["TERDGUARD_SAMPLER_URL"])
    assert url.host == "sampler"
    assert url.port == _serve_args(services["sampler"]).port
    assert services["guard"]["environment"]["TERDGUARD_SAMPLER_KEY"] == \
        services["sampler"]["environment"]["TERDGUARD_SAMPLER_KEY"]
    assert guard_env["TERDGUARD_SAMPLER_KEY"], "the dev default sampler key is empty"


@pytest.mark.parametrize(("service", "role"), [("guard", "guard"), ("sampler", "sampler")])
def test_compose_commands(compose: dict[str, Any], service: str, role: str) -> None:
    args = _serve_args(compose["services"][service])
    assert args.command == "serve"
    assert args.role == role
    assert args.host == "0.0.0.0"
    assert args.port == 8000


@pytest.mark.parametrize("service", ["guard", "sampler"])
def test_compose_settings_valid(compose: dict[str, Any], service: str, tmp_path: Path) -> None:
    """The TERDGUARD_ variables with their dev defaults pass the real settings validation."""
    values: dict[str, Any] = {
        name.removeprefix("TERDGUARD_").lower(): value
        for name, value in _environment(compose["services"][service]).items()
        if name.startswith("TERDGUARD_") and value  # the settings ignore empty variables too
    }
    for name in values:
        assert name in Settings.model_fields, name
    Settings(**values, models_root=tmp_path, data_dir=tmp_path / "data")


def test_compose_secrets_from_variables(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for variable, value in service.get("environment", {}).items():
            if SECRET_NAME.search(variable):
                assert str(value).startswith("${"), f"{name}: {variable} is a literal, expected ${{VAR:-default}}"
