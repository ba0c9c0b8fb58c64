"""Small helpers shared by the service tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tensor_object(x: torch.Tensor) -> dict[str, Any]:
    return {"shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}


def noise(batch: int, seed: int = 0, shape: tuple[int, ...] = (1, 16, 16)) -> torch.Tensor:
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))


class ServerProcess:
    """A `python -m terdguard.service serve` subprocess on 127.0.0.1, stopped with SIGTERM."""

    def __init__(self, env: dict[str, str], role: str = "guard", log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {key: value for key, value in os.environ.items() if not key.startswith("TERDGUARD_")}
        self._env.update(env)
        self._role = role
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        command = [sys.executable, "-m", "terdguard.service", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--role", self._role]
        log = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(command, env=self._env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"server exited with {self._process.returncode}; log: {self._log_path}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not up after {timeout} s; log: {self._log_path}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


def metric_sum(metrics: str, prefix: str) -> float:
    """Return the sum of every sample in Prometheus text `metrics` whose line starts with `prefix`."""
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def wait_for_metric(url: str, prefix: str, minimum: float, timeout: float = 30.0) -> float:
    """Poll `url`/metrics until the samples starting with `prefix` sum to at least `minimum`; return the sum."""
    deadline = time.monotonic() + timeout
    while True:
        value = metric_sum(httpx.get(f"{url}/metrics", timeout=10.0).text, prefix)
        if value >= minimum or time.monotonic() > deadline:
            return value
        time.sleep(0.2)
