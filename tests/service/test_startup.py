"""Start-up: zoo registration, the models file, and settings that change between restarts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from terdguard.service.app import create_app
from terdguard.service.settings import Settings
from terdguard.service.zoo import zoo_models_dir

from .conftest import MODEL_NAME, ZOO_MODEL, short_config


def test_zoo_registered_at_startup(tmp_path: Path, shipped_triggers: Path, zoo_model_dir: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", shipped_triggers_dir=shipped_triggers, torch_threads=1)
    assert settings.models_root == zoo_models_dir().resolve()
    with TestClient(create_app(settings, reversion_configs={"fast": short_config(stage1_iterations=4000)})) as client:
        record = client.get(f"/models/{ZOO_MODEL}").json()
        assert record["state"] == "ready"
        assert record["source"] == ZOO_MODEL
        assert (tmp_path / "data" / "triggers" / f"{record['fingerprint']}.safetensors").is_file()


def test_invalid_models_file_stops_startup(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps([{"name": "Bad Name", "source": MODEL_NAME}]))
    app = create_app(make_settings(models_file=models_file))
    with pytest.raises(ValueError, match="models file invalid"), TestClient(app):
        pass


def test_threshold_settings_apply_without_rescan(make_client: Callable[..., TestClient]) -> None:
    first = make_client()
    record = first.post("/models", json={"name": MODEL_NAME, "source": MODEL_NAME}).json()
    assert record["verdict"] == "backdoored"
    first.__exit__(None, None, None)

    # Thresholds far above the trigger's KL statistics turn the verdict, from the stored trigger alone.
    second = make_client(kl_mean_threshold=1e6, kl_var_threshold=1e6, false_positive_rate=0.01)
    after = second.get(f"/models/{MODEL_NAME}").json()
    assert after["verdict"] == "clean"
    assert after["statistics"]["kl_mean_threshold"] == 1e6
    assert after["input_threshold"]["false_positive_rate"] == 0.01
    assert after["input_threshold"]["llr_threshold"] < record["input_threshold"]["llr_threshold"]
    assert "terdguard_scans_total{" not in second.get("/metrics").text


def test_changed_files_rescanned_at_restart(make_client: Callable[..., TestClient], models_root: Path) -> None:
    first = make_client()
    before = first.post("/models", json={"name": MODEL_NAME, "source": MODEL_NAME}).json()
    first.__exit__(None, None, None)
    config_path = models_root / MODEL_NAME / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["beta_end"] = 0.021
    config_path.write_text(json.dumps(config))

    second = make_client()
    after = second.get(f"/models/{MODEL_NAME}").json()
    assert after["fingerprint"] != before["fingerprint"]
    assert after["state"] in ("queued", "scanning", "ready")
