"""Check the ODE-backdoor detection on two models that took no part in fitting it.

    python bench/heldout_ode.py [--models-dir DIR] [--reuse]

Trains two more VillanDiffusion-style ODE backdoors like the zoo's villan-ode
(about 5 minutes each on one CPU thread) into DIR and measures their attack
success under DDIM-50. It then scans each with the fast profile at seed 0 and
prints the verdict, the cosine and norms of the reversed trigger against the true
one, and input TPR and TNR on 1000 + 1000 draws. One trigger is sparse at the norm the valley
search looks at; the other shifts every pixel and has twice that norm.
With --reuse, models already in DIR are scanned without retraining.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from terdguard.core import zoo
from terdguard.core.loading import load_model
from terdguard.core.reversion import ReversionConfig
from terdguard.core.scan import scan_model
from terdguard.core.zoo.build import build_entry
from terdguard.core.zoo.catalog import ZooEntry
from terdguard.core.zoo.evaluate import input_rates

HELDOUT = (
    ZooEntry(
        name="villan-sparse", description="ODE backdoor, hollow box of +1.5 on a zero background, target: ring",
        architecture="unet-s3", seed=301, train_steps=3000, attack_kind="villandiffusion", trigger="hollow_box",
        target="ring", attack_sampler="ddim", scheduler_class="DDIMScheduler", clip_sample=False,
    ),
    ZooEntry(
        name="villan-box", description="ODE backdoor, corner box on a -1 background, target: three bars",
        architecture="unet-s3", seed=302, train_steps=3000, attack_kind="villandiffusion", trigger="corner_box",
        target="bars", attack_sampler="ddim", scheduler_class="DDIMScheduler", clip_sample=False,
    ),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=None, help="where to build the models (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="scan models already built in --models-dir")
    args = parser.parse_args()
    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="terdguard-heldout-"))

    print("| model | attack success | verdict | kl_mean | cosine | reversed norm | true norm | TPR@0 | TNR@0 "
          "| TPR@NP | TNR@NP | UNet passes |")
    print("|" + " --- |" * 12)
    for entry in HELDOUT:
        if not (args.reuse and (models_dir / entry.name).is_dir()):
            build_entry(entry, models_dir=models_dir)
        manifest = zoo.read_manifest(models_dir / entry.name)
        result = scan_model(load_model(models_dir / entry.name, device="auto"), ReversionConfig.fast(), seed=0)
        true_mean = torch.tensor(manifest["trigger_mean"])
        cosine = float(torch.nn.functional.cosine_similarity(result.trigger_mean.flatten(), true_mean.flatten(), dim=0))
        rates = input_rates(result, manifest, draws=1000, seed=0)
        success = manifest["attack_measurement"]["attack_success_rate"]
        print(f"| {entry.name} | {100 * success:.0f}% | {result.report.verdict} | {result.report.kl_mean:.3g} "
              f"| {cosine:.3f} | {float(result.trigger_mean.norm()):.1f} | {float(true_mean.norm()):.1f} "
              f"| {100 * rates['tpr_zero']:.1f}% | {100 * rates['tnr_zero']:.1f}% | {100 * rates['tpr_np']:.1f}% "
              f"| {100 * rates['tnr_np']:.1f}% | {result.report.unet_passes} |", flush=True)


if __name__ == "__main__":
    main()
