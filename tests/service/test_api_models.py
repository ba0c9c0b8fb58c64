"""/models routes: registration, idempotency, conflicts, unsafe sources, rescans and deletion."""

from __future__ import annotations

import json
import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from .conftest import MODEL_NAME, short_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _TouchOnLoad:
    """A pickle payload that creates `marker` when unpickled, standing in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _pickle_only_model(models_root: Path, marker: Path) -> None:
    """A diffusers-shaped folder whose only weights are a pickle that would create `marker`."""
    folder = models_root / "pickled"
    shutil.copytree(models_root / MODEL_NAME, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_TouchOnLoad(marker)))


def _wait_state(client: TestClient, name: str, states: tuple[str, ...], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/models/{name}").json()
        if record["state"] in states or time.monotonic() > deadline:
            return record
        time.sleep(0.1)


def test_register_reuses_shipped_trigger(client: TestClient, manifest: dict) -> None:
    record = client.get(f"/models/{MODEL_NAME}").json()
    assert record["state"] == "ready"
    assert record["verdict"] == "backdoored"
    assert record["fingerprint"] == manifest["fingerprint"]
    assert record["input_threshold"]["rule"] == "neyman-pearson"
    assert record["statistics"]["kl_mean"] > record["statistics"]["kl_mean_threshold"]


def test_register_location_header(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    response = client.post("/models", json={"name": "copy-1", "source": MODEL_NAME})
    assert response.status_code == 202
    assert response.headers["location"] == "/models/copy-1"


def test_register_same_content_is_harmless(client: TestClient) -> None:
    again = client.post("/models", json={"name": MODEL_NAME, "source": f"./{MODEL_NAME}/"})
    assert again.status_code == 200
    assert again.headers["location"] == f"/models/{MODEL_NAME}"
    assert again.json()["state"] == "ready"


def test_register_other_content_conflicts(client: TestClient, models_root: Path) -> None:
    other = models_root / "other"
    shutil.copytree(models_root / MODEL_NAME, other)
    config_path = other / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["beta_end"] = 0.021
    config_path.write_text(json.dumps(config))
    response = client.post("/models", json={"name": MODEL_NAME, "source": "other"})
    assert response.status_code == 409
    assert response.json()["code"] == "model_conflict"


def test_list_and_trigger_png(client: TestClient) -> None:
    names = [model["name"] for model in client.get("/models").json()["models"]]
    assert names == [MODEL_NAME]
    png = client.get(f"/models/{MODEL_NAME}/trigger.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG_SIGNATURE)


def test_delete_keeps_files(client: TestClient, models_root: Path) -> None:
    assert f'terdguard_guard_threshold{{model="{MODEL_NAME}"}}' in client.get("/metrics").text
    assert client.delete(f"/models/{MODEL_NAME}").status_code == 204
    assert f'terdguard_guard_threshold{{model="{MODEL_NAME}"}}' not in client.get("/metrics").text
    assert client.get(f"/models/{MODEL_NAME}").json()["code"] == "model_not_found"
    assert client.delete(f"/models/{MODEL_NAME}").status_code == 404
    assert (models_root / MODEL_NAME / "unet" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"name": "x", "source": "../models/sparse"}, 422, "invalid_source"),
        ({"name": "x", "source": "sparse/../../etc"}, 422, "invalid_source"),
        ({"name": "x", "source": "/etc"}, 422, "invalid_source"),
        ({"name": "x", "source": "escape"}, 422, "invalid_source"),
        ({"name": "x", "source": "absent"}, 422, "source_not_found"),
        ({"name": "x", "source": "no-scheduler"}, 422, "missing_config"),
        ({"name": "x", "source": "latent"}, 422, "unsupported_model"),
        ({"name": "Bad Name", "source": "sparse"}, 422, "validation_error"),
        ({"name": "x" * 65, "source": "sparse"}, 422, "validation_error"),
        ({"name": "x", "source": "sparse\nx"}, 422, "validation_error"),
        ({"name": "x", "source": "sparse", "scan": {"profile": "slow"}}, 422, "validation_error"),
        ({"name": "x"}, 422, "validation_error"),
    ],
)
def test_register_rejects_bad_source(make_client: Callable[..., TestClient], models_root: Path, tmp_path: Path,
                                     body: dict, status: int, code: str) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(models_root / MODEL_NAME, outside)
    (models_root / "escape").symlink_to(outside)
    shutil.copytree(models_root / MODEL_NAME, models_root / "no-scheduler")
    shutil.rmtree(models_root / "no-scheduler" / "scheduler")
    shutil.copytree(models_root / MODEL_NAME, models_root / "latent")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    (models_root / "latent" / "model_index.json").write_text(json.dumps(index))
    client = make_client()

    response = client.post("/models", json=body)
    assert response.status_code == status
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["code"] == code
    assert problem["status"] == status
    assert problem["type"] == f"urn:terdguard:problem:{code}"
    assert str(models_root.resolve()) not in problem["detail"]
    assert problem["instance"] == "/models"
    assert problem["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    assert client.get("/models").json()["models"] == []


def test_register_never_unpickles(make_client: Callable[..., TestClient], models_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled-marker"
    probe = tmp_path / "probe-marker"
    pickle.loads(pickle.dumps(_TouchOnLoad(probe)))
    assert probe.exists(), "the payload must really run when unpickled, or this test proves nothing"
    _pickle_only_model(models_root, marker)
    client = make_client()

    response = client.post("/models", json={"name": "pickled", "source": "pickled"})
    assert response.status_code == 422
    assert response.json()["code"] == "unsafe_weights"
    assert "pickle" in response.json()["detail"]
    assert not marker.exists()


def test_rescan_runs_real_scan(client: TestClient) -> None:
    response = client.post(f"/models/{MODEL_NAME}/scan?wait=true", json={"seed": 3})
    assert response.status_code == 202
    record = response.json()
    assert record["state"] == "ready"
    assert record["scan"] == {"profile": "fast", "seed": 3}
    assert record["statistics"]["seed"] == 3
    assert record["progress"]["iterations"] == record["progress"]["planned"] > 0
    metrics = client.get("/metrics").text
    assert 'terdguard_scans_total{outcome="backdoored",profile="fast"} 1.0' in metrics or \
        'terdguard_scans_total{outcome="clean",profile="fast"} 1.0' in metrics


def test_rescan_updates_same_files(client: TestClient) -> None:
    response = client.post("/models?wait=true", json={"name": "twin", "source": MODEL_NAME})
    assert response.json()["state"] == "ready"

    response = client.post(f"/models/{MODEL_NAME}/scan?wait=true", json={"seed": 4})
    assert response.json()["state"] == "ready"

    twin = client.get("/models/twin").json()
    assert twin["state"] == "ready"
    assert twin["statistics"] == response.json()["statistics"]
    assert twin["statistics"]["seed"] == 4


def test_scan_progress_visible(make_client: Callable[..., TestClient], models_root: Path, tmp_path: Path) -> None:
    client = make_client(reversion_configs={"fast": short_config(stage1_iterations=4000)},
                         shipped_triggers_dir=tmp_path / "no-shipped-triggers")
    response = client.post("/models", json={"name": MODEL_NAME, "source": MODEL_NAME})
    assert response.status_code == 202
    assert response.json()["state"] in ("queued", "scanning")
    record = _wait_state(client, MODEL_NAME, ("scanning",))
    deadline = time.monotonic() + 30
    while record["progress"]["iterations"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        record = client.get(f"/models/{MODEL_NAME}").json()
    assert record["state"] == "scanning"
    assert 0 < record["progress"]["iterations"] < record["progress"]["planned"]

    busy = client.post("/generate", json={"model": MODEL_NAME, "num_images": 1})
    assert busy.status_code == 503
    assert busy.json()["code"] == "model_not_ready"
    assert int(busy.headers["retry-after"]) > 0
    assert client.get(f"/v2/models/{MODEL_NAME}/ready").status_code == 503
    assert client.get(f"/models/{MODEL_NAME}/trigger.png").status_code == 503


def test_missing_source_fails_at_restart(make_client: Callable[..., TestClient], models_root: Path) -> None:
    first = make_client()
    assert first.post("/models", json={"name": MODEL_NAME, "source": MODEL_NAME}).status_code == 202
    first.__exit__(None, None, None)
    shutil.rmtree(models_root / MODEL_NAME)

    client = make_client()
    record = client.get(f"/models/{MODEL_NAME}").json()
    assert record["state"] == "failed"
    assert "not found" in record["error"]
    failed = client.post("/generate", json={"model": MODEL_NAME, "num_images": 1})
    assert failed.status_code == 409
    assert failed.json()["code"] == "model_failed"
    assert client.get("/readyz").status_code == 200
