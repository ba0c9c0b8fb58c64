"""Fit the model-detection thresholds on the zoo's benign models.

    python bench/fit_thresholds.py [--seeds 0 1 2]

Scans every benign zoo model with the fast profile at each seed and prints the
largest kl_mean and kl_var seen. The rule behind the defaults in
core/detection.py: each threshold is the larger of 0.01 and ten times the
largest benign value. The backdoored models' values are printed for comparison
only; they take no part in the fit.
"""

from __future__ import annotations

import argparse

from terdguard.core import zoo
from terdguard.core.loading import load_model
from terdguard.core.reversion import ReversionConfig
from terdguard.core.scan import scan_model

FLOOR = 0.01
FACTOR = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="scan seeds (default: 0 1 2)")
    args = parser.parse_args()

    benign: list[tuple[float, float]] = []
    print("| model | truth | seed | kl_mean | kl_var |")
    print("| --- | --- | --- | --- | --- |")
    for name, directory in zoo.zoo_model_dirs().items():
        backdoored = zoo.read_manifest(directory)["backdoored"]
        model = load_model(directory, device="auto")
        for seed in args.seeds if not backdoored else args.seeds[:1]:
            report = scan_model(model, ReversionConfig.fast(), seed=seed).report
            if not backdoored:
                benign.append((report.kl_mean, report.kl_var))
            truth = "backdoored" if backdoored else "clean"
            print(f"| {name} | {truth} | {seed} | {report.kl_mean:.3g} | {report.kl_var:.3g} |", flush=True)

    kl_mean = max(FLOOR, FACTOR * max(value for value, _ in benign))
    kl_var = max(FLOOR, FACTOR * max(value for _, value in benign))
    print(f"\nfitted on {len(benign)} benign scans: kl_mean threshold {kl_mean:.3g}, kl_var threshold {kl_var:.3g}")


if __name__ == "__main__":
    main()
