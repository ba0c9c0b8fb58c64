"""Samplers that turn initial noise `x_T` into images with a model's own scheduler.

Generation goes through diffusers' `DDPMScheduler` and `DDIMScheduler`, built from
the model's saved scheduler config so settings such as `clip_sample` and
`thresholding` are honoured. The differentiable DDIM used by trigger refinement is
written out by hand because it must pass gradients back to `x_T`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler

SAMPLERS = ("ddim", "ddpm")

NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_scheduler(scheduler_config: dict[str, Any], sampler: str) -> DDPMScheduler | DDIMScheduler:
    """Build the requested sampler's scheduler from a model's saved scheduler config."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler invalid: got {sampler!r}, expected one of {SAMPLERS}")
    scheduler_class = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    return scheduler_class.from_config(scheduler_config)


@torch.no_grad()
def generate(
    predict_eps: NoisePredictor,
    scheduler_config: dict[str, Any],
    x_T: torch.Tensor,
    *,
    sampler: str = "ddim",
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Denoise `x_T` (B, C, H, W) into images in [-1, 1] with the model's scheduler.

    DDIM runs deterministically (eta 0); DDPM draws its noise from `generator`.
    """
    train_steps = int(scheduler_config["num_train_timesteps"])
    if not 1 <= num_inference_steps <= train_steps:
        raise ValueError(f"num_inference_steps invalid: got {num_inference_steps}, expected 1 to {train_steps}")
    scheduler = make_scheduler(scheduler_config, sampler)
    scheduler.set_timesteps(num_inference_steps, device=x_T.device)

    x_t = x_T * scheduler.init_noise_sigma
    total = len(scheduler.timesteps)
    for index, timestep in enumerate(scheduler.timesteps):
        timesteps = torch.full((x_t.shape[0],), int(timestep), device=x_t.device, dtype=torch.long)
        eps_pred = predict_eps(x_t, timesteps)
        if sampler == "ddim":
            x_t = scheduler.step(eps_pred, timestep, x_t, eta=0.0).prev_sample
        else:
            x_t = scheduler.step(eps_pred, timestep, x_t, generator=generator).prev_sample
        if progress is not None:
            progress(index + 1, total)
    return x_t.clamp(-1.0, 1.0)


def ddim_timesteps(train_steps: int, num_inference_steps: int) -> list[int]:
    """Evenly spaced descending timesteps, as DDIM's default 'leading' spacing picks them."""
    stride = train_steps // num_inference_steps
    return [step * stride for step in reversed(range(num_inference_steps))]


def differentiable_ddim(
    predict_eps: NoisePredictor,
    alpha_bar: torch.Tensor,
    x_T: torch.Tensor,
    num_inference_steps: int,
    clip_sample: float | None,
) -> torch.Tensor:
    """Run deterministic DDIM from `x_T` (B, C, H, W) keeping the autograd graph.

    `alpha_bar` is the (T,) cumulative product of the training schedule.
    `clip_sample`, when set, clamps each x0 estimate to that range like diffusers.
    A saturated clamp passes no gradient, so callers pass None to keep gradients
    flowing wherever the model allows it.
    """
    train_steps = alpha_bar.shape[0]
    steps = ddim_timesteps(train_steps, num_inference_steps)
    x_t = x_T
    for index, timestep in enumerate(steps):
        # 1. Predict the noise at this step.
        timesteps = torch.full((x_t.shape[0],), timestep, device=x_t.device, dtype=torch.long)
        eps_pred = predict_eps(x_t, timesteps)

        # 2. Estimate x0 and optionally clamp it.
        alpha_bar_t = alpha_bar[timestep]
        x0 = (x_t - (1.0 - alpha_bar_t).sqrt() * eps_pred) / alpha_bar_t.sqrt()
        if clip_sample is not None:
            x0 = x0.clamp(-clip_sample, clip_sample)

        # 3. Move to the previous timestep along the deterministic path.
        alpha_bar_prev = alpha_bar[steps[index + 1]] if index + 1 < len(steps) else alpha_bar.new_tensor(1.0)
        x_t = alpha_bar_prev.sqrt() * x0 + (1.0 - alpha_bar_prev).sqrt() * eps_pred
    return x_t
