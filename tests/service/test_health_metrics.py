"""Health and readiness, request ids, the catch-all error handler, and /metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from terdguard.service.app import create_app

from .conftest import MODEL_NAME, short_config


def test_health_endpoints(client: TestClient) -> None:
    for path in ("/healthz", "/v2/health/live", "/readyz", "/v2/health/ready", f"/v2/models/{MODEL_NAME}/ready"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.json()["status"] == "ok"
    assert client.get("/v2/models/nobody/ready").json()["code"] == "model_not_found"


def test_readyz_waits_for_startup_scans(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps([{"name": MODEL_NAME, "source": MODEL_NAME}]))
    client = make_client(models_file=models_file, shipped_triggers_dir=tmp_path / "none",
                         reversion_configs={"fast": short_config(stage1_iterations=4000)})
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "starting", "detail": "1 start-up scans pending"}
    assert response.headers["retry-after"] == "5"

    # The start-up scan occupies the worker thread, and liveness still responds.
    started = time.perf_counter()
    assert client.get("/healthz").status_code == 200
    assert time.perf_counter() - started < 1.0


def test_readyz_after_startup_scan(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps([{"name": MODEL_NAME, "source": MODEL_NAME}]))
    client = make_client(models_file=models_file, shipped_triggers_dir=tmp_path / "none")
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.get("/readyz").status_code == 200
    assert client.get(f"/models/{MODEL_NAME}").json()["state"] == "ready"


def test_request_id_round_trip(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert generated != "bad id\twith spaces"
    assert len(generated) == 32
    problem = client.get("/models/nobody", headers={"X-Request-ID": "trace-7"}).json()
    assert problem["request_id"] == "trace-7"
    assert problem["instance"] == "/models/nobody"


def test_unknown_route_is_problem(client: TestClient) -> None:
    response = client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert client.put("/generate").json()["code"] == "method_not_allowed"


def test_unexpected_error_hides_traceback(make_settings: Callable[..., object]) -> None:
    app = create_app(make_settings())

    @app.get("/fails")
    def fails() -> None:
        raise RuntimeError("secret internal state")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/fails")
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert "secret internal state" not in response.text
    assert "Traceback" not in response.text


def test_metrics_use_route_templates(client: TestClient) -> None:
    client.get(f"/models/{MODEL_NAME}")
    client.get("/models/nobody")
    client.get("/no/such/route")
    client.post("/generate", json={"model": MODEL_NAME, "num_images": 1, "num_inference_steps": 2})
    text = client.get("/metrics").text
    assert 'terdguard_http_requests_total{method="GET",route="/models/{name}",status="200"} 1.0' in text
    assert 'terdguard_http_requests_total{method="GET",route="/models/{name}",status="404"} 1.0' in text
    assert 'route="unmatched"' in text
    assert "/models/nobody" not in text
    assert f'terdguard_guard_decisions_total{{action="passed",model="{MODEL_NAME}",verdict="clean"}} 1.0' in text
    assert f'terdguard_generation_duration_seconds_count{{model="{MODEL_NAME}",sampler="ddim"}} 1.0' in text
    assert f'terdguard_guard_llr_bucket{{le="-1000.0",model="{MODEL_NAME}"}}' in text
    assert f'terdguard_guard_threshold{{model="{MODEL_NAME}"}}' in text
    assert 'terdguard_models{state="ready"} 1.0' in text
    assert 'terdguard_queue_depth{queue="generate"} 0.0' in text
    assert 'terdguard_queue_depth{queue="scan"} 0.0' in text


def test_metrics_registry_per_app(make_client: Callable[..., TestClient]) -> None:
    first, second = make_client(), make_client()
    first.get("/healthz")
    assert 'terdguard_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in first.get("/metrics").text
    assert 'route="/healthz"' not in second.get("/metrics").text
