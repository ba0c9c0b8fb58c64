import pytest
import torch
from diffusers import DDIMPipeline, DDPMScheduler

from terdguard.core.loading import load_model
from terdguard.core.sampling import differentiable_ddim, generate


@pytest.mark.parametrize("clip_sample", [False, True])
def test_generate_matches_diffusers_ddim_pipeline(tiny_model_dir, clip_sample):
    model = load_model(tiny_model_dir, device="cpu")
    config = dict(model.scheduler_config, clip_sample=clip_sample)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    images = generate(model.predict_eps, config, x_T, sampler="ddim", num_inference_steps=5)

    pipeline = DDIMPipeline(unet=model.unet, scheduler=DDPMScheduler.from_config(config))
    with torch.no_grad():
        scheduler = pipeline.scheduler
        scheduler.set_timesteps(5)
        x_t = x_T.clone()
        for timestep in scheduler.timesteps:
            x_t = scheduler.step(model.unet(x_t, timestep).sample, timestep, x_t, eta=0.0).prev_sample
    torch.testing.assert_close(images, x_t.clamp(-1, 1))


def test_differentiable_ddim_matches_generate_without_clipping(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu")
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.3
    reference = generate(model.predict_eps, model.scheduler_config, x_T, sampler="ddim", num_inference_steps=10)

    x_T.requires_grad_(True)
    x0 = differentiable_ddim(model.predict_eps, model.alpha_bar, x_T, 10, clip_sample=None)
    x0.sum().backward()

    torch.testing.assert_close(x0.detach().clamp(-1, 1), reference, atol=1e-5, rtol=1e-4)
    assert x_T.grad is not None
    assert torch.isfinite(x_T.grad).all()


def test_ddpm_sampling_is_seeded(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu")
    x_T = torch.zeros(1, 1, 8, 8)
    first = generate(
        model.predict_eps,
        model.scheduler_config,
        x_T,
        sampler="ddpm",
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(5),
    )
    second = generate(
        model.predict_eps,
        model.scheduler_config,
        x_T,
        sampler="ddpm",
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.equal(first, second)


@pytest.mark.parametrize("steps", [0, 101])
def test_generate_rejects_steps_out_of_range(tiny_model_dir, steps):
    model = load_model(tiny_model_dir, device="cpu")
    with pytest.raises(ValueError, match="expected 1 to 100"):
        generate(model.predict_eps, model.scheduler_config, torch.zeros(1, 1, 8, 8), num_inference_steps=steps)


def test_generate_rejects_unknown_sampler(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu")
    with pytest.raises(ValueError, match="sampler invalid"):
        generate(model.predict_eps, model.scheduler_config, torch.zeros(1, 1, 8, 8), sampler="euler")
