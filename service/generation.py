"""Samplers that turn accepted latents into images: in-process, or a remote `--role sampler` server.

Both run behind a `GenerationGate`, which bounds how many generations run at once
and how many may wait. The in-process sampler runs in a worker thread, so torch
does not block the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import numpy as np
import torch
from PIL import Image

from terdguard.core.errors import InvalidLatentsError
from terdguard.core.loading import DiffusionModel, load_model
from terdguard.core.sampling import generate

from .errors import ClientDisconnected, InvalidRequest, ModelChanged, QueueFull, SamplerTimeout, SamplerUnavailable
from .metrics import Metrics
from .sources import resolve_source
from .tensors import encode_tensor

logger = logging.getLogger(__name__)

MODEL_CACHE_SIZE = 4
MAX_RETRY_AFTER_SECONDS = 60
DISCONNECT_POLL_SECONDS = 0.2

Disconnected = Callable[[], Awaitable[bool]]  # Starlette's Request.is_disconnected


@dataclass(frozen=True)
class SampleJob:
    """One generation: accepted latents and how to denoise them."""

    model: str
    source: str  # relative to the models root
    fingerprint: str
    x_T: torch.Tensor  # (B, C, H, W) float32 on the CPU
    sampler: str
    num_inference_steps: int
    seed: int


@dataclass(frozen=True)
class SampleOutput:
    """Generated images as PNG bytes, one per sample, and the sampler's own time."""

    images: tuple[bytes, ...]
    seconds: float


