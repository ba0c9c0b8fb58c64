"""Fixtures for the deployment tests: the compose file, the zoo staged the way the images stage it,
and the metrics of a real guard and a real sampler app running on that layout.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from terdguard.core.reversion import ReversionConfig
from terdguard.service.app import create_app
from terdguard.service.sampler import create_sampler_app
from terdguard.service.settings import Settings

from .deploy_helpers import COMPOSE_FILE, REPO_ROOT

STAGE_ZOO_SCRIPT = REPO_ROOT / "docker" / "stage_zoo.py"
READY_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class GuardRun:
    """What a guard app on the image's models layout reported: its models, and both apps' /metrics text."""

    staged: list[dict[str, str]]
    models: list[dict[str, Any]]
    guard_metrics: str
    sampler_metrics: str


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """The compose file as written, before variable interpolation."""
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def stage_zoo_module() -> ModuleType:
    """docker/stage_zoo.py, imported from its path because docker/ is no package."""
    spec = importlib.util.spec_from_file_location("stage_zoo", STAGE_ZOO_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _short_config() -> ReversionConfig:
    """A real but very short fast-profile scan, so models without a shipped trigger become ready in seconds."""
    return dataclasses.replace(ReversionConfig.fast(), stage1_iterations=20, stage2_iterations=2, search=False)


def _wait_for_ready_model(client: TestClient) -> dict[str, Any] | None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        models = client.get("/models").json()["models"]
        ready = [model for model in models if model["state"] == "ready"]
        if ready or not models:
            return ready[0] if ready else None
        if time.monotonic() > deadline:
            pytest.fail(f"no zoo model became ready within {READY_TIMEOUT_SECONDS}s: {models}")
        time.sleep(0.25)


def _exercise_guard(client: TestClient) -> None:
    """Send the requests an operator's dashboard shows: reads, an error, a detection and a generation."""
    assert client.get("/healthz").status_code == 200
    client.get("/readyz")
    assert client.get("/models/no-such-model").status_code == 404
    model = _wait_for_ready_model(client)
    if model is None:
        return
    channels, height, width = _sample_shape(client, model["name"])
    size = 2 * channels * height * width
    latents = {"shape": [2, channels, height, width], "datatype": "FP32", "data": [0.0] * size}
    detected = client.post("/detect", json={"model": model["name"], "latents": latents})
    assert detected.status_code == 200, detected.text
    generated = client.post("/generate", json={"model": model["name"], "num_images": 1, "num_inference_steps": 2})
    assert generated.status_code == 200, generated.text


def _sample_shape(client: TestClient, name: str) -> tuple[int, int, int]:
    """Read (C, H, W) from the model folder's UNet config, the way the guard checks latents."""
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    source = client.get(f"/models/{name}").json()["source"]
    config = json.loads((settings.models_root / source / "unet" / "config.json").read_text(encoding="utf-8"))
    size = config["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return int(config["in_channels"]), int(height), int(width)


@pytest.fixture(scope="session")
def guard_run(tmp_path_factory: pytest.TempPathFactory, stage_zoo_module: ModuleType) -> GuardRun:
    """Stage the zoo as the image build does, start a guard and a sampler on it, and scrape both."""
    root = tmp_path_factory.mktemp("image-layout")
    models_root = root / "models"
    models_file = root / "etc" / "zoo-models.json"
    staged = stage_zoo_module.stage_zoo(models_root, models_file)
    (models_root / "local").mkdir()
    settings = Settings(models_root=models_root, models_file=models_file, data_dir=root / "data", torch_threads=1)

    with TestClient(create_app(settings, reversion_configs={"fast": _short_config()})) as guard:
        _exercise_guard(guard)
        models = guard.get("/models").json()["models"]
        guard_metrics = guard.get("/metrics").text
    with TestClient(create_sampler_app(settings)) as sampler:
        assert sampler.get("/healthz").status_code == 200
        sampler_metrics = sampler.get("/metrics").text
    return GuardRun(staged=staged, models=models, guard_metrics=guard_metrics, sampler_metrics=sampler_metrics)
