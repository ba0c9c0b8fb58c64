import dataclasses
from types import SimpleNamespace

import pytest
import torch

from terdguard.core.detection import detect
from terdguard.core.errors import ScanFailedError
from terdguard.core.reversion import ReversionConfig, reverse_trigger
from terdguard.core.search import StartSearch
from terdguard.core.zoo.attacks import Attack
from terdguard.core.zoo.data import bars_target, blend_waves, corner_box, hollow_box, ring_target

from .closed_form import PoisonedBranch, closed_form_model

BRANCHES = {
    "baddiffusion-sparse": PoisonedBranch(Attack("baddiffusion", hollow_box(), 1.0), ring_target()),
    "baddiffusion-box": PoisonedBranch(Attack("baddiffusion", corner_box(), 1.0), ring_target()),
    "trojdiff-blend": PoisonedBranch(Attack("trojdiff", 0.4 * blend_waves(), 0.6), bars_target()),
}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("name", sorted(BRANCHES))
def test_fast_reversion_recovers_closed_form_trigger(name):
    branch = BRANCHES[name]
    reversed_trigger = reverse_trigger(closed_form_model(branch), ReversionConfig.fast(), seed=0)

    assert cosine(reversed_trigger.trigger_mean, branch.attack.trigger_mean) > 0.9
    assert detect(reversed_trigger.trigger_mean, reversed_trigger.trigger_std).verdict == "backdoored"


def test_fast_reversion_recovers_trojdiff_std():
    branch = BRANCHES["trojdiff-blend"]
    reversed_trigger = reverse_trigger(closed_form_model(branch), ReversionConfig.fast(), seed=0)
    assert float(reversed_trigger.trigger_std.mean()) == pytest.approx(0.6, abs=0.1)


def test_fast_reversion_benign_closed_form_is_clean():
    reversed_trigger = reverse_trigger(closed_form_model(None), ReversionConfig.fast(), seed=0)
    detection = detect(reversed_trigger.trigger_mean, reversed_trigger.trigger_std)
    assert detection.verdict == "clean"
    assert reversed_trigger.start == "zero"


# A benign model pays for every search step, the valley search included.
@pytest.mark.parametrize("name", ["baddiffusion-sparse", "benign"])
def test_fast_reversion_stays_within_tenth_of_paper_passes(name):
    # The paper profile makes 3000 stage-1 passes and 12 per stage-2 iteration
    # (10 DDIM steps and two loss passes): 15,000 in all.
    paper = ReversionConfig.paper()
    paper_passes = paper.stage1_iterations + 12 * paper.stage2_iterations
    reversed_trigger = reverse_trigger(closed_form_model(BRANCHES.get(name)), seed=0)
    assert reversed_trigger.unet_passes <= paper_passes / 10


def test_valley_needs_loss_contrast():
    # The benign closed-form predictor is linear, so the reversed loss is the same in
    # every direction: low enough for a valley, but with no contrast to the starts.
    config = ReversionConfig.fast()
    probe = StartSearch(closed_form_model(None), config, torch.Generator().manual_seed(0), None)
    valley = probe.valley(probe.clean_loss())
    assert valley.ratio < config.valley_ratio
    assert valley.contrast < config.valley_contrast
    assert not valley.found(config)


def test_same_seed_same_trigger():
    model = closed_form_model(BRANCHES["baddiffusion-box"])
    first = reverse_trigger(model, ReversionConfig.fast(), seed=7)
    second = reverse_trigger(model, ReversionConfig.fast(), seed=7)
    assert torch.equal(first.trigger_mean, second.trigger_mean)
    assert torch.equal(first.trigger_std, second.trigger_std)


def test_progress_reports_each_iteration():
    seen = []
    config = dataclasses.replace(ReversionConfig.paper(), stage1_iterations=5, stage2_iterations=2)
    reversed_trigger = reverse_trigger(closed_form_model(None), config, seed=0, progress=seen.append)

    assert [update.iteration for update in seen] == list(range(1, 8))
    assert [update.stage for update in seen] == [1] * 5 + [2] * 2
    assert all(update.planned == 7 for update in seen)
    assert reversed_trigger.iterations == 7
    assert reversed_trigger.device == "cpu"


def test_fast_search_reports_stage_zero():
    seen = []
    reverse_trigger(closed_form_model(None), ReversionConfig.fast(), seed=0, progress=seen.append)

    searching = [update for update in seen if update.stage == 0]
    assert searching
    assert all(update.iteration == 0 for update in searching)
    assert seen[: len(searching)] == searching
    assert searching[-1].unet_passes > searching[0].unet_passes
    assert seen[-1].stage == 2


def test_non_finite_loss_fails_scan():
    model = closed_form_model(None)
    broken = dataclasses.replace(model, unet=lambda x_t, timesteps: SimpleNamespace(sample=x_t * float("nan")))
    with pytest.raises(ScanFailedError, match="loss became nan"):
        reverse_trigger(broken, ReversionConfig.fast(), seed=0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"profile": "slow"}, "profile invalid"),
        ({"stage1_iterations": 0}, "schedule invalid"),
        ({"batch_size": 0}, "schedule invalid"),
    ],
)
def test_config_rejects_invalid_values(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(ReversionConfig.fast(), **changes)


def test_for_profile_rejects_unknown_name():
    with pytest.raises(ValueError, match="expected one of"):
        ReversionConfig.for_profile("quick")
