"""The Dockerfiles, their build context and the zoo staging script, checked without a Docker engine."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType

import pytest

from terdguard.core.zoo import zoo_model_dirs
from terdguard.service.cli import build_parser
from terdguard.service.settings import Settings

from .conftest import GuardRun
from .deploy_helpers import (
    DOCKERFILES,
    REPO_ROOT,
    DockerIgnore,
    copy_sources,
    env_values,
    exec_form,
    final_stage,
    read_dockerfile,
)

CPU_DOCKERFILE, CUDA_DOCKERFILE = DOCKERFILES
SETTINGS_PREFIX = "TERDGUARD_"
ROOT_USERS = ("root", "0", "0:0", "root:root")


@pytest.fixture(scope="module")
def dockerignore() -> DockerIgnore:
    return DockerIgnore.read(REPO_ROOT / ".dockerignore")


def _pip_installs(dockerfile: Path) -> list[str]:
    return [i.arguments for i in read_dockerfile(dockerfile) if i.keyword == "RUN" and "pip install" in i.arguments]


def _build_args(dockerfile: Path) -> dict[str, str]:
    args = {}
    for instruction in read_dockerfile(dockerfile):
        if instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            args[name] = default
    return args


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_runs_as_non_root(dockerfile: Path) -> None:
    users = [i.arguments for i in final_stage(read_dockerfile(dockerfile)) if i.keyword == "USER"]
    assert users, f"{dockerfile.name}: the final stage sets no USER, so it runs as root"
    assert users[-1] not in ROOT_USERS


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_serves_one_guard(dockerfile: Path) -> None:
    stage = final_stage(read_dockerfile(dockerfile))
    entrypoint = [exec_form(i.arguments) for i in stage if i.keyword == "ENTRYPOINT"][-1]
    command = [exec_form(i.arguments) for i in stage if i.keyword == "CMD"][-1]
    assert entrypoint == ["terdguard"]

    args = build_parser().parse_args(command)
    assert args.command == "serve"
    assert args.role == "guard"
    assert args.host == "0.0.0.0"
    assert args.port == 8000
    assert "8000" in [i.arguments for i in stage if i.keyword == "EXPOSE"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_health_check(dockerfile: Path) -> None:
    checks = [i.arguments for i in final_stage(read_dockerfile(dockerfile)) if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "http://127.0.0.1:8000/healthz" in checks[0]
    assert "--start-period=" in checks[0]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_settings_exist(dockerfile: Path) -> None:
    settings = {name for name in env_values(read_dockerfile(dockerfile)) if name.startswith(SETTINGS_PREFIX)}
    assert {"TERDGUARD_MODELS_ROOT", "TERDGUARD_MODELS_FILE", "TERDGUARD_DATA_DIR"} <= settings
    for name in settings:
        assert name.removeprefix(SETTINGS_PREFIX).lower() in Settings.model_fields, name


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_paths_agree(dockerfile: Path) -> None:
    """The zoo staging step writes where the image's settings point."""
    instructions = read_dockerfile(dockerfile)
    env = env_values(instructions)
    staging = [i.arguments for i in instructions if i.keyword == "RUN" and "stage_zoo.py" in i.arguments]
    assert len(staging) == 1
    assert f"--models-root {env['TERDGUARD_MODELS_ROOT']} " in staging[0]
    assert f"--models-file {env['TERDGUARD_MODELS_FILE']} " in staging[0]


def test_cpu_image_installs_cpu_torch_first() -> None:
    installs = _pip_installs(CPU_DOCKERFILE)
    torch_index = [n for n, command in enumerate(installs) if "--index-url" in command and "torch" in command]
    package = [n for n, command in enumerate(installs) if re.search(r"pip install \.(\s|$)", command)]
    assert torch_index and package
    assert torch_index[0] < package[0]
    assert _build_args(CPU_DOCKERFILE)["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_cuda_image_installs_cuda_torch() -> None:
    installs = _pip_installs(CUDA_DOCKERFILE)
    assert any("--index-url" in command and "torch" in command for command in installs)
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", _build_args(CUDA_DOCKERFILE)["TORCH_INDEX_URL"])
    env = env_values(read_dockerfile(CUDA_DOCKERFILE))
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_copy_sources_in_context(dockerfile: Path, dockerignore: DockerIgnore) -> None:
    sources = copy_sources(read_dockerfile(dockerfile))
    assert sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"{dockerfile.name} copies {source}, which is missing"
        assert not dockerignore.excludes(source), f"{dockerfile.name} copies {source}, which .dockerignore excludes"


def test_context_keeps_the_zoo(dockerignore: DockerIgnore) -> None:
    zoo = zoo_model_dirs()
    if not zoo:
        pytest.skip("zoo not built yet")
    for model_dir in zoo.values():
        for path in model_dir.rglob("*"):
            relative = path.relative_to(REPO_ROOT).as_posix()
            assert not dockerignore.excludes(relative), f".dockerignore drops zoo file {relative}"


@pytest.mark.parametrize("path", [
    ".git/config", ".venv/bin/python", "venv/bin/python", "terdguard-data/registry.sqlite3",
    "terdguard-triggers/abc.safetensors", "core/__pycache__/scan.cpython-311.pyc", ".pytest_cache/v/cache",
    ".ruff_cache/CACHEDIR.TAG", ".mypy_cache/3.11/core", "terd_guard.egg-info/PKG-INFO",
    "core/zoo/models/.benign-s2-a-x1y2/unet/config.json",
])
def test_context_excludes(dockerignore: DockerIgnore, path: str) -> None:
    assert dockerignore.excludes(path)


def test_context_includes_sources(dockerignore: DockerIgnore) -> None:
    for path in ("pyproject.toml", "README.md", "core/scan.py", "service/app.py", "docker/stage_zoo.py"):
        assert not dockerignore.excludes(path), path


def test_stage_zoo_registers_zoo(guard_run: GuardRun) -> None:
    zoo = zoo_model_dirs()
    if not zoo:
        pytest.skip("zoo not built yet")
    assert [entry["name"] for entry in guard_run.staged] == list(zoo)

    registered = {model["name"]: model for model in guard_run.models}
    assert set(registered) == set(zoo)
    for name in zoo:
        assert registered[name]["source"] == f"zoo/{name}"
        assert registered[name]["state"] in ("queued", "scanning", "ready")


def test_stage_zoo_copies_files(tmp_path: Path, stage_zoo_module: ModuleType) -> None:
    zoo = zoo_model_dirs()
    if not zoo:
        pytest.skip("zoo not built yet")
    models_file = tmp_path / "etc" / "zoo-models.json"
    stage_zoo_module.stage_zoo(tmp_path / "models", models_file)

    for name, model_dir in zoo.items():
        originals = sorted(p.relative_to(model_dir) for p in model_dir.rglob("*") if p.is_file())
        copy = tmp_path / "models" / "zoo" / name
        assert sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file()) == originals
        weights = Path("unet") / "diffusion_pytorch_model.safetensors"
        assert (copy / weights).read_bytes() == (model_dir / weights).read_bytes()
    assert json.loads(models_file.read_text()) == [{"name": name, "source": f"zoo/{name}"} for name in zoo]


def test_stage_zoo_without_zoo_fails(tmp_path: Path, stage_zoo_module: ModuleType,
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(stage_zoo_module, "zoo_model_dirs", lambda: {})
    status = stage_zoo_module.main(["--models-root", str(tmp_path / "models"),
                                    "--models-file", str(tmp_path / "zoo-models.json")])
    assert status == 1
    assert "no zoo models found" in capsys.readouterr().err
