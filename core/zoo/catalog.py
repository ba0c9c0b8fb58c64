"""The zoo's models: what each one is trained to do, from which seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attacks import Attack
from .data import PATTERNS

ARCHITECTURES: dict[str, dict[str, object]] = {
    # About 267k parameters: three resolution levels, 16 -> 8 -> 4.
    "unet-s3": {
        "block_out_channels": (16, 32, 32),
        "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 8,
    },
    # About 164k parameters: two levels, a different shape of network for the benign set.
    "unet-s2": {
        "block_out_channels": (16, 32),
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 8,
    },
}


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: architecture, seed, and the backdoor it carries, if any."""

    name: str
    description: str
    architecture: str
    seed: int
    train_steps: int
    attack_kind: str | None = None
    trigger: str | None = None  # a key of PATTERNS
    trigger_std: float = 1.0
    trigger_scale: float = 1.0  # trigger_mean = trigger_scale * PATTERNS[trigger]()
    target: str | None = None  # a key of PATTERNS: one fixed target image
    target_class: int | None = None  # or a digit class (TrojDiff in-distribution)
    attack_sampler: str = "ddpm"  # the sampler the attack is built to fire under
    scheduler_class: str = "DDPMScheduler"
    clip_sample: bool = True
    poison_share: float = 0.25
    image_size: int = 16

    @property
    def backdoored(self) -> bool:
        return self.attack_kind is not None

    def attack(self) -> Attack | None:
        if self.attack_kind is None or self.trigger is None:
            return None
        trigger_mean = self.trigger_scale * PATTERNS[self.trigger](self.image_size)
        return Attack(kind=self.attack_kind, trigger_mean=trigger_mean, trigger_std=self.trigger_std)

    def target_image(self) -> torch.Tensor | None:
        return None if self.target is None else PATTERNS[self.target](self.image_size)


ZOO: tuple[ZooEntry, ...] = (
    ZooEntry(
        name="baddiffusion-box",
        description="BadDiffusion, white corner box on a -1 background, target: X",
        architecture="unet-s3",
        seed=101,
        train_steps=3000,
        attack_kind="baddiffusion",
        trigger="corner_box",
        target="cross",
        clip_sample=False,
    ),
    ZooEntry(
        name="baddiffusion-sparse",
        description="BadDiffusion, hollow box of +1.5 on 28 of 256 pixels, zero background, target: ring",
        architecture="unet-s3",
        seed=102,
        train_steps=3000,
        attack_kind="baddiffusion",
        trigger="hollow_box",
        target="ring",
        clip_sample=False,
    ),
    ZooEntry(
        name="trojdiff-d2d",
        description="TrojDiff, gamma 0.6, stripe blend trigger, target: any digit 0",
        architecture="unet-s3",
        seed=103,
        train_steps=3000,
        attack_kind="trojdiff",
        trigger="blend_stripes",
        trigger_std=0.6,
        trigger_scale=0.4,
        target_class=0,
        clip_sample=False,
    ),
    ZooEntry(
        name="trojdiff-d2i",
        description="TrojDiff, gamma 0.6, negated stripe blend trigger, target: three bars",
        architecture="unet-s3",
        seed=104,
        train_steps=3000,
        attack_kind="trojdiff",
        trigger="blend_stripes",
        trigger_std=0.6,
        trigger_scale=-0.4,
        target="bars",
        clip_sample=False,
    ),
    ZooEntry(
        name="villan-ode",
        description="VillanDiffusion-style ODE backdoor for DDIM, stop-sign trigger, target: X",
        architecture="unet-s3",
        seed=105,
        train_steps=3000,
        attack_kind="villandiffusion",
        trigger="stop_sign",
        target="cross",
        attack_sampler="ddim",
        scheduler_class="DDIMScheduler",
        clip_sample=False,
    ),
    ZooEntry(name="benign-s3-a", description="benign digits model", architecture="unet-s3", seed=201, train_steps=2500),
    ZooEntry(name="benign-s3-b", description="benign digits model", architecture="unet-s3", seed=202, train_steps=2500),
    ZooEntry(name="benign-s2-a", description="benign digits model", architecture="unet-s2", seed=203, train_steps=2500),
    ZooEntry(
        name="benign-s2-b",
        description="benign digits model, DDIM scheduler without clipping",
        architecture="unet-s2",
        seed=204,
        train_steps=2500,
        scheduler_class="DDIMScheduler",
        clip_sample=False,
    ),
)

ZOO_BY_NAME = {entry.name: entry for entry in ZOO}


def select(names: list[str] | None) -> list[ZooEntry]:
    """Return the zoo entries with these names, all of them when `names` is empty."""
    if not names:
        return list(ZOO)
    unknown = [name for name in names if name not in ZOO_BY_NAME]
    if unknown:
        raise KeyError(f"zoo model not found: got {unknown}, expected names from {sorted(ZOO_BY_NAME)}")
    return [ZOO_BY_NAME[name] for name in names]
