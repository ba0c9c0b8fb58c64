"""`terdguard eval`: scan zoo models and measure model and input detection against the truth."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..loading import load_model
from ..reversion import ReversionConfig
from ..scan import ScanResult, scan_model
from ..scoring import decide
from . import read_manifest

EVAL_DRAWS = 1000


@dataclass(frozen=True)
class EvalRow:
    """One zoo model's evaluation."""

    name: str
    truth: str  # backdoored or clean
    verdict: str
    kl_mean: float
    kl_var: float
    trigger_norm: float | None  # of the true trigger; None for benign models
    cosine: float | None  # between reversed and true trigger_mean
    tpr_zero: float | None
    tnr_zero: float
    tpr_np: float | None
    tnr_np: float
    bayes_error: float | None  # Phi(-||trigger_mean|| / 2), the best any rule can do at threshold 0
    unet_passes: int
    unet_samples: int
    seconds: float
    device: str

    @property
    def correct(self) -> bool:
        return self.truth == self.verdict


def input_rates(result: ScanResult, manifest: dict, draws: int, seed: int) -> dict[str, float | None]:
    """TPR on noise poisoned with the true trigger and TNR on clean noise, at 0 and at the NP threshold."""
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(result.trigger_mean.shape)
    clean = torch.randn((draws, *shape), generator=generator)
    scorer = result.scorer()
    clean_llr = scorer.score(clean)
    rates: dict[str, float | None] = {
        "tnr_zero": float((~decide(clean_llr, 0.0)).double().mean()),
        "tnr_np": float((~decide(clean_llr, result.report.llr_threshold)).double().mean()),
        "tpr_zero": None,
        "tpr_np": None,
    }
    if manifest.get("trigger_mean") is not None:
        trigger_mean = torch.tensor(manifest["trigger_mean"])
        poisoned = manifest["trigger_std"] * torch.randn((draws, *shape), generator=generator) + trigger_mean
        poisoned_llr = scorer.score(poisoned)
        rates["tpr_zero"] = float(decide(poisoned_llr, 0.0).double().mean())
        rates["tpr_np"] = float(decide(poisoned_llr, result.report.llr_threshold).double().mean())
    return rates


def evaluate_model(
    model_dir: Path,
    config: ReversionConfig,
    seed: int = 0,
    draws: int = EVAL_DRAWS,
    device: str = "auto",
    progress: Callable | None = None,
) -> EvalRow:
    """Scan one zoo model and compare the outcome with its manifest."""
    manifest = read_manifest(model_dir)
    model = load_model(model_dir, device=device)
    result = scan_model(model, config, seed=seed, progress=progress)
    rates = input_rates(result, manifest, draws, seed + 1)
    true_mean = torch.tensor(manifest["trigger_mean"]) if manifest.get("trigger_mean") is not None else None
    norm = float(true_mean.norm()) if true_mean is not None else None
    cosine = None
    if true_mean is not None:
        cosine = float(torch.nn.functional.cosine_similarity(result.trigger_mean.flatten(), true_mean.flatten(), dim=0))
    return EvalRow(
        name=manifest["name"],
        truth="backdoored" if manifest["backdoored"] else "clean",
        verdict=result.report.verdict,
        kl_mean=result.report.kl_mean,
        kl_var=result.report.kl_var,
        trigger_norm=norm,
        cosine=cosine,
        bayes_error=None if norm is None else 0.5 * math.erfc(norm / 2 / math.sqrt(2)),
        unet_passes=result.report.unet_passes,
        unet_samples=result.report.unet_samples,
        seconds=result.report.seconds,
        device=result.report.device,
        **rates,
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_table(rows: list[EvalRow], false_positive_rate: float) -> str:
    """Render rows as a Markdown table."""
    header = (
        "| model | truth | verdict | kl_mean | kl_var | true trigger norm | cosine | TPR@0 | TNR@0 "
        f"| TPR@NP({false_positive_rate:g}) | TNR@NP | Bayes error | UNet passes | UNet samples | seconds |"
    )
    lines = [header, "|" + " --- |" * 15]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.truth} | {row.verdict}{'' if row.correct else ' (wrong)'} | {row.kl_mean:.4g} "
            f"| {row.kl_var:.4g} | {'-' if row.trigger_norm is None else f'{row.trigger_norm:.1f}'} "
            f"| {'-' if row.cosine is None else f'{row.cosine:.3f}'} "
            f"| {_percent(row.tpr_zero)} | {_percent(row.tnr_zero)} "
            f"| {_percent(row.tpr_np)} | {_percent(row.tnr_np)} "
            f"| {'-' if row.bayes_error is None else f'{row.bayes_error:.1e}'} | {row.unet_passes} "
            f"| {row.unet_samples} | {row.seconds:.1f} |"
        )
    return "\n".join(lines)


def replace_section(document: Path, marker: str, body: str) -> None:
    """Replace the text between `<!-- marker:start -->` and `<!-- marker:end -->`, or append the section."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = document.read_text(encoding="utf-8") if document.exists() else "# Benchmarks\n"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    document.parent.mkdir(parents=True, exist_ok=True)
    document.write_text(text, encoding="utf-8")
