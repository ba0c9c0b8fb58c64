"""A whole scan: reverse the trigger, decide the verdict, fit the input threshold, store the result."""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .detection import Detection, DetectionThresholds, detect
from .errors import TriggerFileError
from .loading import DiffusionModel
from .reversion import ProgressCallback, ReversionConfig, reverse_trigger
from .scoring import LlrScorer, neyman_pearson_threshold
from .triggers import StoredTrigger, load_trigger, render_png, save_trigger, trigger_path, write_atomic

DEFAULT_FALSE_POSITIVE_RATE = 1e-3


@dataclass(frozen=True)
class ScanReport:
    """Everything a scan decided, as stored beside the trigger and reported to users."""

    fingerprint: str
    verdict: str
    kl_mean: float
    kl_var: float
    kl_mean_threshold: float
    kl_var_threshold: float
    llr_threshold: float  # Neyman-Pearson threshold at false_positive_rate
    false_positive_rate: float
    trigger_norm: float
    profile: str
    seed: int
    start: str
    iterations: int
    unet_passes: int
    unet_samples: int
    seconds: float
    device: str
    loss: float
    created: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScanResult:
    """A scan's report with the reversed trigger tensors, each (C, H, W)."""

    report: ScanReport
    trigger_mean: torch.Tensor
    trigger_std: torch.Tensor

    def scorer(self) -> LlrScorer:
        return LlrScorer.from_trigger(self.trigger_mean, self.trigger_std)

    def stored(self) -> StoredTrigger:
        return StoredTrigger(self.trigger_mean, self.trigger_std, self.report.to_dict())

    def png(self) -> bytes:
        return render_png(self.trigger_mean, self.trigger_std)


def scan_model(
    model: DiffusionModel,
    config: ReversionConfig | None = None,
    seed: int = 0,
    thresholds: DetectionThresholds | None = None,
    false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE,
    progress: ProgressCallback | None = None,
) -> ScanResult:
    """Reverse `model`'s trigger and decide whether the model is backdoored."""
    config = config or ReversionConfig.fast()
    reversed_trigger = reverse_trigger(model, config, seed=seed, progress=progress)
    detection: Detection = detect(reversed_trigger.trigger_mean, reversed_trigger.trigger_std, thresholds)
    scorer = LlrScorer.from_trigger(reversed_trigger.trigger_mean, reversed_trigger.trigger_std)
    report = ScanReport(
        fingerprint=model.fingerprint,
        verdict=detection.verdict,
        kl_mean=detection.kl_mean,
        kl_var=detection.kl_var,
        kl_mean_threshold=detection.thresholds.kl_mean,
        kl_var_threshold=detection.thresholds.kl_var,
        llr_threshold=neyman_pearson_threshold(scorer, false_positive_rate),
        false_positive_rate=false_positive_rate,
        trigger_norm=float(reversed_trigger.trigger_mean.norm()),
        profile=config.profile,
        seed=seed,
        start=reversed_trigger.start,
        iterations=reversed_trigger.iterations,
        unet_passes=reversed_trigger.unet_passes,
        unet_samples=reversed_trigger.unet_samples,
        seconds=round(reversed_trigger.seconds, 3),
        device=reversed_trigger.device,
        loss=reversed_trigger.loss,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    return ScanResult(report, reversed_trigger.trigger_mean, reversed_trigger.trigger_std)


def save_scan(result: ScanResult, directory: Path) -> Path:
    """Store the trigger under `directory/<fingerprint>.safetensors` and its PNG beside it."""
    path = trigger_path(directory, result.report.fingerprint)
    save_trigger(path, result.stored())
    write_atomic(path.with_suffix(".png"), result.png())
    return path


def load_scan(path: Path, fingerprint: str | None = None) -> ScanResult:
    """Read a stored scan back; raises TriggerFileError when it is missing or not this model's."""
    stored = load_trigger(path, fingerprint)
    fields = {name: stored.metadata[name] for name in ScanReport.__dataclass_fields__ if name in stored.metadata}
    missing = set(ScanReport.__dataclass_fields__) - set(fields)
    if missing:
        raise TriggerFileError(f"trigger file invalid: {path} lacks report fields {sorted(missing)}")
    return ScanResult(ScanReport(**fields), stored.trigger_mean, stored.trigger_std)
