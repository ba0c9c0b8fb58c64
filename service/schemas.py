"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from terdguard.core.reversion import PROFILES

from .settings import Policy
from .tensors import TensorObject

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# Printable characters only: no NUL, newline or other control characters in a path.
SOURCE_PATTERN = r"^[^\x00-\x1f\x7f]+$"

Sampler = Literal["ddim", "ddpm"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScanOptions(Strict):
    """How to scan: reversion profile and seed; unset fields take the server's defaults."""

    profile: str | None = Field(default=None, description="reversion profile: fast or paper")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)

    @field_validator("profile")
    @classmethod
    def _profile_known(cls, value: str | None) -> str | None:
        if value is not None and value not in PROFILES:
            raise ValueError(f"profile invalid: got {value!r}, expected one of {PROFILES}")
        return value


class ModelCreate(Strict):
    name: str = Field(pattern=MODEL_NAME_PATTERN, description="lower-case name, 1 to 64 characters")
    source: str = Field(min_length=1, max_length=1024, pattern=SOURCE_PATTERN,
                        description="model folder, relative to the server's models root")
    scan: ScanOptions | None = None


class Progress(BaseModel):
    iterations: int
    planned: int


class InputThreshold(BaseModel):
    rule: str
    llr_threshold: float
    false_positive_rate: float


class ModelPublic(BaseModel):
    name: str
    source: str
    fingerprint: str
    state: Literal["queued", "scanning", "ready", "failed"]
    verdict: Literal["backdoored", "clean"] | None
    progress: Progress
    scan: ScanOptions
    statistics: dict[str, Any] | None
    input_threshold: InputThreshold | None
    error: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    scanned_at: datetime.datetime | None
    links: dict[str, str]


class ModelList(BaseModel):
    models: list[ModelPublic]


class GenerateRequest(Strict):
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    num_images: int | None = Field(default=None, ge=1, description="server-drawn noise; exclusive with latents")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="seed for server noise, resampling and DDPM")
    latents: TensorObject | None = Field(default=None, description="caller initial noise x_T, shape (B, C, H, W)")
    num_inference_steps: int | None = Field(default=None, ge=1)
    sampler: Sampler = "ddim"
    guard: Policy | None = Field(default=None, description="guard policy; default: the server's")


class DetectRequest(Strict):
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    latents: TensorObject


class DecisionPublic(BaseModel):
    index: int
    llr: float
    threshold: float
    verdict: Literal["poisoned", "clean"]
    action: Literal["passed", "rejected", "resampled", "flagged"]


class Timings(BaseModel):
    guard_seconds: float
    sampler_seconds: float
    total_seconds: float


class GenerateResponse(BaseModel):
    model: str
    policy: Policy
    sampler: Sampler
    num_inference_steps: int
    seed: int
    images: list[str] = Field(description="base64 PNG, one per sample")
    decisions: list[DecisionPublic]
    timings: Timings


class DetectResponse(BaseModel):
    model: str
    policy: Policy
    decisions: list[DecisionPublic]
    timings: Timings


class SampleRequest(Strict):
    """Body of the sampler role's `POST /v1/sample`."""

    source: str = Field(min_length=1, max_length=1024, pattern=SOURCE_PATTERN)
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    latents: TensorObject
    sampler: Sampler = "ddim"
    num_inference_steps: int = Field(ge=1)
    seed: int = Field(ge=0, le=2**63 - 1)


class SampleResponse(BaseModel):
    images: list[str]
    seconds: float


class Health(BaseModel):
    status: Literal["ok", "starting", "unavailable"]
    detail: str | None = None
