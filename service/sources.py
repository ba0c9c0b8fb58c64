"""Confine model sources to the models root: no absolute paths, no `..`, no symlink that leads out."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from terdguard.core.loading import WEIGHTS_NAME

from .errors import InvalidSource

# The files the loader reads; checked one by one because os.walk does not enter symlinked folders.
LOADED_FILES = ("model_index.json", "unet/config.json", f"unet/{WEIGHTS_NAME}", "scheduler/scheduler_config.json")


def normalize_source(source: str) -> str:
    """Return `source` as a relative POSIX path; raises InvalidSource for absolute paths and `..`."""
    posix = PurePosixPath(source)
    if posix.is_absolute() or PureWindowsPath(source).is_absolute() or PureWindowsPath(source).drive:
        raise InvalidSource(
            f"source invalid: got absolute path {source!r}, expected a path relative to the models root"
        )
    if "\\" in source:
        raise InvalidSource(f"source invalid: got {source!r}, expected '/' as the only separator")
    if ".." in posix.parts:
        raise InvalidSource(f"source invalid: got {source!r}, expected a path without '..' components")
    parts = [part for part in posix.parts if part != "."]
    if not parts:
        raise InvalidSource(f"source invalid: got {source!r}, expected a folder below the models root")
    return "/".join(parts)


def resolve_source(models_root: Path, source: str) -> Path:
    """Return the real path of `source` under `models_root`.

    Raises InvalidSource when the path or any file below it resolves outside the
    root, which catches symlinks to folders or to single weight files elsewhere.
    """
    root = models_root.resolve()
    relative = normalize_source(source)
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root):
        raise InvalidSource(f"source invalid: {relative!r} resolves outside the models root")
    if resolved.is_dir():
        for folder, subfolders, files in os.walk(resolved):
            for entry in (*subfolders, *files):
                target = Path(folder, entry)
                if target.is_symlink() and not target.resolve().is_relative_to(root):
                    inner = target.relative_to(resolved).as_posix()
                    raise _escape(relative, inner)
        for inner in LOADED_FILES:
            target = resolved / inner
            if target.exists() and not target.resolve().is_relative_to(root):
                raise _escape(relative, inner)
    return resolved


def _escape(relative: str, inner: str) -> InvalidSource:
    return InvalidSource(f"source invalid: {relative}/{inner} is a symlink that leads outside the models root")
