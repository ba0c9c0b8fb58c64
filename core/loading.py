"""Load an unconditional diffusers DDPM/DDIM model from a local directory.

Only local files are read and only `.safetensors` weights are loaded: the UNet is
built from its JSON config and filled with `safetensors.torch.load_file`, so no
pickle is ever opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file

from .errors import (
    DeviceUnavailableError,
    MissingConfigError,
    ModelNotFoundError,
    UnsafeWeightsError,
    UnsupportedModelError,
)

logger = logging.getLogger(__name__)

SUPPORTED_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
SUPPORTED_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
SUPPORTED_UNETS = ("UNet2DModel",)
SUPPORTED_PREDICTION_TYPES = ("epsilon",)
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """Map `auto`, `cpu` or `cuda` to a torch device; `auto` picks CUDA when present."""
    if device not in DEVICES:
        raise DeviceUnavailableError(f"device invalid: got {device!r}, expected one of {DEVICES}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("device 'cuda' requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(device)


@dataclass(frozen=True)
class DiffusionModel:
    """A loaded noise predictor with its schedule, ready for scanning and sampling."""

    source: Path
    fingerprint: str  # sha256 hex over the UNet weights, UNet config and scheduler config
    unet: UNet2DModel
    scheduler_config: dict[str, Any]
    sample_shape: tuple[int, int, int]  # (C, H, W) from the UNet config
    alpha_bar: torch.Tensor  # (T,) float32 on the model's device
    device: torch.device

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alpha_bar.shape[0])

    @property
    def clip_sample(self) -> float | None:
        """The x0 clamp range the scheduler applies while sampling, or None when it does not clamp."""
        if not self.scheduler_config.get("clip_sample", True):
            return None
        return float(self.scheduler_config.get("clip_sample_range", 1.0))

    def predict_eps(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Return `eps_pred` for `x_t` (B, C, H, W) at integer `timesteps` (B,)."""
        return self.unet(x_t, timesteps).sample


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingConfigError(f"config file missing: {path.name} not found in {path.parent}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MissingConfigError(f"config file invalid: {path} is not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise MissingConfigError(
            f"config file invalid: {path} contains a JSON {type(data).__name__}, expected a JSON object"
        )
    return data


def _check_pipeline_index(root: Path) -> None:
    """Reject pipelines that are not plain unconditional DDPM/DDIM saves."""
    index_path = root / "model_index.json"
    if not index_path.exists():
        return
    index = _read_json(index_path)
    pipeline_class = index.get("_class_name")
    if pipeline_class not in SUPPORTED_PIPELINES:
        raise UnsupportedModelError(
            f"pipeline class unsupported: got {pipeline_class!r}, expected one of {SUPPORTED_PIPELINES}"
        )
    components = sorted(key for key in index if not key.startswith("_"))
    extra = [key for key in components if key not in ("unet", "scheduler")]
    if extra:
        raise UnsupportedModelError(
            f"pipeline components unsupported: got {components}, expected only ['scheduler', 'unet'] "
            "(latent models with a VAE and text-conditioned models are not scanned yet)"
        )


def _find_weights(unet_dir: Path) -> Path:
    weights = unet_dir / WEIGHTS_NAME
    if weights.is_file():
        return weights
    files = sorted(path.name for path in unet_dir.iterdir() if path.is_file())
    pickles = [name for name in files if name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise UnsafeWeightsError(
            f"pickle weights rejected: {unet_dir.name}/{pickles[0]} is a pickle checkpoint, which can run code when "
            f"loaded; convert it to {WEIGHTS_NAME} with safetensors"
        )
    other = [name for name in files if name.endswith(".safetensors")]
    hint = f" (found {other}; variants are not loaded)" if other else ""
    raise ModelNotFoundError(f"weights missing: {unet_dir.name}/{WEIGHTS_NAME} not found{hint}")


def _check_unet_config(config: dict[str, Any]) -> None:
    unet_class = config.get("_class_name")
    if unet_class not in SUPPORTED_UNETS:
        raise UnsupportedModelError(
            f"UNet class unsupported: got {unet_class!r}, expected one of {SUPPORTED_UNETS} "
            "(conditional UNets are not scanned yet)"
        )
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise UnsupportedModelError(
            "UNet unsupported: class-conditional UNet2DModel found "
            f"(class_embed_type={config.get('class_embed_type')!r}, "
            f"num_class_embeds={config.get('num_class_embeds')!r}), "
            "expected an unconditional model"
        )


def _check_scheduler_config(config: dict[str, Any]) -> None:
    scheduler_class = config.get("_class_name")
    if scheduler_class not in SUPPORTED_SCHEDULERS:
        raise UnsupportedModelError(
            f"scheduler class unsupported: got {scheduler_class!r}, expected one of {SUPPORTED_SCHEDULERS} "
            "(score-based and EDM schedulers are not scanned yet)"
        )
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in SUPPORTED_PREDICTION_TYPES:
        raise UnsupportedModelError(
            f"prediction_type unsupported: got {prediction_type!r}, expected one of {SUPPORTED_PREDICTION_TYPES}"
        )


def fingerprint_files(weights: Path, unet_config: dict[str, Any], scheduler_config: dict[str, Any]) -> str:
    """Return the sha256 hex digest over the weight bytes and both configs in canonical JSON."""
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    for config in (unet_config, scheduler_config):
        digest.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def inspect_model(source: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any], str]:
    """Validate a model directory without building the network.

    Returns the weights path, the UNet config, the scheduler config and the fingerprint.
    """
    root = Path(source)
    if not root.is_dir():
        raise ModelNotFoundError(f"model directory not found: {root}")
    _check_pipeline_index(root)
    unet_dir, scheduler_dir = root / "unet", root / "scheduler"
    for folder in (unet_dir, scheduler_dir):
        if not folder.is_dir():
            raise MissingConfigError(
                f"model folder missing: {root.name}/{folder.name}/ not found, expected a diffusers save "
                "with unet/ and scheduler/"
            )
    unet_config = _read_json(unet_dir / "config.json")
    _check_unet_config(unet_config)
    scheduler_config = _read_json(scheduler_dir / "scheduler_config.json")
    _check_scheduler_config(scheduler_config)
    weights = _find_weights(unet_dir)
    return weights, unet_config, scheduler_config, fingerprint_files(weights, unet_config, scheduler_config)


def load_model(source: str | Path, device: str = "auto") -> DiffusionModel:
    """Load a diffusers DDPM/DDIM directory onto `device` in float32, evaluation mode."""
    torch_device = resolve_device(device)
    weights, unet_config, scheduler_config, fingerprint = inspect_model(source)

    # Build the UNet from its config and fill it from the safetensors file.
    unet = UNet2DModel.from_config(unet_config)
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise ModelNotFoundError(
            f"weights invalid: {weights.name} could not be read as safetensors ({error})"
        ) from error
    try:
        missing, unexpected = unet.load_state_dict(state, strict=False)
    except RuntimeError as error:  # raised by torch for tensors whose shapes differ from the config's
        raise UnsupportedModelError(f"weights do not match the UNet config: {str(error).splitlines()[0]}") from error
    if missing or unexpected:
        raise UnsupportedModelError(
            f"weights do not match the UNet config: {len(missing)} missing and {len(unexpected)} unexpected tensors"
        )
    # from_config builds float32 parameters and load_state_dict casts float16 weights into them.
    unet = unet.to(torch_device).eval().requires_grad_(False)

    # The schedule comes from diffusers itself so every beta_schedule diffusers supports works.
    from diffusers import DDPMScheduler

    schedule = DDPMScheduler.from_config(scheduler_config)
    alpha_bar = schedule.alphas_cumprod.to(device=torch_device, dtype=torch.float32)
    sample_size = unet.config.sample_size
    height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
    sample_shape = (int(unet.config.in_channels), int(height), int(width))
    logger.info("loaded model source=%s fingerprint=%s device=%s", source, fingerprint[:12], torch_device)
    return DiffusionModel(
        source=Path(source),
        fingerprint=fingerprint,
        unet=unet,
        scheduler_config=dict(scheduler_config),
        sample_shape=sample_shape,
        alpha_bar=alpha_bar,
        device=torch_device,
    )
