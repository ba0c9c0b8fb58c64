"""Settings: environment parsing, defaults and start-up validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from terdguard.service.settings import Settings
from terdguard.service.zoo import zoo_models_dir


def test_settings_read_prefixed_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TERDGUARD_MODELS_ROOT", str(tmp_path))
    monkeypatch.setenv("TERDGUARD_GUARD_POLICY", "monitor")
    monkeypatch.setenv("TERDGUARD_FALSE_POSITIVE_RATE", "0.01")
    monkeypatch.setenv("TERDGUARD_ADMIN_KEY", "admin-secret")
    monkeypatch.setenv("TERDGUARD_MAX_QUEUE", "3")
    settings = Settings()
    assert settings.models_root == tmp_path.resolve()
    assert settings.guard_policy == "monitor"
    assert settings.false_positive_rate == 0.01
    assert settings.admin_key is not None and settings.admin_key.get_secret_value() == "admin-secret"
    assert settings.max_queue == 3


def test_settings_defaults_serve_the_zoo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.models_root == zoo_models_dir().resolve()
    assert settings.registers_zoo
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'terdguard-data' / 'registry.sqlite3'}"
    assert settings.threshold_rule == "neyman-pearson"
    assert settings.scan_profile == "fast"


def test_settings_other_root_skips_zoo(tmp_path: Path) -> None:
    assert not Settings(models_root=tmp_path).registers_zoo


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("false_positive_rate", 0.7),
        ("false_positive_rate", 0.0),
        ("threshold_rule", "median"),
        ("scan_profile", "slow"),
        ("guard_policy", "allow"),
        ("device", "tpu"),
        ("sampler_url", "ftp://127.0.0.1/"),
        ("kl_mean_threshold", -1.0),
        ("max_images_per_request", 0),
    ],
)
def test_settings_reject_invalid_value(field: str, value: object, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(models_root=tmp_path, **{field: value})


def test_settings_reject_missing_models_root(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="models_root not found"):
        Settings(models_root=tmp_path / "absent")


def test_settings_reject_zoo_outside_root(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="register_zoo invalid"):
        Settings(models_root=tmp_path, register_zoo=True)
