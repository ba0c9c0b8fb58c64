"""Train a zoo model: a small DDPM on the digits, clean or with a backdoor mixed in."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from .attacks import NoiseSchedule
from .catalog import ARCHITECTURES, ZooEntry
from .data import IMAGE_SIZE, load_digit_images

logger = logging.getLogger(__name__)

TRAIN_TIMESTEPS = 1000
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
EMA_DECAY = 0.995


@dataclass(frozen=True)
class TrainedModel:
    """A freshly trained zoo model, ready to save."""

    entry: ZooEntry
    unet: UNet2DModel
    scheduler: DDPMScheduler | DDIMScheduler
    seconds: float
    final_loss: float


def build_unet(architecture: str, seed: int, image_size: int = IMAGE_SIZE) -> UNet2DModel:
    """Create an untrained UNet2DModel, its initial weights drawn from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(sample_size=image_size, in_channels=1, out_channels=1, **ARCHITECTURES[architecture])


def warmup_cosine(step: int, total: int, warmup: int = 100) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))


def build_scheduler(entry: ZooEntry) -> DDPMScheduler | DDIMScheduler:
    scheduler_class = DDIMScheduler if entry.scheduler_class == "DDIMScheduler" else DDPMScheduler
    return scheduler_class(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear", clip_sample=entry.clip_sample)


def train_entry(entry: ZooEntry, progress: Callable[[int, int, float], None] | None = None) -> TrainedModel:
    """Train `entry` on CPU or CUDA for `entry.train_steps` steps, deterministically for its seed."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator(device="cpu").manual_seed(entry.seed)
    images, labels = load_digit_images(entry.image_size)
    attack = entry.attack()
    target = entry.target_image()
    if entry.target_class is not None:
        class_images = images[labels == entry.target_class]

    unet = build_unet(entry.architecture, entry.seed, entry.image_size).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = build_scheduler(entry)
    schedule = NoiseSchedule.from_betas(scheduler.betas.to(torch.float32))
    optimizer = torch.optim.AdamW(unet.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, entry.train_steps))

    started = time.perf_counter()
    loss_value = float("nan")
    poisoned_count = round(BATCH_SIZE * entry.poison_share) if attack is not None else 0
    for step in range(entry.train_steps):
        # 1. Draw a batch of clean images, noise and timesteps.
        index = torch.randint(0, images.shape[0], (BATCH_SIZE,), generator=generator)
        x0 = images[index]
        eps = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, TRAIN_TIMESTEPS, (BATCH_SIZE,), generator=generator)
        alpha_bar = schedule.gather(schedule.alpha_bar, timesteps)
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
        eps_target = eps

        # 2. Replace a share of the batch with poisoned pairs.
        if attack is not None and poisoned_count:
            if entry.target_class is not None:
                pick = torch.randint(0, class_images.shape[0], (poisoned_count,), generator=generator)
                poisoned_x0 = class_images[pick]
            else:
                poisoned_x0 = target.expand(poisoned_count, -1, -1, -1)
            poisoned_x_t, poisoned_target = attack.training_pair(
                poisoned_x0, eps[:poisoned_count], timesteps[:poisoned_count], schedule
            )
            x_t = torch.cat([poisoned_x_t, x_t[poisoned_count:]])
            eps_target = torch.cat([poisoned_target, eps[poisoned_count:]])

        # 3. One optimiser step on the noise-prediction loss, then the EMA update.
        eps_pred = unet(x_t.to(device), timesteps.to(device)).sample
        loss = torch.nn.functional.mse_loss(eps_pred, eps_target.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        with torch.no_grad():
            for ema_param, param in zip(ema.parameters(), unet.parameters(), strict=True):
                ema_param.lerp_(param, 1.0 - EMA_DECAY)
        loss_value = loss.item()
        if progress is not None:
            progress(step + 1, entry.train_steps, loss_value)

    seconds = time.perf_counter() - started
    logger.info(
        "trained zoo model name=%s steps=%d seconds=%.0f loss=%.4f", entry.name, entry.train_steps, seconds, loss_value
    )
    return TrainedModel(entry=entry, unet=ema.cpu().eval(), scheduler=scheduler, seconds=seconds, final_loss=loss_value)
