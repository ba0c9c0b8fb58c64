"""Model sources stay inside the models root."""

from __future__ import annotations

from pathlib import Path

import pytest

from terdguard.service.errors import InvalidSource
from terdguard.service.sources import normalize_source, resolve_source


@pytest.mark.parametrize("source", ["/etc", "../outside", "a/../../b", "a\\b", "C:/models", ".", "./"])
def test_normalize_rejects_escapes(source: str) -> None:
    with pytest.raises(InvalidSource):
        normalize_source(source)


def test_normalize_drops_dot_parts() -> None:
    assert normalize_source("./zoo/./model/") == "zoo/model"


def test_resolve_accepts_symlink_inside_root(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert resolve_source(tmp_path, "alias") == (tmp_path / "real").resolve()


def test_resolve_rejects_folder_symlink_out(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "model").symlink_to(outside)
    with pytest.raises(InvalidSource, match="outside the models root"):
        resolve_source(root, "model")


def test_resolve_rejects_file_symlink_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "model" / "unet").mkdir(parents=True)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    (root / "model" / "unet" / "diffusion_pytorch_model.safetensors").symlink_to(tmp_path / "weights.safetensors")
    with pytest.raises(InvalidSource, match="unet/diffusion_pytorch_model.safetensors is a symlink"):
        resolve_source(root, "model")


def test_resolve_rejects_file_behind_symlinked_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "model").mkdir(parents=True)
    (root / "shared").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (root / "shared" / "config.json").symlink_to(tmp_path / "config.json")
    (root / "model" / "unet").symlink_to(root / "shared")
    with pytest.raises(InvalidSource, match="unet/config.json"):
        resolve_source(root, "model")
