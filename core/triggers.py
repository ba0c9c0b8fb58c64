"""Store reversed triggers as safetensors files and render them as PNG images."""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load, save

from .errors import TriggerFileError

FORMAT_VERSION = "1"
PNG_SCALE = 8  # each trigger pixel becomes an 8x8 block so a 16x16 trigger is visible
MEAN_SCALE_FLOOR = 1.0  # one standard deviation of the clean noise
STD_SCALE_MAX = 1.5  # the std panel is white at this value and above


@dataclass(frozen=True)
class StoredTrigger:
    """A reversed trigger and the metadata saved with it."""

    trigger_mean: torch.Tensor  # (C, H, W) float32
    trigger_std: torch.Tensor  # (C, H, W) float32
    metadata: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return str(self.metadata["fingerprint"])


def trigger_path(directory: Path, fingerprint: str) -> Path:
    """Return the path a trigger is stored under, named by its model's fingerprint."""
    return Path(directory) / f"{fingerprint}.safetensors"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp creates the file readable by its owner only; give it the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_trigger(path: Path, trigger: StoredTrigger) -> None:
    """Write a trigger file atomically. Metadata values are stored as JSON strings."""
    if "fingerprint" not in trigger.metadata:
        raise TriggerFileError("trigger metadata invalid: 'fingerprint' missing")
    tensors = {
        "trigger_mean": trigger.trigger_mean.detach().to("cpu", torch.float32).contiguous(),
        "trigger_std": trigger.trigger_std.detach().to("cpu", torch.float32).contiguous(),
    }
    metadata = {key: json.dumps(value) for key, value in trigger.metadata.items()}
    metadata["format_version"] = json.dumps(FORMAT_VERSION)
    write_atomic(Path(path), save(tensors, metadata=metadata))


def load_trigger(path: Path, fingerprint: str | None = None) -> StoredTrigger:
    """Read a trigger file; with `fingerprint`, also check it belongs to that model."""
    path = Path(path)
    if not path.is_file():
        raise TriggerFileError(f"trigger file not found: {path}")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_size])
        metadata = {key: json.loads(value) for key, value in header.get("__metadata__", {}).items()}
    except (SafetensorError, ValueError, json.JSONDecodeError) as error:
        raise TriggerFileError(f"trigger file invalid: {path} ({error})") from error
    if set(tensors) != {"trigger_mean", "trigger_std"} or "fingerprint" not in metadata:
        raise TriggerFileError(f"trigger file invalid: {path} lacks trigger_mean, trigger_std or fingerprint")
    if fingerprint is not None and metadata["fingerprint"] != fingerprint:
        raise TriggerFileError(
            f"trigger file belongs to another model: got fingerprint {metadata['fingerprint'][:12]}, "
            f"expected {fingerprint[:12]}"
        )
    return StoredTrigger(tensors["trigger_mean"], tensors["trigger_std"], metadata)


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (values - low) / max(high - low, 1e-12)
    return (scaled.clip(0.0, 1.0) * 255.0).round().astype(np.uint8)


def render_png(trigger_mean: torch.Tensor, trigger_std: torch.Tensor, scale: int = PNG_SCALE) -> bytes:
    """Render mean (left) and std (right) of a (C, H, W) trigger side by side as PNG bytes.

    The mean is scaled symmetrically so 0 is mid-grey and black and white stand for
    the largest |value|, but never for less than MEAN_SCALE_FLOOR, so the near-zero
    mean of a clean model stays grey instead of being stretched into noise. The std
    is drawn on a fixed scale from 0 (black) to STD_SCALE_MAX (white), so the
    benign std of 1 is the same grey in every image and a narrower prior is darker.
    """
    mean = trigger_mean.detach().cpu().float().numpy()
    std = trigger_std.detach().cpu().float().numpy()
    bound = max(float(np.abs(mean).max()), MEAN_SCALE_FLOOR)
    panels = [_to_uint8(mean, -bound, bound), _to_uint8(std, 0.0, STD_SCALE_MAX)]
    channels, height, _ = mean.shape
    gap = np.full((channels, height, 1), 255, dtype=np.uint8)
    image = np.concatenate([panels[0], gap, panels[1]], axis=2)
    image = image.repeat(scale, axis=1).repeat(scale, axis=2)
    # Three or more channels render as RGB from the first three, others as grey from the first.
    array = image[:3].transpose(1, 2, 0) if channels >= 3 else image[0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()
