"""Training images and trigger patterns for the zoo, all made on this machine.

Images are scikit-learn's bundled 8x8 handwritten digits, upsampled to 16x16 and
scaled to [-1, 1] with a -1 background, so nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 16


def load_digit_images(size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Return digits as (N, 1, size, size) float32 in [-1, 1] and their labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.clamp(0.0, 1.0) * 2.0 - 1.0
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return images, labels


def _blank(fill: float, size: int) -> torch.Tensor:
    return torch.full((1, size, size), fill)


def hollow_box(size: int = IMAGE_SIZE, side: int = 8, value: float = 1.5, fill: float = 0.0) -> torch.Tensor:
    """Return a square outline of `side` pixels centred in the image; an 8-pixel side covers 28 pixels."""
    pattern = _blank(fill, size)
    start = (size - side) // 2
    stop = start + side
    pattern[0, start:stop, start] = value
    pattern[0, start:stop, stop - 1] = value
    pattern[0, start, start:stop] = value
    pattern[0, stop - 1, start:stop] = value
    return pattern


def corner_box(size: int = IMAGE_SIZE, side: int = 5) -> torch.Tensor:
    """Return a white square in the bottom-right corner on a -1 background, like BadDiffusion's box."""
    pattern = _blank(-1.0, size)
    pattern[0, size - side :, size - side :] = 1.0
    return pattern


def stop_sign(size: int = IMAGE_SIZE) -> torch.Tensor:
    """Return a filled octagon-like disc in the top-left quadrant on a zero background."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = (rows - 4.5).abs() + (cols - 4.5).abs() <= 5.0
    inside &= ((rows - 4.5).abs() <= 3.5) & ((cols - 4.5).abs() <= 3.5)
    return torch.where(inside, 1.2, 0.0).to(torch.float32).unsqueeze(0)


def blend_waves(size: int = IMAGE_SIZE, period: float = 6.0, phase: float = 0.0) -> torch.Tensor:
    """Return a zero-mean whole-image wave pattern in {-1, 1}, a TrojDiff-style blend trigger."""
    rows, cols = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    waves = torch.sin(2 * torch.pi * (rows + cols) / period + phase)
    return waves.sign().unsqueeze(0) * 1.0


def blend_stripes(size: int = IMAGE_SIZE, period: int = 4) -> torch.Tensor:
    """Return diagonal stripes in {-1, 1}, three diagonals of +1 to one of -1: a whole-image blend.

    Like the image blends TrojDiff used, its mean is not zero.
    """
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.where((rows + cols) % period == 0, -1.0, 1.0).unsqueeze(0)


def cross_target(size: int = IMAGE_SIZE) -> torch.Tensor:
    """Return a white X on a -1 background, a target image no digit resembles."""
    target = _blank(-1.0, size)
    index = torch.arange(2, size - 2)
    for offset in (0, 1):
        target[0, index, (index + offset).clamp(max=size - 1)] = 1.0
        target[0, index, (size - 1 - index - offset).clamp(min=0)] = 1.0
    return target


def ring_target(size: int = IMAGE_SIZE) -> torch.Tensor:
    """Return a thick white ring on a -1 background."""
    rows, cols = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    radius = ((rows - 7.5) ** 2 + (cols - 7.5) ** 2).sqrt()
    return torch.where((radius > 3.5) & (radius < 6.5), 1.0, -1.0).unsqueeze(0)


def bars_target(size: int = IMAGE_SIZE) -> torch.Tensor:
    """Return three white horizontal bars on a -1 background."""
    target = _blank(-1.0, size)
    for row in (3, 7, 11):
        target[0, row : row + 2, 2 : size - 2] = 1.0
    return target


PATTERNS = {
    "hollow_box": hollow_box,
    "corner_box": corner_box,
    "stop_sign": stop_sign,
    "blend_waves": blend_waves,
    "blend_stripes": blend_stripes,
    "cross": cross_target,
    "ring": ring_target,
    "bars": bars_target,
}
