"""The guard with a remote sampler: a real `serve --role sampler` subprocess, and its failure modes."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from terdguard.service.tensors import encode_tensor

from .conftest import MODEL_NAME
from .service_helpers import ServerProcess, free_port, metric_sum, noise, wait_for_metric

SAMPLER_KEY = "sampler-key-for-tests"


@pytest.fixture(scope="module")
def sampler(tmp_path_factory: pytest.TempPathFactory, zoo_model_dir: Path) -> Iterator[ServerProcess]:
    """One sampler server for the module, with its own models root holding the same model copy."""
    tmp_path = tmp_path_factory.mktemp("sampler")
    models_root = tmp_path / "models"
    shutil.copytree(zoo_model_dir, models_root / MODEL_NAME)
    env = {"TERDGUARD_MODELS_ROOT": str(models_root), "TERDGUARD_DATA_DIR": str(tmp_path / "sampler-data"),
           "TERDGUARD_SAMPLER_KEY": SAMPLER_KEY, "TERDGUARD_TORCH_THREADS": "1"}
    server = ServerProcess(env, role="sampler", log_path=tmp_path / "sampler.log").start()
    yield server
    server.stop()


def _guard(make_client: Callable[..., TestClient], url: str, **overrides: object) -> TestClient:
    client = make_client(**{"sampler_url": url, "sampler_key": SAMPLER_KEY, **overrides})
    assert client.post("/models", json={"name": MODEL_NAME, "source": MODEL_NAME}).json()["state"] == "ready"
    return client


def test_remote_sampler_generates(make_client: Callable[..., TestClient], sampler: ServerProcess) -> None:
    client = _guard(make_client, sampler.url)
    response = client.post("/generate", json={"model": MODEL_NAME, "latents": encode_tensor(noise(2, 3)),
                                              "num_inference_steps": 3, "sampler": "ddpm", "seed": 1})
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 2
    assert base64.b64decode(response.json()["images"][0]).startswith(b"\x89PNG")


def test_sampler_requires_key(sampler: ServerProcess, manifest: dict) -> None:
    body = {"source": MODEL_NAME, "fingerprint": manifest["fingerprint"], "latents": encode_tensor(noise(1)),
            "num_inference_steps": 2, "seed": 0}
    missing = httpx.post(f"{sampler.url}/v1/sample", json=body, timeout=30)
    assert missing.status_code == 401
    wrong_model = httpx.post(f"{sampler.url}/v1/sample", json={**body, "fingerprint": "0" * 64}, timeout=30,
                             headers={"Authorization": f"Bearer {SAMPLER_KEY}"})
    assert wrong_model.status_code == 409
    assert wrong_model.json()["code"] == "model_changed"
    escape = httpx.post(f"{sampler.url}/v1/sample", json={**body, "source": "../models"}, timeout=30,
                        headers={"Authorization": f"Bearer {SAMPLER_KEY}"})
    assert escape.json()["code"] == "invalid_source"


def test_sampler_wrong_key_gives_502(make_client: Callable[..., TestClient], sampler: ServerProcess) -> None:
    client = _guard(make_client, sampler.url, sampler_key="wrong-key")
    response = client.post("/generate", json={"model": MODEL_NAME, "num_images": 1, "num_inference_steps": 2})
    assert response.status_code == 502
    assert response.json()["code"] == "sampler_unavailable"
    assert "401" in response.json()["detail"]


def test_sampler_unreachable_gives_502(make_client: Callable[..., TestClient]) -> None:
    client = _guard(make_client, f"http://127.0.0.1:{free_port()}")
    response = client.post("/generate", json={"model": MODEL_NAME, "num_images": 1})
    assert response.status_code == 502
    assert response.json()["code"] == "sampler_unavailable"


def test_sampler_slow_gives_504(make_client: Callable[..., TestClient], sampler: ServerProcess) -> None:
    stopped = 'terdguard_http_requests_total{method="POST",route="/v1/sample",status="499"'
    before = metric_sum(httpx.get(f"{sampler.url}/metrics", timeout=10).text, stopped)
    client = _guard(make_client, sampler.url, sampler_timeout=0.05)
    response = client.post("/generate", json={"model": MODEL_NAME, "num_images": 8, "sampler": "ddpm",
                                              "num_inference_steps": 1000})
    assert response.status_code == 504
    assert response.json()["code"] == "sampler_timeout"

    # The guard closed the connection, so the sampler stops the generation instead of finishing it.
    assert wait_for_metric(sampler.url, stopped, before + 1) == before + 1
