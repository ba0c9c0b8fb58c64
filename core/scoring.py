"""Input detection: the log-likelihood ratio of initial noise under the reversed trigger.

For x = x_T with D = C*H*W elements,
    llr = log N(x; trigger_mean, diag(trigger_std^2)) - log N(x; 0, I)
        = sum_i a_i x_i^2 + b_i x_i + c_i
with a_i = (1 - 1/trigger_std_i^2) / 2, b_i = trigger_mean_i / trigger_std_i^2 and
c_i = -trigger_mean_i^2 / (2 trigger_std_i^2) - log trigger_std_i. Scoring is
therefore two length-D dot products per sample, accumulated in float64. On the CPU
the float32 latents are widened to float64 one column block at a time, so the
float64 copy is one block, not the whole batch, and BLAS sums each block.

The Neyman-Pearson threshold is the (1 - false_positive_rate) quantile of llr under
x ~ N(0, I). llr is then a generalized chi-square variable; its upper tail comes
from the Lugannani-Rice saddlepoint approximation, exact when trigger_std is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .detection import STD_FLOOR
from .errors import InvalidLatentsError

THRESHOLD_RULES = ("zero", "neyman-pearson")
# Columns widened to float64 at a time: the fastest of 4,096 to 65,536 in bench/bench_scoring.py.
BLOCK_ELEMENTS = 16384


@dataclass(frozen=True)
class LlrScorer:
    """Precomputed per-element coefficients for scoring batches (B, C, H, W)."""

    quadratic: torch.Tensor | None  # a, (D,) float64, None when every trigger_std is 1
    linear: torch.Tensor  # b, (D,) float64
    offset: float  # sum of c
    sample_shape: tuple[int, ...]

    @classmethod
    def from_trigger(cls, trigger_mean: torch.Tensor, trigger_std: torch.Tensor) -> LlrScorer:
        mean = trigger_mean.double().flatten()
        std = trigger_std.double().clamp_min(STD_FLOOR).flatten()
        variance = std.square()
        quadratic = (1.0 - 1.0 / variance) / 2.0
        offset = float((-mean.square() / (2.0 * variance) - std.log()).sum())
        has_quadratic = bool(quadratic.abs().max() > 0)
        return cls(
            quadratic=quadratic if has_quadratic else None,
            linear=mean / variance,
            offset=offset,
            sample_shape=tuple(trigger_mean.shape),
        )

    def to(self, device: torch.device | str) -> LlrScorer:
        return LlrScorer(
            quadratic=None if self.quadratic is None else self.quadratic.to(device),
            linear=self.linear.to(device),
            offset=self.offset,
            sample_shape=self.sample_shape,
        )

    def score(self, x_T: torch.Tensor) -> torch.Tensor:
        """Return llr (B,) in float64 for initial noise `x_T` of shape (B, C, H, W)."""
        if tuple(x_T.shape[1:]) != self.sample_shape or x_T.dim() != len(self.sample_shape) + 1:
            raise InvalidLatentsError(
                f"latents shape invalid: got {tuple(x_T.shape)}, expected (B, {', '.join(map(str, self.sample_shape))})"
            )
        if self.linear.device.type != "cpu":
            x = x_T.reshape(x_T.shape[0], -1).to(device=self.linear.device, dtype=torch.float64)
            if self.quadratic is None:
                return x @ self.linear + self.offset
            return (x * torch.addcmul(self.linear, self.quadratic, x)).sum(dim=1) + self.offset
        return torch.from_numpy(self._score_blocks(x_T.detach().reshape(x_T.shape[0], -1).cpu().numpy()))

    def _score_blocks(self, x: np.ndarray) -> np.ndarray:
        """Return llr (B,) for CPU latents (B, D), widening one column block at a time."""
        linear = self.linear.numpy()
        quadratic = None if self.quadratic is None else self.quadratic.numpy()
        llr = np.full(x.shape[0], self.offset)
        for start in range(0, x.shape[1], BLOCK_ELEMENTS):
            stop = start + BLOCK_ELEMENTS
            block = x[:, start:stop].astype(np.float64)
            llr += block @ linear[start:stop]
            if quadratic is not None:
                llr += np.square(block, out=block) @ quadratic[start:stop]
        return llr


def _cumulants(scorer: LlrScorer, t: float) -> tuple[float, float, float]:
    """Return K(t), K'(t), K''(t) of llr under N(0, I) at saddlepoint parameter t."""
    b = scorer.linear
    a = scorer.quadratic if scorer.quadratic is not None else torch.zeros_like(b)
    denominator = 1.0 - 2.0 * a * t
    cgf = (-0.5 * denominator.log() + 0.5 * b.square() * t * t / denominator).sum() + scorer.offset * t
    first = (a / denominator + b.square() * t * (1.0 - a * t) / denominator.square()).sum() + scorer.offset
    second = (2.0 * a.square() / denominator.square() + b.square() / denominator.pow(3)).sum()
    return float(cgf), float(first), float(second)


def _upper_tail(scorer: LlrScorer, t: float) -> tuple[float, float]:
    """Return (x, P(llr > x)) at the saddlepoint t > 0, by Lugannani-Rice."""
    cgf, x, second = _cumulants(scorer, t)
    w = math.sqrt(max(2.0 * (t * x - cgf), 0.0))
    u = t * math.sqrt(second)
    normal = torch.distributions.Normal(0.0, 1.0)
    tail = 1.0 - float(normal.cdf(torch.tensor(w, dtype=torch.float64)))
    if w > 1e-6 and u > 1e-6:
        tail += math.exp(-0.5 * w * w) / math.sqrt(2 * math.pi) * (1.0 / u - 1.0 / w)
    return x, tail


def neyman_pearson_threshold(scorer: LlrScorer, false_positive_rate: float) -> float:
    """Return the llr threshold that flags a share `false_positive_rate` of N(0, I) noise."""
    if not 0.0 < false_positive_rate < 0.5:
        raise ValueError(f"false_positive_rate invalid: got {false_positive_rate}, expected 0 < rate < 0.5")
    scorer = scorer.to("cpu")
    if scorer.quadratic is None:
        # llr = b.x + c is exactly normal with mean c and variance ||b||^2.
        z = float(
            torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - false_positive_rate, dtype=torch.float64))
        )
        return scorer.offset + z * float(scorer.linear.norm())

    # Bisect on the saddlepoint parameter t, inside 1 - 2 a_i t > 0 for every i.
    a_max = float(scorer.quadratic.max())
    t_high = 0.5 / a_max * (1 - 1e-9) if a_max > 0 else 1.0
    while a_max <= 0 and _upper_tail(scorer, t_high)[1] > false_positive_rate:
        t_high *= 2.0
    t_low = 1e-12
    for _ in range(200):
        t_mid = 0.5 * (t_low + t_high)
        if _upper_tail(scorer, t_mid)[1] > false_positive_rate:
            t_low = t_mid
        else:
            t_high = t_mid
    return _upper_tail(scorer, 0.5 * (t_low + t_high))[0]


def decide(llr: torch.Tensor, threshold: float) -> torch.Tensor:
    """Return True where a sample is flagged as poisoned (llr above the threshold)."""
    return llr > threshold
