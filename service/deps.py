"""FastAPI dependencies: settings, the running services, and API key checks."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr

from .errors import Forbidden, Unauthorized
from .generation import GenerationGate, RemoteSampler
from .inference import InferenceService
from .metrics import Metrics
from .models_service import ModelService
from .registry import Registry
from .scanner import ScanWorker
from .settings import Settings
from .store import TriggerStore


@dataclass(frozen=True)
class Services:
    """The objects one running app shares between requests; built by the lifespan."""

    settings: Settings
    metrics: Metrics
    registry: Registry
    store: TriggerStore
    scanner: ScanWorker
    models: ModelService
    inference: InferenceService
    gate: GenerationGate
    remote: RemoteSampler | None


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_models(services: Annotated[Services, Depends(get_services)]) -> ModelService:
    return services.models


def get_inference(services: Annotated[Services, Depends(get_services)]) -> InferenceService:
    return services.inference


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]
ModelsDep = Annotated[ModelService, Depends(get_models)]
InferenceDep = Annotated[InferenceService, Depends(get_inference)]


def presented_key(request: Request) -> str | None:
    """Return the key from `Authorization: Bearer <key>` or `X-API-Key`, or None when neither is sent."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return request.headers.get("x-api-key") or None


def _matches(presented: str, key: SecretStr | None) -> bool:
    return key is not None and hmac.compare_digest(presented.encode(), key.get_secret_value().encode())


def _check(request: Request, accepted: tuple[SecretStr | None, ...], other: tuple[SecretStr | None, ...],
           operation: str) -> None:
    presented = presented_key(request)
    challenge = {"WWW-Authenticate": 'Bearer realm="terdguard"'}
    if presented is None:
        raise Unauthorized(f"API key missing: {operation} needs a key in 'Authorization: Bearer <key>' or "
                           "'X-API-Key'", headers=challenge)
    if any(_matches(presented, key) for key in accepted):
        return
    if any(_matches(presented, key) for key in other):
        raise Forbidden(f"API key not allowed: {operation} needs the admin key")
    raise Unauthorized(f"API key invalid: the key sent is not valid for {operation}", headers=challenge)


def require_admin(request: Request, settings: SettingsDep) -> None:
    """Require the admin key for registry changes, when one is set."""
    if settings.admin_key is not None:
        _check(request, (settings.admin_key,), (settings.inference_key,), "changing models")


def require_inference(request: Request, settings: SettingsDep) -> None:
    """Require the inference or the admin key for /generate and /detect, when an inference key is set."""
    if settings.inference_key is not None:
        _check(request, (settings.inference_key, settings.admin_key), (), "generation and detection")


def require_sampler(request: Request, settings: SettingsDep) -> None:
    """Require the sampler key on a sampler server, when one is set."""
    if settings.sampler_key is not None:
        _check(request, (settings.sampler_key,), (), "sampling")


AdminDep = Depends(require_admin)
InferenceKeyDep = Depends(require_inference)
SamplerKeyDep = Depends(require_sampler)
