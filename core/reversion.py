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

PROFILES = ("fast", "paper")
PROBE_STARTS = ("uniform_positive", "uniform_negative", "normal_positive", "normal_negative")
STD_MIN = 0.05  # trigger_std is kept at or above this while optimising


@dataclass(frozen=True)
class ReversionConfig:
    """The schedule of one reversion profile.

    With `search` off this is the published method: stage 1 from a start uniform in
    (-1, 0], then stage 2. With `search` on (the fast profile) stage 1 starts from
    the best basin found by probing the model, described at `_Reverser.search`.
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
            profile="fast", stage1_iterations=200, stage2_iterations=20, lr_mean=0.1, stop_patience=30, search=True
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

    stage: int
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


class _Reverser:
    """The optimisation state of one reversion run."""

    def __init__(
        self,
        model: DiffusionModel,
        config: ReversionConfig,
        generator: torch.Generator,
        progress: ProgressCallback | None,
    ) -> None:
        self.model = model
        self.config = config
        self.generator = generator
        self.progress = progress
        self.shape = model.sample_shape
        self.device = model.device
        self.l1_weight = config.resolved_l1_weight(max(self.shape[1:]))
        self.unet_passes = 0
        self.unet_samples = 0
        self.iteration = 0

    # -- helpers ----------------------------------------------------------------------------

    def randn(self, *leading: int) -> torch.Tensor:
        return torch.randn((*leading, *self.shape), generator=self.generator, device=self.device)

    def rand(self, *leading: int) -> torch.Tensor:
        return torch.rand((*leading, *self.shape), generator=self.generator, device=self.device)

    def timesteps(self, count: int, last: bool) -> torch.Tensor:
        window = self.config.timestep_window
        low = self.model.num_train_timesteps - window if last else 0
        return torch.randint(low, low + window, (count,), generator=self.generator, device=self.device)

    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Run the UNet in chunks of at most `max_batch` samples, counting passes."""
        outputs = []
        for start in range(0, x_t.shape[0], self.config.max_batch):
            stop = start + self.config.max_batch
            self.unet_passes += 1
            self.unet_samples += x_t[start:stop].shape[0]
            outputs.append(self.model.predict_eps(x_t[start:stop], timesteps[start:stop]))
        return torch.cat(outputs)

    def reversed_loss(
        self, trigger_mean: torch.Tensor, trigger_std: torch.Tensor, x0: torch.Tensor, last: bool
    ) -> torch.Tensor:
        """Return L for each of N triggers (N,), given surrogate images `x0` (N, B, C, H, W).

        `trigger_mean` and `trigger_std` are (N, C, H, W). With `last`, timesteps
        come from the last window and the trigger is added. Otherwise they come from
        the first window and `x0` is noised as a clean image, as in stage 2's second term.
        """
        count, batch = x0.shape[:2]
        timesteps = self.timesteps(count * batch, last)
        alpha_bar = self.model.alpha_bar[timesteps].view(count, batch, 1, 1, 1)
        eps = self.randn(2, count, batch)
        noise_scale = (1.0 - alpha_bar).sqrt() * (trigger_std.unsqueeze(1) if last else 1.0)
        shift = trigger_mean.unsqueeze(1) if last else 0.0
        x_t = alpha_bar.sqrt() * x0 + noise_scale * eps + shift  # (2, N, B, C, H, W)
        eps_pred = self.predict(x_t.flatten(0, 2), timesteps.repeat(2)).view_as(x_t)
        residual = (eps[0] - eps_pred[0]) - (eps[1] - eps_pred[1])
        return 0.5 * residual.square().flatten(2).sum(dim=2).mean(dim=1)

    def objective(self, loss: torch.Tensor, trigger_mean: torch.Tensor) -> torch.Tensor:
        return loss - self.l1_weight * trigger_mean.abs().flatten(1).sum(dim=1)

    # -- fast start: probe the model for a second basin -----------------------------------------

    @torch.no_grad()
    def mean_residual(self, shifts: torch.Tensor, std: float) -> torch.Tensor:
        """Return E[x_t / sqrt(1 - abar) - eps_pred(x_t)] per shift (N, C, H, W), x_t = sqrt(1 - abar) std eps + shift.

        Near T a clean predictor returns about x_t / sqrt(1 - abar), so this is near
        zero for clean noise. Inside a backdoor's basin it is the constant the
        backdoor adds, which points along the trigger.
        """
        count, batch = shifts.shape[0], 2 * self.config.batch_size
        timesteps = self.timesteps(count * batch, last=True)
        scale = (1.0 - self.model.alpha_bar[timesteps]).sqrt().view(count, batch, 1, 1, 1)
        x_t = scale * std * self.randn(count, batch) + shifts.unsqueeze(1)
        eps_pred = self.predict(x_t.flatten(0, 1), timesteps).view_as(x_t)
        return (x_t / scale - eps_pred).mean(dim=1)

    def follow_residual(self, directions: torch.Tensor, norms: torch.Tensor, std: float) -> torch.Tensor:
        """Move unit directions (N, C, H, W) to where the model's residual at `norms` times them points."""
        for _ in range(self.config.probe_iterations):
            residual = self.mean_residual(directions * norms.view(-1, 1, 1, 1), std)
            directions = residual / residual.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return directions

    def probe_directions(self, std: float) -> tuple[torch.Tensor, list[str]]:
        """Return unit directions (N, C, H, W): each start, and where the residual leads it.

        Below std 1 the residual at the origin is a start too: noise narrower than
        N(0, I) is likelier under a TrojDiff-style prior, so the model's prediction
        leans toward that prior's mean.
        """
        root_dim = math.sqrt(math.prod(self.shape))
        starts = {
            "uniform_positive": self.rand(),
            "uniform_negative": self.rand() - 1.0,
            "normal_positive": self.randn(),
        }
        starts["normal_negative"] = -starts["normal_positive"]
        names = [name for name in PROBE_STARTS for _ in self.config.probe_norms]
        raw = torch.stack([starts[name] for name in names])
        norms = [norm * root_dim for _ in PROBE_STARTS for norm in self.config.probe_norms]
        if std < 1.0:
            raw = torch.cat([raw, self.mean_residual(torch.zeros(1, *self.shape, device=self.device), std)])
            names.append("origin")
            norms.append(self.config.probe_norms[0] * root_dim)
        raw = raw / raw.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        followed = self.follow_residual(raw, torch.tensor(norms, device=self.device), std)
        return torch.cat([followed, raw]), [f"probe_{name}" for name in names] + names

    @torch.no_grad()
    def ray_losses(self, directions: torch.Tensor, std: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the scan's scales (K,) and the reversed loss along each direction's ray (N, K)."""
        root_dim = math.sqrt(math.prod(self.shape))
        scales = torch.linspace(0.0, self.config.scan_max_norm * root_dim, self.config.scan_points, device=self.device)
        points = (scales.view(1, -1, 1, 1, 1) * directions.unsqueeze(1)).flatten(0, 1)
        x0 = self.randn(points.shape[0], self.config.batch_size)
        losses = self.reversed_loss(points, torch.full_like(points, std), x0, last=True)
        return scales, losses.view(directions.shape[0], -1)

    def second_basin(self, curve: list[float], clean_loss: float) -> tuple[int, float] | None:
        """Return (index, depth) of a basin on a loss curve that starts at the origin, or None.

        A basin is a stretch whose loss is `basin_ratio` times below both the
        highest loss before it and the clean basin's loss `clean_loss` (the origin
        at std 1). Depth is that highest loss over the basin's minimum, and the
        index returned is the minimum's.
        """
        for k in range(1, len(curve)):
            barrier = max(curve[:k])
            if barrier > self.config.basin_ratio * max(curve[k], clean_loss, 1e-6):
                floor = min(curve[k:])
                return k + curve[k:].index(floor), barrier - floor
        return None

    def search(self) -> tuple[torch.Tensor, float, str]:
        """Find a backdoor basin by scanning rays from the origin; return (trigger_mean, trigger_std, start).

        Along a ray s * direction, a backdoored model shows the reversed loss low at
        s = 0, a barrier where its two regimes mix, and a second minimum at the
        trigger. Rays are scanned at each std in `probe_stds`. Without any barrier
        the search returns the origin with std 1: the clean basin.

        NOTE: an ODE backdoor (VillanDiffusion for DDIM) is trained so that near T
        the model predicts the noise of poisoned input as a clean model would. No
        ray then shows a barrier, and such models come out clean.
        """
        origin = torch.zeros(1, *self.shape, device=self.device)
        with torch.no_grad():
            x0 = self.randn(1, 4 * self.config.batch_size)
            clean_loss = float(self.reversed_loss(origin, torch.ones_like(origin), x0, last=True)[0])
        found: list[tuple[float, torch.Tensor, float, str]] = []
        for std in self.config.probe_stds:
            directions, names = self.probe_directions(std)
            scales, curves = self.ray_losses(directions, std)
            for index, curve in enumerate(curves.tolist()):
                basin = self.second_basin(curve, clean_loss)
                if basin is not None:
                    found.append((basin[1], directions[index] * scales[basin[0]], std, names[index]))
        if not found:
            return torch.zeros(self.shape, device=self.device), 1.0, "zero"

        # Refine the deepest basin: inside it the residual points along the trigger.
        _, point, std, name = max(found, key=lambda item: item[0])
        norm = point.flatten().norm().view(1)
        direction = self.follow_residual((point / norm).unsqueeze(0), norm, std)
        scales, curves = self.ray_losses(direction, std)
        basin = self.second_basin(curves[0].tolist(), clean_loss)
        if basin is None:
            return point, std, name
        return direction[0] * scales[basin[0]], std, name

    # -- the two stages ---------------------------------------------------------------------

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

