"""TERD trigger reversion: estimate the poisoned prior N(trigger_mean, trigger_std^2) without data.

Notation (code name, paper symbol):
    x0            x_0      surrogate clean image, drawn from N(0, I) in stage 1
    x_t           x_t      noised input fed to the model
    eps1, eps2    eps      two independent noises per surrogate image
    eps_pred      eps_theta(x_t, t)
    alpha_bar     abar_t
    trigger_mean  mu (r in BadDiffusion)
    trigger_std   gamma, one standard deviation per element
    l1_weight     lambda

Reversed loss, for x_i = sqrt(abar) x0 + sqrt(1 - abar) trigger_std eps_i + trigger_mean:
    L = 1/2 || (eps1 - eps_pred(x_1)) - (eps2 - eps_pred(x_2)) ||^2
summed over elements and averaged over the batch; the optimised objective is
L - l1_weight * ||trigger_mean||_1.

`unet_passes` counts forward calls of the UNet and `unet_samples` the images
they carried, so profiles compare on both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import ScanFailedError
from .loading import DiffusionModel
from .sampling import differentiable_ddim
from .search import StartSearch

PROFILES = ("fast", "paper")
STD_MIN = 0.05  # trigger_std is kept at or above this while optimising


@dataclass(frozen=True)
class ReversionConfig:
    """The schedule of one reversion profile.

    With `search` off this is the published method: stage 1 from a start uniform in
    (-1, 0], then stage 2. With `search` on (the fast profile) stage 1 starts from
    the basin or valley found by probing the model, described at `StartSearch.search`.
    """

    profile: str
    stage1_iterations: int
    stage2_iterations: int
    batch_size: int = 16
    lr_mean: float = 0.5
    lr_std: float = 0.001
    l1_weight: float | None = None  # None: 5e-5 up to 32 px, 5e-4 above
    ddim_steps: int = 10
    timestep_window: int = 10
    stage2_grad_clip: float = 0.01
    estimate_std: bool = True
    stop_patience: int | None = None  # stop a stage once the objective stalls this many iterations
    stop_tolerance: float = 1e-3  # relative improvement that counts as progress
    search: bool = False
    probe_iterations: int = 8
    probe_norms: tuple[float, ...] = (0.5, 0.75)  # probe shift norms, as fractions of sqrt(D)
    scan_max_norm: float = 1.25  # the ray scan reaches this fraction of sqrt(D)
    scan_points: int = 11
    basin_ratio: float = 3.0  # a barrier this many times above both ends marks a second basin
    probe_stds: tuple[float, ...] = (1.0, 0.6)  # trigger_std values the rays are scanned at
    valley_iterations: int = 0  # steps of the valley search for ODE backdoors; 0 skips it
    valley_lr: float = 0.05
    # A valley's loss is at most valley_ratio times the clean basin's, and the starts' loss at least
    # valley_contrast times the valley's: midway between the zoo's benign and ODE-backdoored models
    # in bench/fit_valley.py.
    valley_ratio: float = 1.8
    valley_contrast: float = 2.5
    fixed_point_iterations: int = 12
    max_batch: int = 512  # samples per UNet call; larger batches are split

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile invalid: got {self.profile!r}, expected one of {PROFILES}")
        if self.stage1_iterations < 1 or self.stage2_iterations < 0 or self.batch_size < 1:
            raise ValueError(
                f"schedule invalid: got stage1={self.stage1_iterations}, stage2={self.stage2_iterations}, "
                f"batch={self.batch_size}, expected stage1 >= 1, stage2 >= 0, batch >= 1"
            )

    @classmethod
    def paper(cls) -> ReversionConfig:
        """Return the published schedule: 3000 + 1000 iterations, batch 16, a start uniform in (-1, 0]."""
        return cls(profile="paper", stage1_iterations=3000, stage2_iterations=1000)

    @classmethod
    def fast(cls) -> ReversionConfig:
        """Our default: probe for a backdoor basin, then short stages that stop on convergence."""
        return cls(
            profile="fast", stage1_iterations=200, stage2_iterations=20, lr_mean=0.1, stop_patience=30, search=True,
            valley_iterations=80,
        )

    @classmethod
    def for_profile(cls, profile: str) -> ReversionConfig:
        if profile not in PROFILES:
            raise ValueError(f"profile invalid: got {profile!r}, expected one of {PROFILES}")
        return cls.paper() if profile == "paper" else cls.fast()

    def planned_iterations(self) -> int:
        return self.stage1_iterations + self.stage2_iterations

    def resolved_l1_weight(self, image_size: int) -> float:
        if self.l1_weight is not None:
            return self.l1_weight
        return 5e-5 if image_size <= 32 else 5e-4


@dataclass(frozen=True)
class ReversionProgress:
    """Progress sent to the callback after each optimisation iteration."""

    stage: int  # 0 while the fast profile searches for a start, then 1 and 2
    iteration: int  # iterations done over both stages
    planned: int  # iterations planned over both stages
    loss: float
    unet_passes: int


@dataclass(frozen=True)
class ReversedTrigger:
    """The outcome of a reversion run."""

    trigger_mean: torch.Tensor  # (C, H, W) float32 on the CPU
    trigger_std: torch.Tensor  # (C, H, W) float32 on the CPU
    loss: float  # reversed loss at the end
    start: str  # where stage 1 started: a probe start name, "zero" or "uniform_negative"
    iterations: int
    unet_passes: int  # forward calls of the UNet
    unet_samples: int  # images pushed through the UNet, over all calls
    seconds: float
    device: str


ProgressCallback = Callable[[ReversionProgress], None]


class _Reverser(StartSearch):
    """The optimisation state of one reversion run: the search, then the two stages."""

    # -- the two stages ---------------------------------------------------------------------

    def searched(self, loss: torch.Tensor) -> None:
        # Stage 0 is the search: no optimisation iteration is done yet, but UNet passes grow.
        if self.progress is not None:
            self.progress(
                ReversionProgress(0, 0, self.config.planned_iterations(), float(loss.min()), self.unet_passes)
            )

    def report(self, stage: int, loss: torch.Tensor) -> None:
        value = float(loss.detach().min())
        if not torch.isfinite(loss).all():
            raise ScanFailedError(
                f"reversion diverged: loss became {value} at stage {stage}, iteration {self.iteration}; "
                "the model returned non-finite outputs for shifted noise"
            )
        self.iteration += 1
        if self.progress is not None:
            self.progress(
                ReversionProgress(stage, self.iteration, self.config.planned_iterations(), value, self.unet_passes)
            )

    def run_stage(
        self, stage: int, trigger_mean: torch.Tensor, trigger_std: torch.Tensor, iterations: int
    ) -> torch.Tensor:
        """Optimise the (1, C, H, W) trigger in place; returns the last reversed loss (1,)."""
        config = self.config
        parameters = [{"params": [trigger_mean], "lr": config.lr_mean}]
        if config.estimate_std:
            parameters.append({"params": [trigger_std], "lr": config.lr_std})
        optimizer = torch.optim.SGD(parameters)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(iterations, 1))
        best, stalled = math.inf, 0
        loss = torch.zeros(1, device=self.device)
        for _ in range(iterations):
            # 1. Surrogate clean images: noise in stage 1, DDIM samples of the trigger in stage 2.
            if stage == 1:
                loss = self.reversed_loss(trigger_mean, trigger_std, self.randn(1, config.batch_size), last=True)
            else:
                x_T = trigger_mean + trigger_std * self.randn(config.batch_size)
                x0 = differentiable_ddim(self.predict, self.model.alpha_bar, x_T, config.ddim_steps, clip_sample=None)
                x0 = x0.unsqueeze(0)
                loss = 0.5 * (
                    self.reversed_loss(trigger_mean, trigger_std, x0, last=True)
                    + self.reversed_loss(trigger_mean, trigger_std, x0, last=False)
                )

            # 2. One step on the objective.
            optimizer.zero_grad(set_to_none=True)
            objective = self.objective(loss, trigger_mean).sum()
            objective.backward()
            if stage == 2:
                torch.nn.utils.clip_grad_norm_([trigger_mean, trigger_std], config.stage2_grad_clip)
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                trigger_std.clamp_(min=STD_MIN)
            self.report(stage, loss)

            # 3. Stop early once the objective has not improved for `stop_patience` iterations.
            if config.stop_patience is not None:
                value = objective.item()
                if value < best - config.stop_tolerance * max(abs(best), 1.0):
                    best, stalled = value, 0
                else:
                    stalled += 1
                if stalled >= config.stop_patience:
                    break
        return loss.detach()

    def run(self) -> ReversedTrigger:
        started = time.perf_counter()
        if self.config.search:
            mean, std, start = self.search()
        else:
            mean, std, start = self.rand() - 1.0, 1.0, "uniform_negative"
        trigger_mean = mean.unsqueeze(0).clone().requires_grad_(True)
        trigger_std = torch.full_like(trigger_mean, std).requires_grad_(True)

        loss = self.run_stage(1, trigger_mean, trigger_std, self.config.stage1_iterations)
        if self.config.stage2_iterations:
            loss = self.run_stage(2, trigger_mean, trigger_std, self.config.stage2_iterations)
        return ReversedTrigger(
            trigger_mean=trigger_mean.detach()[0].to("cpu", torch.float32),
            trigger_std=trigger_std.detach()[0].to("cpu", torch.float32),
            loss=float(loss[0]),
            start=start,
            iterations=self.iteration,
            unet_passes=self.unet_passes,
            unet_samples=self.unet_samples,
            seconds=time.perf_counter() - started,
            device=str(self.device),
        )


def reverse_trigger(
    model: DiffusionModel,
    config: ReversionConfig | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> ReversedTrigger:
    """Reverse the trigger of `model` with `config` (the fast profile by default).

    Deterministic on the CPU for a fixed seed. Raises ScanFailedError when the loss
    stops being finite.
    """
    config = config or ReversionConfig.fast()
    generator = torch.Generator(device=model.device).manual_seed(seed)
    with torch.enable_grad():
        return _Reverser(model, config, generator, progress).run()

