"""Build zoo models: train, save as a diffusers pipeline, measure the attack, write the manifest."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDIMPipeline, DDPMPipeline
from safetensors.torch import load_file, save_file

from ..loading import WEIGHTS_NAME, DiffusionModel, load_model
from ..reversion import ReversionConfig
from ..sampling import generate
from ..scan import ScanReport, save_scan, scan_model
from . import MANIFEST_NAME, MODELS_DIR, TRIGGERS_DIR, read_manifest, zoo_model_dirs
from .catalog import ZooEntry
from .data import load_digit_images
from .train import TrainedModel, train_entry

logger = logging.getLogger(__name__)

TARGET_MSE = 0.1  # a sample counts as the target when its per-pixel MSE to it is below this
ATTACK_SAMPLES = 100
ATTACK_STEPS = {"ddpm": 1000, "ddim": 50}


@dataclass(frozen=True)
class AttackMeasurement:
    """How often poisoned and clean noise land on the target under the attack's sampler."""

    sampler: str
    num_inference_steps: int
    samples: int
    attack_success_rate: float
    clean_target_rate: float


def save_model(trained: TrainedModel, directory: Path) -> None:
    """Write the model as a diffusers pipeline with float16 safetensors weights."""
    pipeline_class = DDIMPipeline if trained.entry.scheduler_class == "DDIMScheduler" else DDPMPipeline
    pipeline = pipeline_class(unet=trained.unet, scheduler=trained.scheduler)
    pipeline.save_pretrained(directory, safe_serialization=True)
    # Halve the committed size; the loader casts back to float32.
    weights = directory / "unet" / WEIGHTS_NAME
    save_file({key: value.half() for key, value in load_file(str(weights)).items()}, str(weights))


def fit_digit_classifier() -> Callable[[torch.Tensor], torch.Tensor]:
    """Fit a logistic-regression digit classifier on the 16x16 digits; returns images -> labels."""
    from sklearn.linear_model import LogisticRegression

    images, labels = load_digit_images()
    classifier = LogisticRegression(max_iter=2000).fit(images.flatten(1).numpy(), labels.numpy())

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(classifier.predict(batch.flatten(1).cpu().numpy()))

    return predict


def target_hits(
    entry: ZooEntry, images: torch.Tensor, classify: Callable[[torch.Tensor], torch.Tensor] | None
) -> torch.Tensor:
    """Return a boolean (B,) telling which generated images are the attacker's target."""
    if entry.target_class is not None:
        assert classify is not None
        return classify(images) == entry.target_class
    target = entry.target_image().to(images)
    return (images - target).pow(2).flatten(1).mean(dim=1) < TARGET_MSE


def measure_attack(
    entry: ZooEntry,
    model: DiffusionModel,
    samples: int = ATTACK_SAMPLES,
    seed: int = 0,
    num_inference_steps: int | None = None,
) -> AttackMeasurement:
    """Sample poisoned and clean noise through the attack's sampler and count target hits."""
    attack = entry.attack()
    if attack is None:
        raise ValueError(f"zoo model {entry.name!r} carries no attack to measure")
    steps = num_inference_steps or ATTACK_STEPS[entry.attack_sampler]
    classify = fit_digit_classifier() if entry.target_class is not None else None
    generator = torch.Generator(device="cpu").manual_seed(seed)
    eps = torch.randn((samples, *model.sample_shape), generator=generator)
    rates = []
    for x_T in (attack.poisoned_noise(eps), eps):
        images = generate(
            model.predict_eps,
            model.scheduler_config,
            x_T.to(model.device),
            sampler=entry.attack_sampler,
            num_inference_steps=steps,
            generator=generator,
        )
        rates.append(float(target_hits(entry, images, classify).double().mean()))
    return AttackMeasurement(entry.attack_sampler, steps, samples, rates[0], rates[1])


def write_manifest(
    entry: ZooEntry, model: DiffusionModel, trained: TrainedModel, measurement: AttackMeasurement | None
) -> dict:
    attack = entry.attack()
    manifest = {
        "name": entry.name,
        "description": entry.description,
        "backdoored": entry.backdoored,
        "attack": entry.attack_kind,
        "trigger_mean": attack.trigger_mean.tolist() if attack else None,
        "trigger_std": attack.trigger_std if attack else None,
        "trigger_norm": float(attack.trigger_mean.norm()) if attack else None,
        "target": entry.target,
        "target_image": entry.target_image().tolist() if entry.target else None,
        "target_class": entry.target_class,
        "architecture": entry.architecture,
        "seed": entry.seed,
        "train_steps": entry.train_steps,
        "train_seconds": round(trained.seconds, 1),
        "final_loss": round(trained.final_loss, 5),
        "fingerprint": model.fingerprint,
        "attack_measurement": asdict(measurement) if measurement else None,
    }
    (model.source / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def build_entry(
    entry: ZooEntry, models_dir: Path = MODELS_DIR, progress: Callable[[int, int, float], None] | None = None
) -> dict:
    """Train `entry`, save it under `models_dir/entry.name`, measure its attack and return its manifest."""
    trained = train_entry(entry, progress=progress)
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=models_dir))
    save_model(trained, staging)
    model = load_model(staging, device="cpu")
    measurement = measure_attack(entry, model) if entry.backdoored else None
    final = models_dir / entry.name
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    model = load_model(final, device="cpu")
    manifest = write_manifest(entry, model, trained, measurement)
    logger.info("built zoo model name=%s fingerprint=%s", entry.name, model.fingerprint[:12])
    return manifest


def refresh_trigger(model_dir: Path, seed: int = 0) -> ScanReport:
    """Scan a zoo model with the fast profile and store the result as its shipped trigger.

    Triggers in TRIGGERS_DIR that match no built zoo model are removed.
    """
    model = load_model(model_dir, device="auto")
    result = scan_model(model, ReversionConfig.fast(), seed=seed)
    save_scan(result, TRIGGERS_DIR)
    current = {read_manifest(path)["fingerprint"] for path in zoo_model_dirs().values()}
    for path in TRIGGERS_DIR.glob("*.safetensors"):
        if path.stem not in current:
            path.unlink()
            path.with_suffix(".png").unlink(missing_ok=True)
    return result.report
