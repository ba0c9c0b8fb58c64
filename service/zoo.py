"""Locate the zoo that ships inside the installed package: its models and their reversed triggers.

The core package may or may not provide `zoo_model_dirs()` and `TRIGGERS_DIR`
yet, so each lookup falls back to reading the package folder directly.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"


def _zoo_package() -> Any:
    return importlib.import_module("terdguard.core.zoo")


def zoo_models_dir() -> Path:
    """Return the folder of the zoo's trained models, one subfolder each."""
    package = _zoo_package()
    models_dir = getattr(package, "MODELS_DIR", None)
    if models_dir is not None:
        return Path(models_dir)
    return Path(package.__file__).parent / "models"


def shipped_triggers_dir() -> Path | None:
    """Return the folder of reversed triggers shipped with the zoo, or None when the package has none."""
    triggers_dir = getattr(_zoo_package(), "TRIGGERS_DIR", None)
    if triggers_dir is None:
        triggers_dir = zoo_models_dir().parent / "triggers"
    return Path(triggers_dir) if Path(triggers_dir).is_dir() else None


def zoo_model_dirs() -> dict[str, Path]:
    """Map each zoo model name to its folder; folders without a manifest are skipped."""
    lister = getattr(_zoo_package(), "zoo_model_dirs", None)
    if callable(lister):
        return {str(name): Path(path) for name, path in lister().items()}
    models_dir = zoo_models_dir()
    if not models_dir.is_dir():
        return {}
    return {
        folder.name: folder
        for folder in sorted(models_dir.iterdir())
        if folder.is_dir() and (folder / MANIFEST_NAME).is_file()
    }


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """Read a zoo model's manifest: attack, true trigger_mean and trigger_std, fingerprint."""
    return json.loads((Path(model_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
