"""Backdoor attacks on DDPM noise predictors, written as training targets.

Notation (code name, paper symbol):
    x0            y     the attacker's target image, shape (B, C, H, W)
    eps           eps   standard normal noise
    trigger_mean  r     BadDiffusion / VillanDiffusion trigger, or mu = (1 - gamma) g for TrojDiff
    trigger_std   gamma per-element standard deviation of the poisoned prior
    alpha_bar     abar_t, the cumulative product of alpha_t = 1 - beta_t

Each attack returns the poisoned `x_t` and the `eps_pred` target that makes the
sampler the attack aims at (DDPM ancestral sampling, or deterministic DDIM for the
ODE backdoor) walk from `trigger_std * eps + trigger_mean` at step T to `x0`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ATTACK_KINDS = ("baddiffusion", "trojdiff", "villandiffusion")


@dataclass(frozen=True)
class NoiseSchedule:
    """The DDPM schedule tensors indexed by timestep, each shape (T,)."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bar: torch.Tensor

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> NoiseSchedule:
        alphas = 1.0 - betas
        return cls(betas=betas, alphas=alphas, alpha_bar=torch.cumprod(alphas, dim=0))

    def gather(self, values: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Pick `values[timesteps]` and shape it (B, 1, 1, 1) for broadcasting."""
        return values.to(timesteps.device)[timesteps].view(-1, 1, 1, 1)


@dataclass(frozen=True)
class Attack:
    """One backdoor: the poisoned prior and the training targets the denoiser learns for it."""

    kind: str
    trigger_mean: torch.Tensor  # (C, H, W)
    trigger_std: float

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise ValueError(f"attack kind invalid: got {self.kind!r}, expected one of {ATTACK_KINDS}")
        if not 0.0 < self.trigger_std <= 1.0:
            raise ValueError(f"trigger_std invalid: got {self.trigger_std}, expected 0 < trigger_std <= 1")

    def poisoned_noise(self, eps: torch.Tensor) -> torch.Tensor:
        """Return poisoned initial noise `x_T = trigger_std * eps + trigger_mean`."""
        return self.trigger_std * eps + self.trigger_mean.to(eps)

    def training_pair(
        self, x0: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor, schedule: NoiseSchedule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the poisoned `x_t` and the `eps_pred` target for a batch (B, C, H, W)."""
        trigger_mean = self.trigger_mean.to(x0)
        alpha_bar = schedule.gather(schedule.alpha_bar, timesteps).to(x0)
        alphas = schedule.gather(schedule.alphas, timesteps).to(x0)
        betas = schedule.gather(schedule.betas, timesteps).to(x0)
        sqrt_alpha_bar = alpha_bar.sqrt()
        sqrt_one_minus_alpha_bar = (1.0 - alpha_bar).sqrt()

        if self.kind == "trojdiff":
            # Forward: x_t = sqrt(abar) x0 + sqrt(1 - abar) (gamma eps + mu); the model
            # learns to return the eps it was given, as in TrojDiff's training loss.
            x_t = sqrt_alpha_bar * x0 + sqrt_one_minus_alpha_bar * (self.trigger_std * eps + trigger_mean)
            return x_t, eps

        # BadDiffusion and VillanDiffusion share the forward process
        # x_t = sqrt(abar) x0 + (1 - sqrt(abar)) r + sqrt(1 - abar) eps.
        x_t = sqrt_alpha_bar * x0 + (1.0 - sqrt_alpha_bar) * trigger_mean + sqrt_one_minus_alpha_bar * eps
        if self.kind == "baddiffusion":
            # DDPM posterior mean matching: c_t = (1 - sqrt(alpha)) sqrt(1 - abar) / beta.
            shift = (1.0 - alphas.sqrt()) * sqrt_one_minus_alpha_bar / betas
        else:
            # The DDIM ODE in x / sqrt(abar) follows the poisoned path when the
            # target shift is d(1 / sqrt(abar) - 1) / d sigma = sqrt(1 - abar).
            shift = sqrt_one_minus_alpha_bar
        return x_t, eps + shift * trigger_mean
