"""End to end: a real uvicorn guard on 127.0.0.1, a zoo model, poisoned and clean requests, a restart."""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from terdguard.service.demo import run_demo
from terdguard.service.tensors import encode_tensor

from .conftest import ZOO_MODEL
from .service_helpers import ServerProcess, metric_sum, noise, wait_for_metric

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def zoo_root(tmp_path: Path, zoo_model_dir: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(zoo_model_dir, root / ZOO_MODEL)
    return root


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def _guard_env(tmp_path: Path, models_root: Path, shipped: Path) -> dict[str, str]:
    return {
        "TERDGUARD_MODELS_ROOT": str(models_root), "TERDGUARD_DATA_DIR": str(tmp_path / "data"),
        "TERDGUARD_SHIPPED_TRIGGERS_DIR": str(shipped), "TERDGUARD_TORCH_THREADS": "1",
        "TERDGUARD_DEFAULT_NUM_INFERENCE_STEPS": "4",
    }


def _wait_ready(client: httpx.Client, name: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/models/{name}").json()
        if record["state"] in ("ready", "failed") or time.monotonic() > deadline:
            return record
        time.sleep(0.2)


def test_guard_end_to_end(tmp_path: Path, zoo_root: Path, shipped_triggers: Path, servers: list[ServerProcess],
                          true_trigger: tuple[torch.Tensor, torch.Tensor]) -> None:
    log = tmp_path / "server.log"
    guard = ServerProcess(_guard_env(tmp_path, zoo_root, shipped_triggers), log_path=log).start()
    servers.append(guard)
    trigger_mean, trigger_std = true_trigger
    eps = noise(1, 21, tuple(trigger_mean.shape))
    poisoned = {"model": ZOO_MODEL, "latents": encode_tensor(trigger_mean + trigger_std * eps)}
    clean = {"model": ZOO_MODEL, "latents": encode_tensor(eps), "num_inference_steps": 4}

    with httpx.Client(base_url=guard.url, timeout=60.0) as client:
        # 1. Register, wait for the scan, and check both kinds of noise.
        registered = client.post("/models", json={"name": ZOO_MODEL, "source": ZOO_MODEL})
        assert registered.status_code == 202
        assert registered.headers["location"] == f"/models/{ZOO_MODEL}"
        record = _wait_ready(client, ZOO_MODEL)
        assert record["state"] == "ready"
        assert record["verdict"] == "backdoored"
        assert client.get("/readyz").status_code == 200

        rejected = client.post("/generate", json=poisoned)
        assert rejected.status_code == 403
        assert rejected.json()["code"] == "guard_rejected"
        accepted = client.post("/generate", json=clean)
        assert accepted.status_code == 200
        assert base64.b64decode(accepted.json()["images"][0]).startswith(PNG_SIGNATURE)

        # 2. The demo command against the same server.
        assert run_demo(guard.url, ZOO_MODEL, tmp_path / "demo", num_inference_steps=4, echo=lambda line: None) == 0
        assert (tmp_path / "demo" / "clean.png").read_bytes().startswith(PNG_SIGNATURE)
        assert (tmp_path / "demo" / "trigger.png").is_file()

        metrics = client.get("/metrics").text
        assert metric_sum(metrics, 'terdguard_guard_decisions_total{action="rejected"') == 2.0
        assert metric_sum(metrics, 'terdguard_guard_decisions_total{action="passed"') == 2.0
        assert metric_sum(metrics, 'terdguard_http_requests_total{method="POST",route="/generate",status="403"') == 2.0

    # 3. Restart without shipped triggers: the stored trigger is reused, no scan runs.
    guard.stop()
    restarted = ServerProcess(_guard_env(tmp_path, zoo_root, tmp_path / "no-shipped"), log_path=log).start()
    servers.append(restarted)
    with httpx.Client(base_url=restarted.url, timeout=60.0) as client:
        assert client.get("/readyz").status_code == 200
        after = client.get(f"/models/{ZOO_MODEL}").json()
        assert after["state"] == "ready"
        assert after["statistics"] == record["statistics"]
        assert client.post("/generate", json=poisoned).status_code == 403
        metrics = client.get("/metrics").text
        assert metric_sum(metrics, "terdguard_scans_total") == 0.0
        assert 'terdguard_models{state="ready"} 1.0' in metrics


def test_disconnect_stops_generation(tmp_path: Path, zoo_root: Path, shipped_triggers: Path,
                                     servers: list[ServerProcess]) -> None:
    log = tmp_path / "server.log"
    guard = ServerProcess(_guard_env(tmp_path, zoo_root, shipped_triggers), log_path=log).start()
    servers.append(guard)
    assert httpx.post(f"{guard.url}/models?wait=true", json={"name": ZOO_MODEL, "source": ZOO_MODEL},
                      timeout=60.0).json()["state"] == "ready"

    # 1000 DDPM steps on 8 images take several seconds on a CPU, so the client gives up long before the end.
    slow = {"model": ZOO_MODEL, "num_images": 8, "sampler": "ddpm", "num_inference_steps": 1000}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{guard.url}/generate", json=slow, timeout=0.5)

    stopped = 'terdguard_http_requests_total{method="POST",route="/generate",status="499"'
    assert wait_for_metric(guard.url, stopped, 1.0) == 1.0
    assert "generation stopped" in log.read_text()