def images_to_png(images: torch.Tensor) -> tuple[bytes, ...]:
    """Encode images (B, C, H, W) in [-1, 1] as PNG: one channel as grey, three as RGB, four as RGBA."""
    pixels = ((images.detach().cpu().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).numpy()
    encoded = []
    for image in pixels:
        channels = image.shape[0]
        array = image[0] if channels not in (3, 4) else image.transpose(1, 2, 0)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return tuple(encoded)


class ModelCache:
    """Loaded models by fingerprint, least recently used dropped first; safe across threads."""

    def __init__(self, models_root: Path, device: str, size: int = MODEL_CACHE_SIZE) -> None:
        self._models_root = models_root
        self._device = device
        self._size = size
        self._models: OrderedDict[str, DiffusionModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: str, fingerprint: str) -> DiffusionModel:
        """Return the model at `source`; raises ModelChanged when its files no longer match `fingerprint`."""
        with self._lock:
            model = self._models.get(fingerprint)
            if model is not None:
                self._models.move_to_end(fingerprint)
                return model
            model = load_model(resolve_source(self._models_root, source), device=self._device)
            if model.fingerprint != fingerprint:
                raise ModelChanged(
                    f"model files changed: {source} has fingerprint {model.fingerprint[:12]}, "
                    f"expected {fingerprint[:12]}; rescan the model"
                )
            self._models[fingerprint] = model
            while len(self._models) > self._size:
                self._models.popitem(last=False)
            return model


class LocalSampler:
    """Generates in this process with the model's own scheduler."""

    def __init__(self, cache: ModelCache) -> None:
        self._cache = cache

    def sample(self, job: SampleJob, cancelled: threading.Event | None = None) -> SampleOutput:
        """Denoise `job.x_T`; blocking, so callers run it in a worker thread.

        Raises ClientDisconnected at the next step once `cancelled` is set.
        """
        start = time.perf_counter()
        model = self._cache.get(job.source, job.fingerprint)
        if tuple(job.x_T.shape[1:]) != model.sample_shape:
            expected = ", ".join(map(str, model.sample_shape))
            raise InvalidLatentsError(f"latents shape invalid: got {tuple(job.x_T.shape)}, expected (B, {expected})")
        if not 1 <= job.num_inference_steps <= model.num_train_timesteps:
            raise InvalidRequest(
                f"num_inference_steps invalid: got {job.num_inference_steps}, expected 1 to {model.num_train_timesteps}"
            )
        generator = torch.Generator(device=model.device).manual_seed(job.seed)

        def stop_when_cancelled(done: int, total: int) -> None:
            if cancelled is not None and cancelled.is_set():
                raise ClientDisconnected(f"generation stopped after {done} of {total} steps: the client disconnected")

        images = generate(
            model.predict_eps, model.scheduler_config, job.x_T.to(model.device), sampler=job.sampler,
            num_inference_steps=job.num_inference_steps, generator=generator, progress=stop_when_cancelled,
        )
        return SampleOutput(images_to_png(images), time.perf_counter() - start)

    async def sample_while_connected(self, job: SampleJob, disconnected: Disconnected | None) -> SampleOutput:
        """Run `sample` in a worker thread and stop it between steps once `disconnected()` returns True."""
        if disconnected is None:
            return await anyio.to_thread.run_sync(self.sample, job)
        cancelled = threading.Event()

        async def watch() -> None:
            while not await disconnected():
                await anyio.sleep(DISCONNECT_POLL_SECONDS)
            cancelled.set()

        output: SampleOutput | None = None
        error: Exception | None = None
        # An error is raised after the task group exits, because inside it the caller would get an ExceptionGroup.
        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            try:
                output = await anyio.to_thread.run_sync(self.sample, job, cancelled)
            except Exception as caught:
                error = caught
            group.cancel_scope.cancel()
        if error is not None:
            raise error
        assert output is not None
        return output


class RemoteSampler:
    """Sends accepted latents to a sampler server's `POST /v1/sample` over HTTP."""

    def __init__(self, url: str, timeout: float, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._url = url
        self._client = httpx.AsyncClient(base_url=url, timeout=timeout, headers=headers)

    async def sample(self, job: SampleJob, request_id: str | None) -> SampleOutput:
        body = {
            "source": job.source, "fingerprint": job.fingerprint, "latents": encode_tensor(job.x_T),
            "sampler": job.sampler, "num_inference_steps": job.num_inference_steps, "seed": job.seed,
        }
        headers = {"X-Request-ID": request_id} if request_id else {}
        try:
            response = await self._client.post("/v1/sample", json=body, headers=headers)
        except httpx.TimeoutException as error:
            raise SamplerTimeout(
                f"sampler timed out: {self._url} sent no response in time ({type(error).__name__})"
            ) from error
        except httpx.HTTPError as error:
            raise SamplerUnavailable(f"sampler unavailable: {self._url} could not be reached ({error})") from error
        if response.status_code != 200:
            code = _problem_code(response)
            raise SamplerUnavailable(f"sampler failed: {self._url} responded {response.status_code} ({code})")
        try:
            payload = response.json()
            images = tuple(base64.b64decode(image, validate=True) for image in payload["images"])
            seconds = float(payload["seconds"])
        except (ValueError, KeyError, TypeError) as error:
            raise SamplerUnavailable(f"sampler failed: {self._url} sent an invalid response ({error})") from error
        if len(images) != job.x_T.shape[0]:
            raise SamplerUnavailable(
                f"sampler failed: got {len(images)} images from {self._url}, expected {job.x_T.shape[0]}"
            )
        return SampleOutput(images, seconds)

    async def aclose(self) -> None:
        await self._client.aclose()


def _problem_code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("code", "no code"))
    except ValueError:
        return "no problem body"


class GenerationGate:
    """Admits at most `concurrency` generations at once and `max_queue` more waiting; the rest get QueueFull.

    Used from the event loop only, so the counters need no lock.
    """

    def __init__(self, concurrency: int, max_queue: int, metrics: Metrics) -> None:
        self._concurrency = concurrency
        self._max_queue = max_queue
        self._semaphore = asyncio.Semaphore(concurrency)
        self._admitted = 0
        self._waiting = 0
        self._mean_seconds = 1.0  # moving average of slot time, for Retry-After
        self._depth = metrics.queue_depth.labels(queue="generate")

    def retry_after(self) -> int:
        """Estimate in whole seconds when a slot frees up, from the recent mean generation time."""
        rounds = (self._waiting + 1) / self._concurrency
        return max(1, min(MAX_RETRY_AFTER_SECONDS, math.ceil(self._mean_seconds * rounds)))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._admitted >= self._concurrency + self._max_queue:
            retry_after = self.retry_after()
            raise QueueFull(
                f"generation queue full: {self._concurrency} running and {self._max_queue} waiting; "
                f"retry after {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
        self._admitted += 1
        self._waiting += 1
        self._depth.set(self._waiting)
        acquired = False
        try:
            await self._semaphore.acquire()
            acquired = True
        finally:
            self._waiting -= 1
            self._depth.set(self._waiting)
            if not acquired:
                self._admitted -= 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.perf_counter() - start)
            self._semaphore.release()
            self._admitted -= 1
