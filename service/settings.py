"""Typed service settings, read from `TERDGUARD_*` environment variables and validated at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

import httpx
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from terdguard.core.reversion import PROFILES
from terdguard.core.scoring import THRESHOLD_RULES

from .zoo import shipped_triggers_dir, zoo_models_dir

Policy = Literal["reject", "resample", "monitor"]
Device = Literal["auto", "cpu", "cuda"]

GUARD_POLICIES: tuple[str, ...] = get_args(Policy)
DATABASE_FILE = "registry.sqlite3"
TRIGGERS_FOLDER = "triggers"


class Settings(BaseSettings):
    """Everything an operator can set; each field is the env var `TERDGUARD_<FIELD NAME>`."""

    model_config = SettingsConfigDict(env_prefix="TERDGUARD_", env_ignore_empty=True, frozen=True, extra="ignore")

    # Where models and state live.
    models_root: Path = Field(default_factory=zoo_models_dir, description="folder every model source is inside")
    data_dir: Path = Field(default=Path("terdguard-data"), description="folder for the registry and triggers")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite in data_dir")
    models_file: Path | None = Field(default=None, description="JSON list of {name, source} to register at start")
    register_zoo: bool | None = Field(
        default=None, description="register every zoo model at start-up; default: whether models_root is the zoo"
    )
    shipped_triggers_dir: Path | None = Field(
        default_factory=shipped_triggers_dir, description="reversed triggers copied into the store when they match"
    )

    # Access keys; unset means the endpoints they protect are open.
    admin_key: SecretStr | None = None
    inference_key: SecretStr | None = None
    sampler_key: SecretStr | None = Field(
        default=None, description="key the guard sends to a remote sampler, and the key a sampler requires"
    )

    # Scanning and guarding.
    device: Device = "auto"
    scan_profile: str = "fast"
    scan_seed: int = 0
    guard_policy: Policy = "reject"
    false_positive_rate: float = Field(default=1e-3, gt=0.0, lt=0.5)
    threshold_rule: str = "neyman-pearson"
    kl_mean_threshold: float | None = Field(default=None, gt=0.0)
    kl_var_threshold: float | None = Field(default=None, gt=0.0)
    torch_threads: int | None = Field(default=None, ge=1, description="torch CPU threads; default: all cores but one")

    # Sampling.
    sampler_url: str | None = None
    sampler_timeout: float = Field(default=120.0, gt=0.0, description="seconds for one remote sampler call")
    default_num_inference_steps: int = Field(default=50, ge=1)

    # Limits.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_images_per_request: int = Field(default=16, ge=1)
    max_concurrent_generations: int = Field(default=2, ge=1)
    max_queue: int = Field(default=16, ge=0, description="generation requests allowed to wait for a free slot")
    wait_timeout: float = Field(default=600.0, gt=0.0, description="longest ?wait=true waits for a scan, in seconds")

    @field_validator("models_root")
    @classmethod
    def _models_root_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"models_root not found: {value} is not a directory")
        return value.resolve()

    @field_validator("models_file")
    @classmethod
    def _models_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"models_file not found: {value}")
        return value

    @field_validator("sampler_url")
    @classmethod
    def _sampler_url_is_http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"sampler_url invalid: got {value!r}, expected an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("scan_profile", "threshold_rule")
    @classmethod
    def _core_choice_known(cls, value: str, info: ValidationInfo) -> str:
        choices = {"scan_profile": PROFILES, "threshold_rule": THRESHOLD_RULES}[str(info.field_name)]
        if value not in choices:
            raise ValueError(f"{info.field_name} invalid: got {value!r}, expected one of {choices}")
        return value

    @model_validator(mode="after")
    def _zoo_inside_root(self) -> Settings:
        if self.register_zoo and not zoo_models_dir().resolve().is_relative_to(self.models_root):
            raise ValueError(
                f"register_zoo invalid: the zoo at {zoo_models_dir()} is outside models_root {self.models_root}; "
                "unset TERDGUARD_REGISTER_ZOO or point TERDGUARD_MODELS_ROOT at a folder that contains it"
            )
        return self

    @property
    def registers_zoo(self) -> bool:
        """Whether start-up registers the zoo: as set, or when unset, whether models_root is the zoo."""
        if self.register_zoo is not None:
            return self.register_zoo
        return self.models_root == zoo_models_dir().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / DATABASE_FILE).resolve()}"

    @property
    def triggers_dir(self) -> Path:
        return self.data_dir / TRIGGERS_FOLDER

    @property
    def resolved_torch_threads(self) -> int:
        """Threads for torch: as set, or all cores but one so the event loop keeps a core."""
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) - 1)
