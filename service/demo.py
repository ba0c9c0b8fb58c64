"""`terdguard demo`: show the guard at work on a backdoored zoo model.

It sends two requests to a running guard: clean noise N(0, I), and the same noise
moved onto the model's true poisoned prior, `trigger_mean + trigger_std * eps`,
read from the zoo manifest. The guard should pass the first and reject the second.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch

from .tensors import encode_tensor
from .zoo import read_manifest, zoo_model_dirs

POLL_SECONDS = 1.0
REQUEST_TIMEOUT_SECONDS = 600.0


def poisoned_noise(manifest: dict[str, Any], eps: torch.Tensor) -> torch.Tensor:
    """Move noise `eps` (B, C, H, W) onto the manifest's poisoned prior: trigger_mean + trigger_std * eps."""
    trigger_mean = torch.tensor(manifest["trigger_mean"], dtype=torch.float32)
    trigger_std = torch.as_tensor(manifest.get("trigger_std", 1.0), dtype=torch.float32)
    return trigger_mean + trigger_std * eps


def _wait_ready(client: httpx.Client, model: str, wait_seconds: float,
                echo: Callable[[str], None]) -> dict[str, Any] | None:
    """Poll the model until its scan ends or the wait runs out; None when it is not registered."""
    deadline = time.monotonic() + wait_seconds
    announced = False
    while True:
        response = client.get(f"/models/{model}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        record = response.json()
        if record["state"] in ("ready", "failed") or time.monotonic() >= deadline:
            return record
        if not announced:
            echo(f"waiting for {model} to be scanned (state {record['state']})")
            announced = True
        time.sleep(POLL_SECONDS)


def _describe(decisions: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"sample {d['index']}: llr {d['llr']:.1f} vs threshold {d['threshold']:.1f}, {d['verdict']}, {d['action']}"
        for d in decisions
    )


def run_demo(url: str, model: str, out: Path, api_key: str | None = None, sampler: str = "ddim",
             num_inference_steps: int = 50, seed: int = 0, wait_seconds: float = 600.0,
             echo: Callable[[str], None] = print) -> int:
    """Run the demo against the guard at `url`; returns 0 when the guard passed clean noise and caught the trigger."""
    folders = zoo_model_dirs()
    if model not in folders:
        echo(f"demo failed: {model!r} is not a zoo model; choose one of {sorted(folders)}")
        return 2
    manifest = read_manifest(folders[model])
    if not manifest.get("backdoored"):
        echo(f"note: {model} is a benign zoo model, so the 'poisoned' request uses no real trigger")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out.mkdir(parents=True, exist_ok=True)

    with httpx.Client(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        # 1. Wait for the scan and show its verdict.
        record = _wait_ready(client, model, wait_seconds, echo)
        if record is None:
            echo(f"demo failed: {model} is not registered on the guard at {url}")
            return 1
        if record["state"] != "ready":
            echo(f"demo failed: {model} is {record['state']}: {record.get('error')}")
            return 1
        statistics = record.get("statistics") or {}
        echo(f"model {model}: verdict {record['verdict']} (kl_mean {statistics.get('kl_mean', float('nan')):.4g}, "
             f"kl_var {statistics.get('kl_var', float('nan')):.4g})")
        trigger_png = client.get(f"/models/{model}/trigger.png")
        if trigger_png.status_code == 200:
            (out / "trigger.png").write_bytes(trigger_png.content)
            echo(f"reversed trigger saved to {out / 'trigger.png'}")

        # 2. Send clean noise and the same noise moved onto the true trigger.
        sample_shape = torch.tensor(manifest["trigger_mean"]).shape
        eps = torch.randn((1, *sample_shape), generator=torch.Generator().manual_seed(seed))
        results = {}
        for label, x_T in (("clean", eps), ("poisoned", poisoned_noise(manifest, eps))):
            body = {"model": model, "latents": encode_tensor(x_T), "sampler": sampler,
                    "num_inference_steps": num_inference_steps, "seed": seed}
            response = client.post("/generate", json=body)
            payload = response.json()
            results[label] = (response.status_code, payload)
            decisions = payload.get("decisions", [])
            line = f"{label} request: HTTP {response.status_code}"
            if response.status_code >= 400:
                line += f" {payload.get('code')}"
            echo(f"{line}; {_describe(decisions) if decisions else payload.get('detail', '')}")
            if response.status_code == 200:
                path = out / f"{label}.png"
                path.write_bytes(base64.b64decode(payload["images"][0]))
                echo(f"{label} image saved to {path}")

    # 3. Succeed when clean noise passed and poisoned noise was caught.
    clean_status, _ = results["clean"]
    _, poisoned_payload = results["poisoned"]
    caught = any(d["verdict"] == "poisoned" for d in poisoned_payload.get("decisions", []))
    return 0 if clean_status == 200 and caught else 1
