"""End to end: train a small backdoored UNet2DModel here, then scan it with the `terdguard` command."""

import dataclasses
import io
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from terdguard.core.loading import load_model
from terdguard.core.zoo.build import save_model
from terdguard.core.zoo.catalog import ZOO_BY_NAME
from terdguard.core.zoo.train import train_entry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backdoored_dir(tmp_path_factory):
    # The zoo's corner-box BadDiffusion recipe, on 8x8 digits and the smaller network so it trains in a minute.
    entry = dataclasses.replace(
        ZOO_BY_NAME["baddiffusion-box"],
        name="test-box",
        architecture="unet-s2",
        image_size=8,
        train_steps=1500,
        poison_share=0.5,
    )
    directory = tmp_path_factory.mktemp("models") / "test-box"
    save_model(train_entry(entry), directory)
    return directory


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "terdguard.service", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def test_scan_command_flags_trained_backdoor(backdoored_dir, tmp_path):
    out = tmp_path / "triggers"
    completed = run_cli("scan", str(backdoored_dir), "--seed", "0", "--device", "cpu", "--out", str(out))

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["verdict"] == "backdoored"
    assert report["device"] == "cpu"
    assert report["profile"] == "fast"
    assert report["fingerprint"] == load_model(backdoored_dir, device="cpu").fingerprint
    for key in (
        "kl_mean",
        "kl_var",
        "kl_mean_threshold",
        "kl_var_threshold",
        "llr_threshold",
        "unet_passes",
        "seconds",
    ):
        assert key in report
    png = Image.open(io.BytesIO((out / f"{report['fingerprint']}.png").read_bytes()))
    assert png.size[0] > png.size[1]  # mean and std side by side
    assert (out / f"{report['fingerprint']}.safetensors").is_file()


def test_scan_command_reports_bad_directory(tmp_path):
    completed = run_cli("scan", str(tmp_path / "absent"))
    assert completed.returncode == 2
    assert "model directory not found" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_trained_backdoor_reversion_points_at_trigger(backdoored_dir):
    from terdguard.core.reversion import reverse_trigger

    entry = dataclasses.replace(ZOO_BY_NAME["baddiffusion-box"], image_size=8)
    trigger_mean = entry.attack().trigger_mean
    reversed_trigger = reverse_trigger(load_model(backdoored_dir, device="cpu"), seed=0)
    cosine = torch.nn.functional.cosine_similarity(
        reversed_trigger.trigger_mean.flatten(), trigger_mean.flatten(), dim=0
    )
    assert float(cosine) > 0.9
