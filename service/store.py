"""The trigger store: reversed triggers on disk, keyed by model fingerprint, and what the guard derives from them.

The verdict and the input threshold are recomputed from the stored tensors with
the service's current settings, so changing a threshold setting needs no rescan.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terdguard.core.detection import DetectionThresholds, detect
from terdguard.core.errors import TriggerFileError
from terdguard.core.scan import ScanResult, load_scan, save_scan
from terdguard.core.scoring import LlrScorer, neyman_pearson_threshold
from terdguard.core.triggers import render_png, trigger_path, write_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardTrigger:
    """A model's reversed trigger with the scorer, input threshold and verdict the service uses."""

    result: ScanResult
    scorer: LlrScorer
    llr_threshold: float
    threshold_rule: str
    false_positive_rate: float
    verdict: str
    kl_mean: float
    kl_var: float
    thresholds: DetectionThresholds

    def statistics(self) -> dict[str, Any]:
        """Return the scan report as the registry stores it, with the verdict and KL thresholds of these settings."""
        report = self.result.report.to_dict()
        report.update(
            verdict=self.verdict,
            kl_mean=self.kl_mean,
            kl_var=self.kl_var,
            kl_mean_threshold=self.thresholds.kl_mean,
            kl_var_threshold=self.thresholds.kl_var,
        )
        for derived in ("llr_threshold", "false_positive_rate", "fingerprint"):
            report.pop(derived, None)
        return report


class TriggerStore:
    """Reads and writes `<fingerprint>.safetensors` trigger files in one folder, with an in-memory cache."""

    def __init__(self, directory: Path, thresholds: DetectionThresholds, threshold_rule: str,
                 false_positive_rate: float) -> None:
        self.directory = Path(directory)
        self._thresholds = thresholds
        self._rule = threshold_rule
        self._false_positive_rate = false_positive_rate
        self._cache: dict[str, GuardTrigger] = {}
        self._lock = threading.Lock()

    def path(self, fingerprint: str) -> Path:
        return trigger_path(self.directory, fingerprint)

    def has(self, fingerprint: str) -> bool:
        return self.path(fingerprint).is_file()

    def save(self, result: ScanResult) -> GuardTrigger:
        """Write a scan atomically (trigger and PNG) and return its guard view."""
        save_scan(result, self.directory)
        trigger = self._derive(result)
        with self._lock:
            self._cache[result.report.fingerprint] = trigger
        return trigger

    def load(self, fingerprint: str) -> GuardTrigger:
        """Return the guard view of a stored trigger; raises TriggerFileError when it is missing or corrupt."""
        with self._lock:
            cached = self._cache.get(fingerprint)
        if cached is not None:
            return cached
        trigger = self._derive(load_scan(self.path(fingerprint), fingerprint))
        with self._lock:
            self._cache[fingerprint] = trigger
        return trigger

    def png(self, fingerprint: str) -> bytes:
        """Return the trigger's PNG, rendering and storing it again when the file is missing."""
        png_path = self.path(fingerprint).with_suffix(".png")
        if png_path.is_file():
            return png_path.read_bytes()
        result = self.load(fingerprint).result
        data = render_png(result.trigger_mean, result.trigger_std)
        write_atomic(png_path, data)
        return data

    def seed_from(self, directory: Path, fingerprints: set[str]) -> list[str]:
        """Copy shipped triggers for `fingerprints` that the store lacks; returns the fingerprints copied."""
        copied = []
        for fingerprint in sorted(fingerprints):
            source = trigger_path(directory, fingerprint)
            if self.has(fingerprint) or not source.is_file():
                continue
            try:
                result = load_scan(source, fingerprint)
            except TriggerFileError as error:
                logger.warning("shipped trigger skipped fingerprint=%s error=%s", fingerprint[:12], error)
                continue
            self.save(result)
            copied.append(fingerprint)
        return copied

    def _derive(self, result: ScanResult) -> GuardTrigger:
        detection = detect(result.trigger_mean, result.trigger_std, self._thresholds)
        scorer = result.scorer()
        if self._rule == "zero":
            threshold = 0.0
        else:
            threshold = neyman_pearson_threshold(scorer, self._false_positive_rate)
        return GuardTrigger(
            result=result,
            scorer=scorer,
            llr_threshold=float(threshold),
            threshold_rule=self._rule,
            false_positive_rate=self._false_positive_rate,
            verdict=detection.verdict,
            kl_mean=detection.kl_mean,
            kl_var=detection.kl_var,
            thresholds=detection.thresholds,
        )
