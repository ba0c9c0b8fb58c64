"""The sampler role: a server that only denoises latents the guard already accepted.

It runs no guard itself, so it belongs on a private network behind the guard, with
`TERDGUARD_SAMPLER_KEY` set on both sides.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from terdguard.core.errors import InvalidLatentsError

from .deps import SamplerKeyDep, SettingsDep
from .errors import ClientDisconnected, InvalidRequest, install_error_handlers
from .generation import GenerationGate, LocalSampler, ModelCache, SampleJob
from .metrics import Metrics
from .middleware import RequestContextMiddleware
from .schemas import Health, SampleRequest, SampleResponse
from .settings import Settings
from .sources import normalize_source
from .tensors import decode_tensor

logger = logging.getLogger(__name__)

router = APIRouter()


@router.get("/healthz")
@router.get("/readyz")
async def health() -> Health:
    """Return 200 while the sampler serves requests."""
    return Health(status="ok")


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Return the sampler's metrics in the Prometheus text format."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.post("/v1/sample", dependencies=[SamplerKeyDep])
async def sample(body: SampleRequest, request: Request, settings: SettingsDep) -> SampleResponse:
    """Denoise the given latents with the model at `source`, checked against `fingerprint`."""
    job = _job(body, settings)
    state = request.app.state
    async with state.gate.slot():
        try:
            output = await state.local.sample_while_connected(job, request.is_disconnected)
        except ClientDisconnected as error:
            logger.info("sample stopped model=%s: %s", job.source, error)
            raise
    state.metrics.generation_duration.labels(model=job.source, sampler=job.sampler).observe(output.seconds)
    return SampleResponse(images=[base64.b64encode(image).decode("ascii") for image in output.images],
                          seconds=output.seconds)


def _job(body: SampleRequest, settings: Settings) -> SampleJob:
    x_T = decode_tensor(body.latents)
    if x_T.dim() != 4:
        raise InvalidLatentsError(f"latents shape invalid: got {tuple(x_T.shape)}, expected (B, C, H, W)")
    if x_T.shape[0] > settings.max_images_per_request:
        raise InvalidRequest(
            f"latents batch invalid: got {x_T.shape[0]} samples, expected 1 to {settings.max_images_per_request}"
        )
    return SampleJob(model=body.source, source=normalize_source(body.source), fingerprint=body.fingerprint,
                     x_T=x_T.to(torch.float32), sampler=body.sampler, num_inference_steps=body.num_inference_steps,
                     seed=body.seed)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    torch.set_num_threads(settings.resolved_torch_threads)
    app.state.gate = GenerationGate(settings.max_concurrent_generations, settings.max_queue, app.state.metrics)
    app.state.local = LocalSampler(ModelCache(settings.models_root, settings.device))
    logger.info("sampler started models_root=%s device=%s", settings.models_root, settings.device)
    yield
    logger.info("sampler stopped")


def create_sampler_app(settings: Settings | None = None) -> FastAPI:
    """Build the sampler app; settings default to the environment."""
    settings = settings or Settings()
    metrics = Metrics()
    app = FastAPI(title="terd-guard sampler", version="0.1.0", lifespan=_lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    app.include_router(router)
    return app
