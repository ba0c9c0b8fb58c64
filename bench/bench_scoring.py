"""Input scoring throughput against a raw numpy dot product over the same latents.

    python bench/bench_scoring.py [--batch 64] [--repeats 20]

For each shape it times `LlrScorer.score` (float64 accumulation, BadDiffusion-style
trigger_std of 1 and TrojDiff-style per-element std) and `latents @ weights` in
numpy float32, on the same (B, D) float32 latents, and prints the throughput ratio.
Target: scoring at least half as fast as the dot product. For scale it also times
the plain float64 route, `latents.astype(float64) @ weights`, which widens the
whole batch before one product.
"""

from __future__ import annotations

import argparse
import functools
import platform
import time

import numpy as np
import torch

from terdguard.core.scoring import LlrScorer

SHAPES = ((1, 16, 16), (3, 32, 32), (3, 256, 256))


def best_seconds(function, repeats: int) -> float:
    function()  # warm-up
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return min(timings)


def widened_dot(latents: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Widen every float32 latent to float64, then take one float64 product."""
    return latents.astype(np.float64) @ weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="samples per scoring call (default: 64)")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats; the fastest counts (default: 20)")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"numpy {np.__version__}, batch {args.batch}")
    print("| shape | trigger_std | llr samples/s | numpy dot samples/s | ratio | float64 dot ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for shape in SHAPES:
        latents = torch.randn((args.batch, *shape), generator=generator)
        flat = latents.reshape(args.batch, -1).numpy()
        weights = np.random.default_rng(0).standard_normal(flat.shape[1]).astype(np.float32)
        dot_seconds = best_seconds(functools.partial(np.matmul, flat, weights), args.repeats)
        wide_seconds = best_seconds(functools.partial(widened_dot, flat, weights.astype(np.float64)), args.repeats)
        stds = {"1": torch.ones(shape), "per-element": 0.5 + torch.rand(shape, generator=generator)}
        for label, trigger_std in stds.items():
            scorer = LlrScorer.from_trigger(torch.randn(shape, generator=generator), trigger_std)
            llr_seconds = best_seconds(functools.partial(scorer.score, latents), args.repeats)
            print(f"| {'x'.join(map(str, shape))} | {label} | {args.batch / llr_seconds:,.0f} "
                  f"| {args.batch / dot_seconds:,.0f} | {dot_seconds / llr_seconds:.2f} "
                  f"| {dot_seconds / wide_seconds:.2f} |")


if __name__ == "__main__":
    main()
