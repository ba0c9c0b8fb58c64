"""Measure the valley search's statistics on the zoo, the basis of its two thresholds.

    python bench/fit_valley.py [NAMES ...] [--seeds 0 1 2 3 4]

Runs the fast profile's valley search (the step that finds ODE backdoors) on
each model at each seed and prints its two statistics. `ratio` is the loss of
the best direction found over the clean basin's loss. `contrast` is the start
directions' loss over that best loss. A valley counts when ratio <= valley_ratio and
contrast >= valley_contrast (see ReversionConfig). Default models: the benign
ones and the ODE backdoor, the models whose rays show no basin.
"""

from __future__ import annotations

import argparse

import torch

from terdguard.core import zoo
from terdguard.core.loading import load_model
from terdguard.core.reversion import ReversionConfig
from terdguard.core.search import StartSearch

DEFAULT_NAMES = ("benign-s3-a", "benign-s3-b", "benign-s2-a", "benign-s2-b", "villan-ode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(DEFAULT_NAMES), help="zoo model names")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default: 0 to 4)")
    args = parser.parse_args()

    config = ReversionConfig.fast()
    directories = zoo.zoo_model_dirs()
    ratios: dict[bool, list[float]] = {True: [], False: []}
    contrasts: dict[bool, list[float]] = {True: [], False: []}
    print("| model | truth | seed | ratio | contrast | valley |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.names:
        backdoored = zoo.read_manifest(directories[name])["backdoored"]
        model = load_model(directories[name], device="auto")
        for seed in args.seeds:
            generator = torch.Generator(device=model.device).manual_seed(seed)
            probe = StartSearch(model, config, generator, None)
            valley = probe.valley(probe.clean_loss())
            ratios[backdoored].append(valley.ratio)
            contrasts[backdoored].append(valley.contrast)
            truth = "backdoored" if backdoored else "clean"
            print(f"| {name} | {truth} | {seed} | {valley.ratio:.2f} | {valley.contrast:.2f} "
                  f"| {'yes' if valley.found(config) else 'no'} |", flush=True)

    print(f"\nthresholds: valley_ratio {config.valley_ratio}, valley_contrast {config.valley_contrast}")
    if ratios[False]:
        print(f"benign: ratio at least {min(ratios[False]):.2f}, contrast at most {max(contrasts[False]):.2f}")
    if ratios[True]:
        print(f"backdoored: ratio at most {max(ratios[True]):.2f}, contrast at least {min(contrasts[True]):.2f}")


if __name__ == "__main__":
    main()
