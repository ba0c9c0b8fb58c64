from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel


def tiny_unet(seed: int = 0) -> UNet2DModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            block_out_channels=(8, 8),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
        )


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """An untrained 8x8 DDPMPipeline saved with safetensors weights."""
    directory = tmp_path / "tiny"
    scheduler = DDPMScheduler(num_train_timesteps=100, clip_sample=False)
    DDPMPipeline(unet=tiny_unet(), scheduler=scheduler).save_pretrained(directory, safe_serialization=True)
    return directory
