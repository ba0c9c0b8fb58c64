import io
import os

import pytest
import torch
from PIL import Image

from terdguard.core.errors import TriggerFileError
from terdguard.core.reversion import ReversionConfig
from terdguard.core.scan import load_scan, save_scan, scan_model
from terdguard.core.triggers import PNG_SCALE, StoredTrigger, load_trigger, render_png, save_trigger

from .closed_form import closed_form_model


def make_trigger(fingerprint: str = "ab" * 32) -> StoredTrigger:
    generator = torch.Generator().manual_seed(0)
    return StoredTrigger(
        torch.randn(1, 4, 4, generator=generator),
        torch.full((1, 4, 4), 0.6),
        {"fingerprint": fingerprint, "kl_mean": 0.25, "profile": "fast"},
    )


def test_trigger_round_trip(tmp_path):
    trigger = make_trigger()
    path = tmp_path / "triggers" / "t.safetensors"
    save_trigger(path, trigger)

    loaded = load_trigger(path, trigger.fingerprint)

    assert torch.equal(loaded.trigger_mean, trigger.trigger_mean)
    assert torch.equal(loaded.trigger_std, trigger.trigger_std)
    assert loaded.metadata["kl_mean"] == 0.25
    assert loaded.metadata["profile"] == "fast"
    assert [p.name for p in path.parent.iterdir()] == ["t.safetensors"]  # no temporary file left behind


def test_trigger_of_another_model_is_rejected(tmp_path):
    path = tmp_path / "t.safetensors"
    save_trigger(path, make_trigger())
    with pytest.raises(TriggerFileError, match="belongs to another model"):
        load_trigger(path, "cd" * 32)


def test_corrupt_trigger_file_is_rejected(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(TriggerFileError, match="trigger file invalid"):
        load_trigger(path)


def test_missing_trigger_file_is_reported(tmp_path):
    with pytest.raises(TriggerFileError, match="trigger file not found"):
        load_trigger(tmp_path / "absent.safetensors")


def test_save_without_fingerprint_is_rejected(tmp_path):
    with pytest.raises(TriggerFileError, match="'fingerprint' missing"):
        save_trigger(tmp_path / "t.safetensors", StoredTrigger(torch.zeros(1, 2, 2), torch.ones(1, 2, 2), {}))


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_png_shows_mean_and_std_side_by_side(channels, mode):
    trigger_mean = torch.zeros(channels, 4, 4)
    trigger_mean[:, 0, 0] = 2.0
    trigger_mean[:, 3, 3] = -1.0
    image = Image.open(io.BytesIO(render_png(trigger_mean, torch.ones(channels, 4, 4))))

    assert image.mode == mode
    assert image.size == ((4 + 1 + 4) * PNG_SCALE, 4 * PNG_SCALE)
    pixels = image.convert("L")
    assert pixels.getpixel((0, 0)) == 255  # the largest positive value is white
    assert pixels.getpixel((2 * PNG_SCALE, 2 * PNG_SCALE)) in (127, 128)  # zero is mid-grey
    assert pixels.getpixel((6 * PNG_SCALE, 2 * PNG_SCALE)) == 170  # std 1 is light grey, never stretched to white


def test_png_shows_narrow_std_darker():
    trigger_std = torch.ones(1, 4, 4)
    trigger_std[0, 0, 0] = 0.6
    pixels = Image.open(io.BytesIO(render_png(torch.zeros(1, 4, 4), trigger_std))).convert("L")
    assert pixels.getpixel((5 * PNG_SCALE, 0)) < pixels.getpixel((6 * PNG_SCALE, 0))


def test_png_keeps_tiny_mean_grey():
    trigger_mean = torch.full((1, 4, 4), 0.004)
    image = Image.open(io.BytesIO(render_png(trigger_mean, torch.ones(1, 4, 4)))).convert("L")
    assert image.getpixel((0, 0)) in (127, 128)


def test_saved_trigger_follows_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        path = tmp_path / "t.safetensors"
        save_trigger(path, make_trigger())
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_scan_saves_and_loads_report(tmp_path):
    result = scan_model(closed_form_model(None), ReversionConfig.fast(), seed=3)
    path = save_scan(result, tmp_path)

    assert path.name == f"{result.report.fingerprint}.safetensors"
    assert path.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    loaded = load_scan(path, result.report.fingerprint)
    assert loaded.report == result.report
    assert torch.equal(loaded.trigger_mean, result.trigger_mean)
