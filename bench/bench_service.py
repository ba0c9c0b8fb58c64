"""Measure the guard's overhead: its share of /generate wall time, and /healthz latency while a scan runs.

Runs the real app in process (FastAPI's TestClient) on a zoo model, in a temporary
data folder. Prints the ratios measured in this one run; record results in
docs/benchmarks.md with the machine they ran on.

    python bench/bench_service.py                    # defaults: 20 requests, 50 DDIM steps
    python bench/bench_service.py --requests 3 --steps 5 --scan-iterations 30   # a quick check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from fastapi.testclient import TestClient

from terdguard.core.reversion import ReversionConfig
from terdguard.service.app import create_app
from terdguard.service.settings import Settings
from terdguard.service.tensors import encode_tensor
from terdguard.service.zoo import zoo_model_dirs, zoo_models_dir


def sample_shape(folder: Path) -> tuple[int, int, int]:
    """Read (C, H, W) from a model folder's UNet config."""
    config = json.loads((folder / "unet" / "config.json").read_text())
    size = config["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return int(config["in_channels"]), int(height), int(width)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure_generate(client: TestClient, model: str, shape: tuple[int, ...], args: argparse.Namespace) -> None:
    """Send clean latents and compare the guard's time with the request's total time."""
    generator = torch.Generator().manual_seed(0)
    guard, total, wall = [], [], []
    for _ in range(args.requests):
        x_T = torch.randn((args.images, *shape), generator=generator)
        body = {"model": model, "latents": encode_tensor(x_T), "num_inference_steps": args.steps}
        started = time.perf_counter()
        response = client.post("/generate", json=body)
        wall.append(time.perf_counter() - started)
        response.raise_for_status()
        timings = response.json()["timings"]
        guard.append(timings["guard_seconds"])
        total.append(timings["total_seconds"])
    share = sum(guard) / sum(wall)
    print(f"generate: {args.requests} requests x {args.images} images, {args.steps} DDIM steps")
    print(f"  guard seconds per request: median {statistics.median(guard) * 1e3:.3f} ms")
    print(f"  request wall time: median {statistics.median(wall) * 1e3:.1f} ms")
    print(f"  guard share of wall time: {share:.4%} (target < 1%)")
    print(f"  handler share of wall time: {sum(total) / sum(wall):.2%} (the rest is HTTP, JSON and the client)")


def probe_health(client: TestClient, stop: threading.Event, latencies: list[float], interval: float) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        client.get("/healthz")
        latencies.append(time.perf_counter() - started)
        time.sleep(interval)


def measure_health(client: TestClient, model: str, args: argparse.Namespace) -> None:
    """Compare /healthz latency idle and while a scan runs in the worker thread."""
    idle: list[float] = []
    stop = threading.Event()
    for _ in range(args.probes):
        started = time.perf_counter()
        client.get("/healthz")
        idle.append(time.perf_counter() - started)

    busy: list[float] = []
    response = client.post(f"/models/{model}/scan", json={"profile": "paper"})
    response.raise_for_status()
    prober = threading.Thread(target=probe_health, args=(client, stop, busy, 0.01))
    prober.start()
    while client.get(f"/models/{model}").json()["state"] in ("queued", "scanning"):
        time.sleep(0.2)
    stop.set()
    prober.join()
    print(f"healthz: {len(idle)} idle probes, {len(busy)} probes during a {args.scan_iterations}-iteration scan")
    print(f"  idle: median {statistics.median(idle) * 1e3:.2f} ms, p99 {percentile(idle, 0.99) * 1e3:.2f} ms")
    print(f"  during scan: median {statistics.median(busy) * 1e3:.2f} ms, p99 {percentile(busy, 0.99) * 1e3:.2f} ms,"
          f" max {max(busy) * 1e3:.2f} ms (target < 100 ms)")
    print(f"  slowdown of the median: {statistics.median(busy) / statistics.median(idle):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="baddiffusion-sparse", help="zoo model name (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=20, help="generate requests (default: %(default)s)")
    parser.add_argument("--images", type=int, default=1, help="images per request (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps per request (default: %(default)s)")
    parser.add_argument("--probes", type=int, default=200, help="idle /healthz probes (default: %(default)s)")
    parser.add_argument("--scan-iterations", type=int, default=300,
                        help="stage-1 iterations of the scan that runs during the probes (default: %(default)s)")
    args = parser.parse_args()

    folder = zoo_model_dirs().get(args.model)
    if folder is None:
        raise SystemExit(f"zoo model not found: {args.model!r}; built models: {sorted(zoo_model_dirs())}")
    # A short scan makes the model ready; the longer "paper"-slot scan runs during the health probes.
    configs = {
        "fast": dataclasses.replace(ReversionConfig.paper(), profile="fast", stage1_iterations=20,
                                    stage2_iterations=2),
        "paper": dataclasses.replace(ReversionConfig.paper(), stage1_iterations=args.scan_iterations,
                                     stage2_iterations=0),
    }
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(models_root=zoo_models_dir(), data_dir=Path(data_dir), register_zoo=False,
                            shipped_triggers_dir=None)
        with TestClient(create_app(settings, reversion_configs=configs)) as client:
            source = folder.resolve().relative_to(settings.models_root).as_posix()
            record = client.post("/models?wait=true", json={"name": args.model, "source": source}).json()
            if record["state"] != "ready":
                raise SystemExit(f"model not ready: {record['state']}: {record.get('error')}")
            print(f"torch threads: {torch.get_num_threads()}, device: {record['statistics']['device']}")
            measure_generate(client, args.model, sample_shape(folder), args)
            measure_health(client, args.model, args)


if __name__ == "__main__":
    main()
