import pytest
import torch

from terdguard.core.detection import STD_FLOOR, DetectionThresholds, detect, elementwise_kl


def test_elementwise_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    trigger_mean = torch.randn(2, 5, 5, generator=generator)
    trigger_std = 0.2 + torch.rand(2, 5, 5, generator=generator)

    kl = elementwise_kl(trigger_mean, trigger_std)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(trigger_mean.double(), trigger_std.double()),
        torch.distributions.Normal(torch.zeros_like(kl), torch.ones_like(kl)),
    )

    torch.testing.assert_close(kl, expected)


def test_elementwise_kl_clamps_std_floor():
    kl = elementwise_kl(torch.zeros(3), torch.tensor([0.0, -1.0, STD_FLOOR]))
    assert torch.isfinite(kl).all()
    torch.testing.assert_close(kl[0], kl[2])
    torch.testing.assert_close(kl[0], kl[1])


def test_detect_benign_prior_is_clean():
    detection = detect(torch.zeros(1, 4, 4), torch.ones(1, 4, 4))
    assert detection.kl_mean == 0.0
    assert detection.kl_var == 0.0
    assert detection.verdict == "clean"


def test_detect_uses_mean_and_variance_thresholds():
    diffuse = torch.full((1, 4, 4), 0.5)  # KL 0.125 on every element: high mean, zero variance
    sparse = torch.zeros(1, 4, 4)
    sparse[0, 0, 0] = 2.0  # KL 2 on one element: mean 0.125, variance about 0.23
    thresholds = DetectionThresholds(kl_mean=0.2, kl_var=0.1)

    assert detect(diffuse, torch.ones_like(diffuse), thresholds).verdict == "clean"
    assert (
        detect(diffuse, torch.ones_like(diffuse), DetectionThresholds(kl_mean=0.1, kl_var=0.1)).verdict == "backdoored"
    )
    assert detect(sparse, torch.ones_like(sparse), thresholds).verdict == "backdoored"


@pytest.mark.parametrize("field", ["kl_mean", "kl_var"])
@pytest.mark.parametrize("value", [0.0, -0.1])
def test_thresholds_reject_non_positive(field, value):
    with pytest.raises(ValueError, match=f"{field} threshold invalid"):
        DetectionThresholds(**{field: value})
