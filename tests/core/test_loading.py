import json
import pickle
from pathlib import Path

import pytest
import torch

from terdguard.core.errors import (
    DeviceUnavailableError,
    MissingConfigError,
    ModelNotFoundError,
    UnsafeWeightsError,
    UnsupportedModelError,
)
from terdguard.core.loading import WEIGHTS_NAME, inspect_model, load_model, resolve_device


class WritesMarker:
    """A pickle payload that would create a file if anything unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_load_reads_shape_and_schedule_from_config(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu")
    assert model.sample_shape == (1, 8, 8)
    assert model.num_train_timesteps == 100
    assert model.clip_sample is None
    assert model.device == torch.device("cpu")
    assert len(model.fingerprint) == 64
    eps_pred = model.predict_eps(torch.zeros(2, 1, 8, 8), torch.tensor([0, 99]))
    assert eps_pred.shape == (2, 1, 8, 8)


def test_folder_with_unet_and_scheduler_only_loads(tiny_model_dir):
    (tiny_model_dir / "model_index.json").unlink()
    assert load_model(tiny_model_dir, device="cpu").sample_shape == (1, 8, 8)


def test_fingerprint_follows_content(tiny_model_dir):
    first = inspect_model(tiny_model_dir)[3]
    assert inspect_model(tiny_model_dir)[3] == first
    edit_json(tiny_model_dir / "scheduler" / "scheduler_config.json", clip_sample=True)
    assert inspect_model(tiny_model_dir)[3] != first


def test_pickle_only_folder_is_rejected_without_unpickling(tiny_model_dir, tmp_path):
    marker = tmp_path / "marker"
    (tiny_model_dir / "unet" / WEIGHTS_NAME).unlink()
    (tiny_model_dir / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(WritesMarker(marker)))

    with pytest.raises(UnsafeWeightsError, match=r"unet/diffusion_pytorch_model\.bin is a pickle checkpoint"):
        load_model(tiny_model_dir, device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt"])
def test_other_pickle_suffixes_are_rejected(tiny_model_dir, name):
    (tiny_model_dir / "unet" / WEIGHTS_NAME).unlink()
    (tiny_model_dir / "unet" / name).write_bytes(b"not loaded")
    with pytest.raises(UnsafeWeightsError, match=name):
        inspect_model(tiny_model_dir)


def test_missing_weights_are_named(tiny_model_dir):
    (tiny_model_dir / "unet" / WEIGHTS_NAME).unlink()
    with pytest.raises(ModelNotFoundError, match="weights missing"):
        inspect_model(tiny_model_dir)


@pytest.mark.parametrize("relative", ["unet/config.json", "scheduler/scheduler_config.json"])
def test_missing_config_is_rejected(tiny_model_dir, relative):
    (tiny_model_dir / relative).unlink()
    with pytest.raises(MissingConfigError, match=f"{Path(relative).name} not found"):
        inspect_model(tiny_model_dir)


def test_invalid_json_config_is_rejected(tiny_model_dir):
    (tiny_model_dir / "unet" / "config.json").write_text("{not json")
    with pytest.raises(MissingConfigError, match="not valid JSON"):
        inspect_model(tiny_model_dir)


def test_missing_folder_is_rejected(tiny_model_dir):
    for folder in (tiny_model_dir / "scheduler").iterdir():
        folder.unlink()
    (tiny_model_dir / "scheduler").rmdir()
    with pytest.raises(MissingConfigError, match="scheduler/ not found"):
        inspect_model(tiny_model_dir)


def test_missing_directory_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="model directory not found"):
        inspect_model(tmp_path / "absent")


@pytest.mark.parametrize(
    "relative, changes, message",
    [
        (
            "model_index.json",
            {"_class_name": "StableDiffusionPipeline"},
            "pipeline class unsupported: got 'StableDiffusionPipeline'",
        ),
        ("model_index.json", {"vae": ["diffusers", "AutoencoderKL"]}, "pipeline components unsupported"),
        (
            "unet/config.json",
            {"_class_name": "UNet2DConditionModel"},
            "UNet class unsupported: got 'UNet2DConditionModel'",
        ),
        ("unet/config.json", {"num_class_embeds": 10}, "class-conditional UNet2DModel"),
        ("scheduler/scheduler_config.json", {"_class_name": "EulerDiscreteScheduler"}, "scheduler class unsupported"),
        (
            "scheduler/scheduler_config.json",
            {"prediction_type": "v_prediction"},
            "prediction_type unsupported: got 'v_prediction'",
        ),
    ],
)
def test_unsupported_models_are_rejected(tiny_model_dir, relative, changes, message):
    edit_json(tiny_model_dir / relative, **changes)
    with pytest.raises(UnsupportedModelError, match=message):
        inspect_model(tiny_model_dir)


def test_mismatched_weights_are_rejected(tiny_model_dir):
    edit_json(tiny_model_dir / "unet" / "config.json", block_out_channels=[16, 16])
    with pytest.raises(UnsupportedModelError, match="weights do not match"):
        load_model(tiny_model_dir, device="cpu")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceUnavailableError, match="device invalid"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_resolve_device_without_cuda():
    with pytest.raises(DeviceUnavailableError, match="no CUDA device"):
        resolve_device("cuda")
