"""Closed-form noise predictors with known backdoors, for testing reversion without training.

The training distribution is a mix of clean data x0 ~ N(data_mean, data_std^2 I)
and, with probability `share`, one poisoned branch whose x_t is Gaussian too. The
predictor returns the exact E[eps target | x_t] of that mix: each component's
linear prediction weighted by its posterior probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import DDPMScheduler

from terdguard.core.loading import DiffusionModel
from terdguard.core.zoo.attacks import Attack, NoiseSchedule

SHAPE = (1, 16, 16)


@dataclass(frozen=True)
class PoisonedBranch:
    attack: Attack
    target: torch.Tensor  # (C, H, W), the attacker's image
    share: float = 0.1


class MixturePredictor(torch.nn.Module):
    """Exact noise predictor for Gaussian data plus an optional poisoned branch."""

    def __init__(self, schedule: NoiseSchedule, data_mean: float, data_std: float, branch: PoisonedBranch | None):
        super().__init__()
        self.schedule = schedule
        self.data_mean = data_mean
        self.data_std = data_std
        self.branch = branch

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> SimpleNamespace:
        schedule = self.schedule
        alpha_bar = schedule.gather(schedule.alpha_bar, timesteps).to(x_t)
        alphas = schedule.gather(schedule.alphas, timesteps).to(x_t)
        betas = schedule.gather(schedule.betas, timesteps).to(x_t)
        dims = x_t[0].numel()

        # Clean component: x_t ~ N(sqrt(abar) m, (abar s^2 + 1 - abar) I).
        clean_mean = alpha_bar.sqrt() * self.data_mean
        clean_var = alpha_bar * self.data_std**2 + 1.0 - alpha_bar
        clean_eps = (1.0 - alpha_bar).sqrt() * (x_t - clean_mean) / clean_var
        if self.branch is None:
            return SimpleNamespace(sample=clean_eps)

        # Poisoned component: Gaussian with the attack's mean and variance, prediction from the attack's target.
        attack, target = self.branch.attack, self.branch.target.to(x_t)
        trigger_mean = attack.trigger_mean.to(x_t)
        if attack.kind == "trojdiff":
            poison_mean = alpha_bar.sqrt() * target + (1.0 - alpha_bar).sqrt() * trigger_mean
            poison_var = (1.0 - alpha_bar) * attack.trigger_std**2
            shift = torch.zeros_like(alpha_bar)
        else:
            poison_mean = alpha_bar.sqrt() * target + (1.0 - alpha_bar.sqrt()) * trigger_mean
            poison_var = 1.0 - alpha_bar
            shift = (1.0 - alphas.sqrt()) * (1.0 - alpha_bar).sqrt() / betas
        poison_eps = (x_t - poison_mean) / poison_var.sqrt() + shift * trigger_mean

        # Posterior weight of the poisoned component, from both Gaussian log-densities.
        def log_density(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
            return -0.5 * ((x_t - mean).square() / var).flatten(1).sum(1) - 0.5 * dims * var.flatten().log()

        logit = log_density(poison_mean, poison_var) - log_density(clean_mean, clean_var)
        logit = logit + torch.log(torch.tensor(self.branch.share / (1.0 - self.branch.share)))
        weight = torch.sigmoid(logit).view(-1, 1, 1, 1)
        return SimpleNamespace(sample=weight * poison_eps + (1.0 - weight) * clean_eps)


def closed_form_model(branch: PoisonedBranch | None, data_mean: float = -0.4, data_std: float = 0.5) -> DiffusionModel:
    """Wrap a mixture predictor as a DiffusionModel on a standard linear 1000-step schedule."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    schedule = NoiseSchedule.from_betas(scheduler.betas.to(torch.float32))
    predictor = MixturePredictor(schedule, data_mean, data_std, branch)
    return DiffusionModel(
        source=Path("closed-form"),
        fingerprint="closed-form-" + ("benign" if branch is None else branch.attack.kind),
        unet=predictor,  # type: ignore[arg-type]
        scheduler_config=dict(scheduler.config),
        sample_shape=SHAPE,
        alpha_bar=schedule.alpha_bar,
        device=torch.device("cpu"),
    )
