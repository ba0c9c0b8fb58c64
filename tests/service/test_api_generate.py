"""/generate and /detect: bad inputs, the three guard policies, and API keys."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator

import pytest
import torch
from fastapi.testclient import TestClient

from terdguard.service.tensors import encode_tensor

from .conftest import MODEL_NAME
from .service_helpers import noise, tensor_object

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ADMIN_KEY = "admin-key-for-tests"
INFERENCE_KEY = "inference-key-for-tests"


def _poisoned(true_trigger: tuple[torch.Tensor, torch.Tensor], batch: int = 1, seed: int = 5) -> torch.Tensor:
    trigger_mean, trigger_std = true_trigger
    return trigger_mean + trigger_std * noise(batch, seed, tuple(trigger_mean.shape))


def _body_text(data: str, shape: str = "[1, 1, 16, 16]") -> str:
    return f'{{"model": "{MODEL_NAME}", "latents": {{"shape": {shape}, "datatype": "FP32", "data": {data}}}}}'


CLEAN_LIST = json.dumps([0.0] * 256)
BAD_REQUESTS = [
    # (case, raw JSON body, status, code)
    ("wrong shape", _body_text(json.dumps([0.0] * 768), "[1, 3, 16, 16]"), 422, "invalid_latents"),
    ("three dims", _body_text(json.dumps([0.0] * 256), "[1, 16, 16]"), 422, "invalid_latents"),
    ("length mismatch", _body_text(json.dumps([0.0] * 255)), 422, "invalid_latents"),
    ("NaN token", _body_text("[NaN" + CLEAN_LIST[4:]), 422, "validation_error"),
    ("Infinity token", _body_text("[Infinity" + CLEAN_LIST[4:]), 422, "validation_error"),
    ("-Infinity token", _body_text("[-Infinity" + CLEAN_LIST[4:]), 422, "validation_error"),
    ("string NaN", _body_text('["NaN"' + CLEAN_LIST[4:]), 422, "validation_error"),
    ("string number", _body_text('["0.5"' + CLEAN_LIST[4:]), 422, "validation_error"),
    ("huge number", _body_text("[1e400" + CLEAN_LIST[4:]), 422, "validation_error"),
    ("float32 overflow", _body_text("[1e39" + CLEAN_LIST[4:]), 422, "invalid_latents"),
    ("base64 NaN", _body_text(json.dumps(base64.b64encode(torch.full((256,), float("nan")).numpy().tobytes())
                                         .decode())), 422, "invalid_latents"),
    ("base64 garbage", _body_text('"@@@"'), 422, "invalid_latents"),
    ("FP16 datatype", _body_text(CLEAN_LIST).replace('"FP32"', '"FP16"'), 422, "validation_error"),
    ("unknown model", json.dumps({"model": "nobody", "num_images": 1}), 404, "model_not_found"),
    ("bad model name", json.dumps({"model": "../x", "num_images": 1}), 422, "validation_error"),
    ("too many images", json.dumps({"model": MODEL_NAME, "num_images": 5}), 422, "invalid_request"),
    ("batch too large", _body_text(json.dumps([0.0] * 1280), "[5, 1, 16, 16]"), 422, "invalid_request"),
    ("latents and num_images", _body_text(CLEAN_LIST)[:-1] + ', "num_images": 1}', 422, "invalid_request"),
    ("steps too many", json.dumps({"model": MODEL_NAME, "num_inference_steps": 1001}), 422, "invalid_request"),
    ("steps zero", json.dumps({"model": MODEL_NAME, "num_inference_steps": 0}), 422, "validation_error"),
    ("unknown sampler", json.dumps({"model": MODEL_NAME, "sampler": "euler"}), 422, "validation_error"),
    ("unknown field", json.dumps({"model": MODEL_NAME, "cfg": 7}), 422, "validation_error"),
    ("weaker policy", json.dumps({"model": MODEL_NAME, "guard": "monitor"}), 403, "guard_policy_forbidden"),
    ("not JSON", "{model", 422, "validation_error"),
    ("oversized body", json.dumps({"model": MODEL_NAME, "pad": "x" * 70_000}), 413, "payload_too_large"),
]


@pytest.fixture
def guard(make_client: Callable[..., TestClient]) -> TestClient:
    client = make_client(max_images_per_request=4, max_body_bytes=65_536)
    assert client.post("/models", json={"name": MODEL_NAME, "source": MODEL_NAME}).json()["state"] == "ready"
    return client


def test_bad_json_detail_names_fix(guard: TestClient) -> None:
    response = guard.post("/generate", content=b'{"model": ', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "at character 10" in response.json()["detail"]
    assert "send the body as one JSON object" in response.json()["detail"]


def test_non_json_content_type_detail_names_fix(guard: TestClient) -> None:
    response = guard.post("/generate", content=b"model=x", headers={"content-type": "text/plain"})
    assert response.status_code == 422
    assert "'text/plain'" in response.json()["detail"]
    assert "content-type application/json" in response.json()["detail"]


@pytest.mark.parametrize(("case", "body", "status", "code"), BAD_REQUESTS, ids=[row[0] for row in BAD_REQUESTS])
def test_generate_rejects_bad_input(guard: TestClient, case: str, body: str, status: int, code: str) -> None:
    response = guard.post("/generate", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["code"] == code
    assert response.headers["content-type"] == "application/problem+json"
    assert "Traceback" not in response.text
    assert "images" not in problem


def test_validation_error_lists_fields(guard: TestClient) -> None:
    response = guard.post("/generate", content=_body_text('["a", "b"' + CLEAN_LIST[9:]),
                          headers={"content-type": "application/json"})
    errors = response.json()["errors"]
    assert [error["loc"][-1] for error in errors] == [0, 1]
    assert all("input" not in error for error in errors)


def test_streamed_body_counted(guard: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 4096

    response = guard.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_poisoned_latents_rejected(guard: TestClient, true_trigger: tuple[torch.Tensor, torch.Tensor]) -> None:
    x_T = torch.cat([noise(1, 0), _poisoned(true_trigger)])
    response = guard.post("/generate", json={"model": MODEL_NAME, "latents": tensor_object(x_T)})
    assert response.status_code == 403
    problem = response.json()
    assert problem["code"] == "guard_rejected"
    assert [d["verdict"] for d in problem["decisions"]] == ["clean", "poisoned"]
    assert [d["action"] for d in problem["decisions"]] == ["passed", "rejected"]
    assert problem["decisions"][1]["llr"] > problem["decisions"][1]["threshold"]
    metrics = guard.get("/metrics").text
    rejected = f'terdguard_guard_decisions_total{{action="rejected",model="{MODEL_NAME}",verdict="poisoned"}} 1.0'
    assert rejected in metrics
    assert f'terdguard_generation_duration_seconds_count{{model="{MODEL_NAME}"' not in metrics


def test_clean_latents_generate_images(guard: TestClient) -> None:
    x_T = noise(2, 1)
    response = guard.post("/generate", json={"model": MODEL_NAME, "latents": encode_tensor(x_T), "sampler": "ddpm",
                                             "num_inference_steps": 3, "seed": 9})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 2
    assert all(base64.b64decode(image).startswith(PNG_SIGNATURE) for image in body["images"])
    assert [d["action"] for d in body["decisions"]] == ["passed", "passed"]
    assert body["sampler"] == "ddpm"
    assert body["num_inference_steps"] == 3
    timings = body["timings"]
    assert 0 < timings["guard_seconds"] < timings["total_seconds"]
    assert 0 < timings["sampler_seconds"] <= timings["total_seconds"]


def test_server_noise_is_seeded(guard: TestClient) -> None:
    request = {"model": MODEL_NAME, "num_images": 2, "seed": 11, "num_inference_steps": 2}
    first, second = guard.post("/generate", json=request).json(), guard.post("/generate", json=request).json()
    assert first["images"] == second["images"]
    assert first["seed"] == 11
    assert len(first["decisions"]) == 2


def test_resample_replaces_poisoned(guard: TestClient, true_trigger: tuple[torch.Tensor, torch.Tensor]) -> None:
    body = {"model": MODEL_NAME, "latents": tensor_object(_poisoned(true_trigger)), "guard": "resample", "seed": 2}
    response = guard.post("/generate", json=body)
    assert response.status_code == 200
    decision = response.json()["decisions"][0]
    assert (decision["verdict"], decision["action"]) == ("poisoned", "resampled")
    assert len(response.json()["images"]) == 1


def test_monitor_generates_and_flags(make_client: Callable[..., TestClient],
                                     true_trigger: tuple[torch.Tensor, torch.Tensor]) -> None:
    client = make_client(guard_policy="monitor")
    client.post("/models", json={"name": MODEL_NAME, "source": MODEL_NAME})
    response = client.post("/generate", json={"model": MODEL_NAME, "latents": tensor_object(_poisoned(true_trigger))})
    assert response.status_code == 200
    assert response.json()["decisions"][0]["action"] == "flagged"
    assert len(response.json()["images"]) == 1


def test_detect_returns_decisions(guard: TestClient, true_trigger: tuple[torch.Tensor, torch.Tensor]) -> None:
    x_T = torch.cat([noise(1, 4), _poisoned(true_trigger)])
    response = guard.post("/detect", json={"model": MODEL_NAME, "latents": tensor_object(x_T)})
    assert response.status_code == 200
    body = response.json()
    assert [d["verdict"] for d in body["decisions"]] == ["clean", "poisoned"]
    assert body["timings"]["sampler_seconds"] == 0.0


def test_zero_rule_threshold(make_client: Callable[..., TestClient]) -> None:
    client = make_client(threshold_rule="zero")
    record = client.post("/models", json={"name": MODEL_NAME, "source": MODEL_NAME}).json()
    assert record["input_threshold"] == {"rule": "zero", "llr_threshold": 0.0, "false_positive_rate": 1e-3}


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        ("post", "/generate", {}, 401, "unauthorized"),
        ("post", "/generate", {"Authorization": "Bearer wrong"}, 401, "unauthorized"),
        ("post", "/generate", {"X-API-Key": "wrong"}, 401, "unauthorized"),
        ("post", "/generate", {"Authorization": f"Basic {INFERENCE_KEY}"}, 401, "unauthorized"),
        ("post", "/generate", {"Authorization": f"Bearer {INFERENCE_KEY}"}, 200, None),
        ("post", "/generate", {"X-API-Key": INFERENCE_KEY}, 200, None),
        ("post", "/generate", {"X-API-Key": ADMIN_KEY}, 200, None),
        ("post", "/detect", {}, 401, "unauthorized"),
        ("post", "/models", {}, 401, "unauthorized"),
        ("post", "/models", {"X-API-Key": INFERENCE_KEY}, 403, "forbidden"),
        ("post", "/models", {"Authorization": f"Bearer {ADMIN_KEY}"}, 200, None),
        ("delete", f"/models/{MODEL_NAME}", {"X-API-Key": "wrong"}, 401, "unauthorized"),
        ("post", f"/models/{MODEL_NAME}/scan", {"X-API-Key": INFERENCE_KEY}, 403, "forbidden"),
        ("get", f"/models/{MODEL_NAME}", {}, 200, None),
    ],
)
def test_api_keys(make_client: Callable[..., TestClient], method: str, path: str, headers: dict[str, str],
                  status: int, code: str | None) -> None:
    client = make_client(admin_key=ADMIN_KEY, inference_key=INFERENCE_KEY)
    registered = client.post("/models", json={"name": MODEL_NAME, "source": MODEL_NAME},
                             headers={"X-API-Key": ADMIN_KEY})
    assert registered.status_code == 202
    bodies = {"/generate": {"model": MODEL_NAME, "num_images": 1, "num_inference_steps": 1},
              "/detect": {"model": MODEL_NAME, "latents": tensor_object(noise(1))},
              "/models": {"name": MODEL_NAME, "source": MODEL_NAME}}
    kwargs = {"json": bodies[path]} if path in bodies else {}
    response = client.request(method.upper(), path, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["code"] == code
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
