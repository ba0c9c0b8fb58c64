"""The guard app: `create_app` builds it, the lifespan opens the registry and runs start-up scans."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio
import torch
from fastapi import FastAPI

from terdguard.core.detection import DetectionThresholds
from terdguard.core.reversion import ReversionConfig

from .deps import Services
from .errors import install_error_handlers
from .generation import GenerationGate, LocalSampler, ModelCache, RemoteSampler
from .inference import InferenceService
from .metrics import Metrics
from .middleware import RequestContextMiddleware
from .models_service import ModelService
from .registry import Registry
from .routes import health, inference, models
from .scanner import ScanWorker
from .settings import Settings
from .store import TriggerStore

logger = logging.getLogger(__name__)

SCAN_STOP_TIMEOUT_SECONDS = 10.0


def detection_thresholds(settings: Settings) -> DetectionThresholds:
    """Return the KL thresholds: the core defaults unless a setting overrides one."""
    defaults = DetectionThresholds()
    return DetectionThresholds(
        kl_mean=settings.kl_mean_threshold if settings.kl_mean_threshold is not None else defaults.kl_mean,
        kl_var=settings.kl_var_threshold if settings.kl_var_threshold is not None else defaults.kl_var,
    )


def _open_services(settings: Settings, metrics: Metrics, configs: Mapping[str, ReversionConfig] | None) -> Services:
    """Open the registry and store, sync declared models and queue start-up scans; blocking."""
    settings.triggers_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(settings.resolved_database_url)
    registry.open()
    metrics.watch_models(registry.count_by_state)
    store = TriggerStore(settings.triggers_dir, detection_thresholds(settings), settings.threshold_rule,
                         settings.false_positive_rate)
    scanner = ScanWorker(settings, registry, store, metrics, configs)
    model_service = ModelService(settings, registry, store, scanner, metrics)
    model_service.start_up()

    gate = GenerationGate(settings.max_concurrent_generations, settings.max_queue, metrics)
    remote = None
    local = None
    if settings.sampler_url:
        key = settings.sampler_key.get_secret_value() if settings.sampler_key else None
        remote = RemoteSampler(settings.sampler_url, settings.sampler_timeout, key)
    else:
        local = LocalSampler(ModelCache(settings.models_root, settings.device))
    inference_service = InferenceService(settings, model_service, metrics, gate, local, remote)
    return Services(settings=settings, metrics=metrics, registry=registry, store=store, scanner=scanner,
                    models=model_service, inference=inference_service, gate=gate, remote=remote)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    torch.set_num_threads(settings.resolved_torch_threads)
    services = await anyio.to_thread.run_sync(_open_services, settings, app.state.metrics, app.state.reversion_configs)
    services.scanner.start()
    app.state.services = services
    logger.info("guard started models_root=%s data_dir=%s policy=%s sampler=%s startup_scans=%d",
                settings.models_root, settings.data_dir, settings.guard_policy,
                settings.sampler_url or "in-process", services.scanner.startup_pending)
    if settings.admin_key is None:
        logger.warning("no admin key set: anyone who reaches the port can register and delete models")
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(services.scanner.stop, SCAN_STOP_TIMEOUT_SECONDS)
        if services.remote is not None:
            await services.remote.aclose()
        services.registry.close()
        logger.info("guard stopped")


def create_app(settings: Settings | None = None, *,
               reversion_configs: Mapping[str, ReversionConfig] | None = None) -> FastAPI:
    """Build the guard app; settings default to the environment.

    `reversion_configs` replaces the schedule of a scan profile, for tests and
    benchmarks that need short real scans.
    """
    settings = settings or Settings()
    metrics = Metrics()
    app = FastAPI(
        title="terd-guard",
        summary="Scans diffusion models for noise-space backdoors and screens generation requests.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.reversion_configs = dict(reversion_configs or {})
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(inference.router)
    return app
