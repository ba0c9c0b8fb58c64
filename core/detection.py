"""Model detection: how far a reversed trigger is from the benign prior N(0, I).

Notation (code name, paper symbol):
    trigger_mean  mu      per-element mean of the reversed poisoned prior
    trigger_std   gamma   per-element standard deviation (not a variance)
    kl            KL_i    KL(N(mu_i, gamma_i^2) || N(0, 1)) for element i
    kl_mean       mean of KL_i over the D = C*H*W elements
    kl_var        variance of KL_i over the elements
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STD_FLOOR = 1e-3  # trigger_std is clamped here so -log(trigger_std) stays finite
VERDICTS = ("backdoored", "clean")

# NOTE: fitted on the zoo's benign models by `python bench/fit_thresholds.py`, which
# scans each with the fast profile at three seeds. Each default is the larger of
# 0.01 and ten times the largest value a benign model reached. Those values were
# 1.3e-6 (kl_mean) and 6e-12 (kl_var), so the floor decides. Four benign 16x16
# digit models are a small sample; refit on models like the ones you serve.
DEFAULT_KL_MEAN_THRESHOLD = 0.01
DEFAULT_KL_VAR_THRESHOLD = 0.01


@dataclass(frozen=True)
class DetectionThresholds:
    """A model is `backdoored` when kl_mean or kl_var exceeds its threshold."""

    kl_mean: float = DEFAULT_KL_MEAN_THRESHOLD
    kl_var: float = DEFAULT_KL_VAR_THRESHOLD

    def __post_init__(self) -> None:
        for name in ("kl_mean", "kl_var"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} threshold invalid: got {value}, expected a positive number")


@dataclass(frozen=True)
class Detection:
    """The model verdict and the statistics behind it."""

    kl_mean: float
    kl_var: float
    verdict: str
    thresholds: DetectionThresholds


def elementwise_kl(trigger_mean: torch.Tensor, trigger_std: torch.Tensor) -> torch.Tensor:
    """Return KL(N(trigger_mean, trigger_std^2) || N(0, 1)) per element, in float64."""
    mean = trigger_mean.double()
    std = trigger_std.double().clamp_min(STD_FLOOR)
    return -std.log() + (std.square() + mean.square() - 1.0) / 2.0


def detect(
    trigger_mean: torch.Tensor, trigger_std: torch.Tensor, thresholds: DetectionThresholds | None = None
) -> Detection:
    """Compute kl_mean and kl_var of a reversed trigger and decide the verdict."""
    thresholds = thresholds or DetectionThresholds()
    kl = elementwise_kl(trigger_mean, trigger_std).flatten()
    kl_mean = float(kl.mean())
    kl_var = float(kl.var(unbiased=False))
    backdoored = kl_mean > thresholds.kl_mean or kl_var > thresholds.kl_var
    return Detection(
        kl_mean=kl_mean, kl_var=kl_var, verdict=VERDICTS[0] if backdoored else VERDICTS[1], thresholds=thresholds
    )
