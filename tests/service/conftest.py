"""Fixtures for service tests: a temporary models root holding a copy of a backdoored zoo model,
a shipped-triggers folder holding that model's true trigger, and settings and apps built on them.

The true trigger comes from the zoo manifest, so guard decisions in these tests do
not depend on how well a short scan recovers the trigger.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from terdguard.core.loading import load_model
from terdguard.core.reversion import ReversionConfig
from terdguard.core.scan import save_scan, scan_model
from terdguard.service.app import create_app
from terdguard.service.settings import Settings
from terdguard.service.zoo import read_manifest, zoo_model_dirs

ZOO_MODEL = "baddiffusion-sparse"
MODEL_NAME = "sparse"  # the copy's folder and registered name in most tests


def short_config(**overrides: Any) -> ReversionConfig:
    """A real but very short fast-profile scan, for tests where a scan must run but its verdict does not matter."""
    fields = {field.name for field in dataclasses.fields(ReversionConfig)}
    changes = {"stage1_iterations": 20, "stage2_iterations": 2, "search": False, "starts": ("uniform_negative",)}
    changes.update(overrides)
    return dataclasses.replace(ReversionConfig.fast(), **{k: v for k, v in changes.items() if k in fields})


@pytest.fixture(scope="session")
def zoo_model_dir() -> Path:
    folders = zoo_model_dirs()
    if ZOO_MODEL not in folders:
        pytest.skip(f"zoo model {ZOO_MODEL} not built yet")
    return folders[ZOO_MODEL]


@pytest.fixture(scope="session")
def manifest(zoo_model_dir: Path) -> dict[str, Any]:
    return read_manifest(zoo_model_dir)


@pytest.fixture(scope="session")
def true_trigger(manifest: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The zoo model's true (trigger_mean, trigger_std), each (C, H, W)."""
    trigger_mean = torch.tensor(manifest["trigger_mean"], dtype=torch.float32)
    trigger_std = torch.as_tensor(manifest["trigger_std"], dtype=torch.float32).expand_as(trigger_mean).clone()
    return trigger_mean, trigger_std


@pytest.fixture(scope="session")
def shipped_triggers(tmp_path_factory: pytest.TempPathFactory, zoo_model_dir: Path,
                     true_trigger: tuple[torch.Tensor, torch.Tensor]) -> Path:
    """A shipped-triggers folder with the zoo model's true trigger, stored the way `save_scan` stores scans.

    A one-iteration real scan supplies a genuine report and file; its tensors are
    then replaced by the true trigger.
    """
    directory = tmp_path_factory.mktemp("shipped-triggers")
    result = scan_model(load_model(zoo_model_dir, device="cpu"), short_config(stage1_iterations=1, stage2_iterations=0))
    trigger_mean, trigger_std = true_trigger
    save_scan(dataclasses.replace(result, trigger_mean=trigger_mean, trigger_std=trigger_std), directory)
    return directory


@pytest.fixture
def models_root(tmp_path: Path, zoo_model_dir: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(zoo_model_dir, root / MODEL_NAME)
    return root


@pytest.fixture
def make_settings(tmp_path: Path, models_root: Path, shipped_triggers: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "models_root": models_root, "data_dir": tmp_path / "data", "shipped_triggers_dir": shipped_triggers,
            "register_zoo": False, "torch_threads": 1, "default_num_inference_steps": 4,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """Start apps inside their lifespan; each is stopped at the end of the test."""
    clients: list[TestClient] = []

    def make(reversion_configs: dict[str, ReversionConfig] | None = None, **overrides: Any) -> TestClient:
        app = create_app(make_settings(**overrides), reversion_configs=reversion_configs or {"fast": short_config()})
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """A guard with the zoo model copy registered as `sparse` and ready from its shipped trigger."""
    client = make_client()
    response = client.post("/models", json={"name": MODEL_NAME, "source": MODEL_NAME})
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "ready"
    return client

