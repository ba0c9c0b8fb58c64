"""The fast reversion profile against the published schedule on the same zoo models.

    python bench/bench_profiles.py [NAMES ...] [--seed 0]

Scans each model with both profiles in one run and prints UNet passes, UNet
samples (images through the network), seconds, the ratios paper / fast, and
whether the verdicts agree. Default models: one backdoored with a sparse trigger,
one with a -1-background trigger, one benign. The paper profile took 600-712 s
per model on one CPU thread of a 2-core machine (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

from terdguard.core import zoo
from terdguard.core.loading import load_model
from terdguard.core.reversion import ReversionConfig
from terdguard.core.scan import scan_model

DEFAULT_NAMES = ("baddiffusion-sparse", "baddiffusion-box", "benign-s3-a")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(DEFAULT_NAMES), help="zoo model names")
    parser.add_argument("--seed", type=int, default=0, help="scan seed (default: 0)")
    args = parser.parse_args()

    built = zoo.zoo_model_dirs()
    print(f"machine: {platform.machine()} with {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| model | truth | paper verdict | fast verdict | paper passes | fast passes | passes ratio "
          "| samples ratio | paper s | fast s | wall-time ratio |")
    print("|" + " --- |" * 11)
    for name in args.names:
        model = load_model(built[name], device="auto")
        truth = "backdoored" if zoo.read_manifest(built[name])["backdoored"] else "clean"
        paper = scan_model(model, ReversionConfig.paper(), seed=args.seed).report
        fast = scan_model(model, ReversionConfig.fast(), seed=args.seed).report
        print(f"| {name} | {truth} | {paper.verdict} | {fast.verdict} | {paper.unet_passes} | {fast.unet_passes} "
              f"| {paper.unet_passes / fast.unet_passes:.1f} | {paper.unet_samples / fast.unet_samples:.1f} "
              f"| {paper.seconds:.0f} | {fast.seconds:.0f} | {paper.seconds / fast.seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
