import math

import pytest
import torch

from terdguard.core.errors import InvalidLatentsError
from terdguard.core.scoring import LlrScorer, decide, neyman_pearson_threshold

SHAPE = (3, 8, 8)


def reference_llr(x_T: torch.Tensor, trigger_mean: torch.Tensor, trigger_std: torch.Tensor) -> torch.Tensor:
    x = x_T.double()
    poisoned = torch.distributions.Normal(trigger_mean.double(), trigger_std.double()).log_prob(x)
    clean = torch.distributions.Normal(torch.zeros_like(x[0]), torch.ones_like(x[0])).log_prob(x)
    return (poisoned - clean).flatten(1).sum(dim=1)


def make_trigger(
    generator: torch.Generator, unit_std: bool, shape: tuple[int, ...] = SHAPE
) -> tuple[torch.Tensor, torch.Tensor]:
    trigger_mean = torch.randn(shape, generator=generator) * 0.5
    trigger_std = torch.ones(shape) if unit_std else 0.4 + torch.rand(shape, generator=generator)
    return trigger_mean, trigger_std


# (3, 100, 100) has 30,000 elements: the CPU path sums it in two column blocks of 16,384.
@pytest.mark.parametrize("shape", [SHAPE, (3, 100, 100)])
@pytest.mark.parametrize("unit_std", [True, False])
def test_llr_matches_normal_log_prob(unit_std, shape):
    generator = torch.Generator().manual_seed(1)
    trigger_mean, trigger_std = make_trigger(generator, unit_std, shape)
    x_T = torch.cat(
        [
            torch.randn((16, *shape), generator=generator),
            trigger_mean + trigger_std * torch.randn((16, *shape), generator=generator),
        ]
    )

    llr = LlrScorer.from_trigger(trigger_mean, trigger_std).score(x_T)
    expected = reference_llr(x_T, trigger_mean, trigger_std)

    assert llr.dtype == torch.float64
    assert llr.shape == (32,)
    torch.testing.assert_close(llr, expected, rtol=1e-6, atol=1e-9)


def test_llr_rejects_wrong_shape():
    scorer = LlrScorer.from_trigger(torch.zeros(SHAPE), torch.ones(SHAPE))
    with pytest.raises(InvalidLatentsError, match=r"expected \(B, 3, 8, 8\)"):
        scorer.score(torch.zeros(2, 1, 8, 8))
    with pytest.raises(InvalidLatentsError):
        scorer.score(torch.zeros(3, 8, 8))


@pytest.mark.parametrize("unit_std", [True, False])
@pytest.mark.parametrize("false_positive_rate", [1e-2, 1e-3])
def test_neyman_pearson_threshold_false_positive_rate(unit_std, false_positive_rate):
    generator = torch.Generator().manual_seed(2)
    trigger_mean, trigger_std = make_trigger(generator, unit_std)
    scorer = LlrScorer.from_trigger(trigger_mean, trigger_std)

    threshold = neyman_pearson_threshold(scorer, false_positive_rate)
    draws = 400_000
    flagged = decide(scorer.score(torch.randn((draws, *SHAPE), generator=generator)), threshold)
    rate = float(flagged.double().mean())

    # Three binomial standard deviations, plus 5% for the saddlepoint approximation.
    tolerance = 3 * math.sqrt(false_positive_rate / draws) + 0.05 * false_positive_rate
    assert abs(rate - false_positive_rate) < tolerance


def test_neyman_pearson_threshold_rejects_invalid_rate():
    scorer = LlrScorer.from_trigger(torch.zeros(SHAPE), torch.ones(SHAPE))
    for rate in (0.0, 0.5, 1.5, -1e-3):
        with pytest.raises(ValueError, match="false_positive_rate invalid"):
            neyman_pearson_threshold(scorer, rate)


def test_zero_trigger_scores_zero():
    scorer = LlrScorer.from_trigger(torch.zeros(SHAPE), torch.ones(SHAPE))
    llr = scorer.score(torch.randn(4, *SHAPE))
    assert torch.equal(llr, torch.zeros(4, dtype=torch.float64))
