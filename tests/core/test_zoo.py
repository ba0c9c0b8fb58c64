"""Checks on the shipped zoo: contents, measured attacks, and shipped triggers against fresh scans."""

import pytest
import torch

from terdguard.core import zoo
from terdguard.core.loading import load_model
from terdguard.core.reversion import ReversionConfig
from terdguard.core.scan import load_scan, scan_model
from terdguard.core.triggers import trigger_path
from terdguard.core.zoo.build import measure_attack
from terdguard.core.zoo.catalog import ZOO, ZOO_BY_NAME

BUILT = zoo.zoo_model_dirs()
BACKDOORED = [entry.name for entry in ZOO if entry.backdoored]
MAX_ZOO_BYTES = 10 * 1024 * 1024

# Models whose backdoor the fast profile is known to miss; strict, so a fix shows up as a failure to update.
def test_every_catalog_model_is_built():
    assert sorted(BUILT) == sorted(entry.name for entry in ZOO)


def test_zoo_fits_size_budget():
    size = sum(path.stat().st_size for directory in BUILT.values() for path in directory.rglob("*") if path.is_file())
    assert size < MAX_ZOO_BYTES


def test_zoo_has_benign_models_of_two_architectures():
    benign = [entry for entry in ZOO if not entry.backdoored]
    assert len(benign) >= 3
    assert len({entry.architecture for entry in benign}) >= 2


@pytest.mark.parametrize("name", sorted(BUILT))
def test_manifest_matches_model(name):
    manifest = zoo.read_manifest(BUILT[name])
    entry = ZOO_BY_NAME[name]
    assert manifest["fingerprint"] == load_model(BUILT[name], device="cpu").fingerprint
    assert manifest["backdoored"] == entry.backdoored
    assert manifest["seed"] == entry.seed
    assert manifest["train_steps"] == entry.train_steps
    if entry.backdoored:
        torch.testing.assert_close(torch.tensor(manifest["trigger_mean"]), entry.attack().trigger_mean)
        assert manifest["attack_measurement"]["attack_success_rate"] >= 0.9


def test_baddiffusion_schedulers_do_not_clip():
    for name in BACKDOORED:
        assert load_model(BUILT[name], device="cpu").clip_sample is None


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKDOORED)
def test_attack_fires_under_its_sampler(name):
    entry = ZOO_BY_NAME[name]
    measurement = measure_attack(entry, load_model(BUILT[name], device="cpu"), samples=20, seed=1)
    assert measurement.attack_success_rate >= 0.9
    # A digit-class target is hit by chance about one time in ten, as clean samples include that digit.
    assert measurement.clean_target_rate <= (0.3 if entry.target_class is not None else 0.1)


@pytest.mark.parametrize("name", sorted(BUILT))
def test_shipped_trigger_has_true_verdict(name):
    model = load_model(BUILT[name], device="cpu")
    shipped = load_scan(trigger_path(zoo.TRIGGERS_DIR, model.fingerprint), model.fingerprint)
    assert shipped.report.verdict == ("backdoored" if ZOO_BY_NAME[name].backdoored else "clean")
    assert shipped.report.profile == "fast"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUILT))
def test_fresh_scan_agrees_with_shipped_trigger(name):
    model = load_model(BUILT[name], device="cpu")
    shipped = load_scan(trigger_path(zoo.TRIGGERS_DIR, model.fingerprint), model.fingerprint)
    fresh = scan_model(model, ReversionConfig.fast(), seed=1)
    assert fresh.report.verdict == shipped.report.verdict


def test_stale_shipped_triggers_are_absent():
    fingerprints = {zoo.read_manifest(directory)["fingerprint"] for directory in BUILT.values()}
    assert {path.stem for path in zoo.TRIGGERS_DIR.glob("*.safetensors")} == fingerprints
