"""The project's own model zoo: small DDPMs on the bundled digits, clean and backdoored.

The trained models ship inside the package under `models/`, each with a
`manifest.json` recording its attack, true trigger and measured attack success;
`triggers/` holds each model's reversed trigger from the fast profile, named by
the model's fingerprint, so a guard serving the zoo starts without scanning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).parent / "models"
TRIGGERS_DIR = Path(__file__).parent / "triggers"
MANIFEST_NAME = "manifest.json"


def zoo_model_dirs(models_dir: Path = MODELS_DIR) -> dict[str, Path]:
    """Return the built zoo models by name, in name order; missing ones are left out."""
    if not models_dir.is_dir():
        return {}
    return {
        path.name: path
        for path in sorted(models_dir.iterdir())
        if path.is_dir() and not path.name.startswith(".") and (path / MANIFEST_NAME).is_file()
    }


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """Return a zoo model's manifest as a dict."""
    return json.loads((Path(model_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
