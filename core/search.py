"""The fast profile's start search: a probe of the model for a backdoor's basin or valley.

`TriggerProbe` keeps what a reversion run shares (model, RNG, UNet counters) and
the reversed loss. `StartSearch` adds the search: ray scans for a second loss
basin behind a barrier (DDPM backdoors such as BadDiffusion and TrojDiff), then,
when none shows, a search for the low-loss valley that an ODE backdoor leaves.
The notation is the one in `reversion`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .loading import DiffusionModel
from .sampling import differentiable_ddim

if TYPE_CHECKING:
    from .reversion import ProgressCallback, ReversionConfig

PROBE_STARTS = ("uniform_positive", "uniform_negative", "normal_positive", "normal_negative")


def unit(directions: torch.Tensor) -> torch.Tensor:
    """Return each of N directions (N, C, H, W) scaled to norm 1."""
    return directions / directions.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


@dataclass(frozen=True)
class Valley:
    """The outcome of the valley search: a point, its loss over the clean basin's, the starts' over its."""

    point: torch.Tensor  # (C, H, W)
    ratio: float
    contrast: float

    def found(self, config: ReversionConfig) -> bool:
        return self.ratio <= config.valley_ratio and self.contrast >= config.valley_contrast


class TriggerProbe:
    """The state one reversion run shares between its search and its stages: model, RNG, counters."""

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


class StartSearch(TriggerProbe):
    """The fast profile's search for where stage 1 starts."""

    def searched(self, loss: torch.Tensor) -> None:
        """Hook called after each search step with its losses; the reverser reports it as stage 0 progress."""

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
            directions = unit(residual)
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
        raw = unit(raw)
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

    @torch.no_grad()
    def clean_loss(self) -> float:
        """Return the reversed loss at the origin with std 1: the clean basin's level."""
        origin = torch.zeros(1, *self.shape, device=self.device)
        x0 = self.randn(1, 4 * self.config.batch_size)
        return float(self.reversed_loss(origin, torch.ones_like(origin), x0, last=True)[0])

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

        When no ray shows a barrier, `valley` looks for an ODE backdoor instead.
        """
        clean_loss = self.clean_loss()
        found: list[tuple[float, torch.Tensor, float, str]] = []
        for std in self.config.probe_stds:
            directions, names = self.probe_directions(std)
            scales, curves = self.ray_losses(directions, std)
            self.searched(curves)
            for index, curve in enumerate(curves.tolist()):
                basin = self.second_basin(curve, clean_loss)
                if basin is not None:
                    found.append((basin[1], directions[index] * scales[basin[0]], std, names[index]))
        if not found:
            valley = self.valley(clean_loss) if self.config.valley_iterations else None
            if valley is None or not valley.found(self.config):
                return torch.zeros(self.shape, device=self.device), 1.0, "zero"
            return self.ode_trigger(valley.point), 1.0, "valley"

        # Refine the deepest basin: inside it the residual points along the trigger.
        _, point, std, name = max(found, key=lambda item: item[0])
        norm = point.flatten().norm().view(1)
        direction = self.follow_residual((point / norm).unsqueeze(0), norm, std)
        scales, curves = self.ray_losses(direction, std)
        basin = self.second_basin(curves[0].tolist(), clean_loss)
        if basin is None:
            return point, std, name
        return direction[0] * scales[basin[0]], std, name

    def unit_starts(self) -> torch.Tensor:
        """Return one unit direction (4, C, H, W) per probe start, freshly drawn."""
        positive, normal = self.rand(), self.randn()
        return unit(torch.stack([positive, positive - 1.0, normal, -normal]))

    def valley(self, clean_loss: float) -> Valley:
        """Search for an ODE backdoor's valley of low loss; `Valley.found` decides whether there is one.

        An ODE backdoor (VillanDiffusion for DDIM) is trained so that near T the
        model predicts the noise of r + eps just as a clean model predicts that of
        clean noise. Along r the reversed loss therefore stays near the clean basin's.
        In other directions, at the same norm, the input lies off the data and the
        loss rises. On the sphere of radius `probe_norms[0]` * sqrt(D) this
        minimises the loss over directions from each probe start. A valley is a
        direction whose loss stays within `valley_ratio` of `clean_loss` while
        the starts were `valley_contrast` times higher. The point is the mean of
        the directions found, at that radius.
        """
        config = self.config
        # NOTE: one radius only. A held-out ODE trigger of norm sqrt(D) was found with cosine 0.49 only.
        radius = config.probe_norms[0] * math.sqrt(math.prod(self.shape))
        directions = self.unit_starts()
        stds = torch.ones_like(directions)
        count = directions.shape[0]
        with torch.no_grad():
            start_loss = float(self.reversed_loss(radius * directions, stds, self.randn(count, 4 * config.batch_size),
                                                  last=True).mean())
        directions.requires_grad_(True)
        optimizer = torch.optim.Adam([directions], lr=config.valley_lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.valley_iterations)
        for _ in range(config.valley_iterations):
            loss = self.reversed_loss(radius * directions, stds, self.randn(count, config.batch_size), last=True)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                directions.copy_(unit(directions))
            self.searched(loss.detach())

        with torch.no_grad():
            directions = directions.detach()
            losses = self.reversed_loss(radius * directions, stds, self.randn(count, 8 * config.batch_size), last=True)
        best = max(float(losses.min()), 1e-12)
        mean = directions.mean(dim=0)
        return Valley(point=radius * mean / mean.norm().clamp_min(1e-12), ratio=best / max(clean_loss, 1e-12),
                      contrast=start_loss / best)

    @torch.no_grad()
    def ode_trigger(self, point: torch.Tensor) -> torch.Tensor:
        """Refine a point (C, H, W) in an ODE backdoor's valley into the trigger it leads to.

        The target y is read off the sampler: the mean deterministic DDIM sample
        from point + eps. On the poisoned path x_t = sqrt(abar) y + (1 - sqrt(abar)) r
        + sqrt(1 - abar) eps, a backdoor that fires under DDIM predicts
        eps + sqrt(1 - abar) r, so at the middle timestep the trigger is the fixed
        point of r <- E[eps_pred - eps] / sqrt(1 - abar).
        """
        config = self.config
        batch = 4 * config.batch_size
        target = differentiable_ddim(
            self.predict, self.model.alpha_bar, point + self.randn(batch), config.ddim_steps, clip_sample=None
        ).mean(dim=0)
        timestep = self.model.num_train_timesteps // 2
        timesteps = torch.full((batch,), timestep, device=self.device, dtype=torch.long)
        alpha_bar = self.model.alpha_bar[timestep]
        trigger = point
        for _ in range(config.fixed_point_iterations):
            eps = self.randn(batch)
            x_t = alpha_bar.sqrt() * target + (1.0 - alpha_bar.sqrt()) * trigger + (1.0 - alpha_bar).sqrt() * eps
            trigger = (self.predict(x_t, timesteps) - eps).mean(dim=0) / (1.0 - alpha_bar).sqrt()
        return trigger
