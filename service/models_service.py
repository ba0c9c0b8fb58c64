"""Model registration, rescans, deletion and the start-up sync of declared models."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from pydantic import TypeAdapter, ValidationError

from terdguard.core.errors import ModelLoadError, TerdGuardError
from terdguard.core.loading import inspect_model

from .errors import ModelConflict, ModelFailed, ModelNotReady, ModelUnknown
from .metrics import Metrics
from .middleware import current_request_id
from .registry import PENDING_STATES, ModelRecord, Registry
from .scanner import ScanJob, ScanWorker
from .schemas import InputThreshold, ModelCreate, ModelPublic, Progress, ScanOptions
from .settings import Settings
from .sources import normalize_source, resolve_source
from .store import GuardTrigger, TriggerStore
from .zoo import zoo_model_dirs

logger = logging.getLogger(__name__)

NOT_READY_RETRY_AFTER_SECONDS = 5
WAIT_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class ModelInfo:
    """Model facts that requests are checked against: sample shape (C, H, W) and training timesteps."""

    sample_shape: tuple[int, int, int]
    num_train_timesteps: int


def _model_info(unet_config: dict[str, Any], scheduler_config: dict[str, Any]) -> ModelInfo:
    sample_size = unet_config.get("sample_size", 0)
    height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
    channels = int(unet_config.get("in_channels", 3))
    return ModelInfo((channels, int(height), int(width)), int(scheduler_config.get("num_train_timesteps", 1000)))


def read_models_file(path: Path) -> list[ModelCreate]:
    """Parse a models file: a JSON list of {name, source[, scan]} objects; raises ValueError when invalid."""
    try:
        return TypeAdapter(list[ModelCreate]).validate_json(path.read_bytes())
    except ValidationError as error:
        raise ValueError(f"models file invalid: {path}: {error}") from error


class ModelService:
    """Everything the /models routes and start-up do with registered models."""

    def __init__(self, settings: Settings, registry: Registry, store: TriggerStore, scanner: ScanWorker,
                 metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._registry = registry
        self._store = store
        self._scanner = scanner
        self._info: dict[str, ModelInfo] = {}

    # -- reads -----------------------------------------------------------------------------

    def get(self, name: str) -> ModelRecord:
        record = self._registry.get(name)
        if record is None:
            raise ModelUnknown(f"model not found: {name!r} is not registered; list models with GET /models")
        return record

    def all(self) -> list[ModelRecord]:
        return self._registry.all()

    def require_ready(self, name: str) -> tuple[ModelRecord, GuardTrigger, ModelInfo]:
        """Return a ready model's record, trigger and info; raises when it is unknown, pending or failed."""
        record = self.get(name)
        if record.state in PENDING_STATES:
            raise ModelNotReady(
                f"model not ready: {name!r} is {record.state} ({record.progress_done} of {record.progress_planned} "
                "iterations); retry later",
                headers={"Retry-After": str(NOT_READY_RETRY_AFTER_SECONDS)},
            )
        if record.state == "failed":
            raise ModelFailed(f"model scan failed: {name!r}: {record.error}; rescan with POST /models/{name}/scan")
        return record, self._store.load(record.fingerprint), self.info(record)

    def info(self, record: ModelRecord) -> ModelInfo:
        cached = self._info.get(record.fingerprint)
        if cached is None:
            self._inspect(record.source)
            cached = self._info[record.fingerprint]
        return cached

    def public(self, record: ModelRecord) -> ModelPublic:
        """Shape a record for clients, adding the input threshold of a ready model."""
        threshold = None
        if record.state == "ready":
            try:
                trigger = self._store.load(record.fingerprint)
                threshold = InputThreshold(rule=trigger.threshold_rule, llr_threshold=trigger.llr_threshold,
                                           false_positive_rate=trigger.false_positive_rate)
            except TerdGuardError as error:
                logger.warning("stored trigger unreadable model=%s error=%s", record.name, error)
        return ModelPublic.model_validate({
            "name": record.name, "source": record.source, "fingerprint": record.fingerprint, "state": record.state,
            "verdict": record.verdict,
            "progress": Progress(iterations=record.progress_done, planned=record.progress_planned),
            "scan": ScanOptions(profile=record.scan_profile, seed=record.scan_seed), "statistics": record.statistics,
            "input_threshold": threshold, "error": record.error, "created_at": record.created_at,
            "updated_at": record.updated_at, "scanned_at": record.scanned_at,
            "links": {"self": f"/models/{record.name}", "trigger_png": f"/models/{record.name}/trigger.png"},
        })

    def trigger_png(self, name: str) -> bytes:
        record = self.get(name)
        if record.state != "ready":
            raise ModelNotReady(f"model not ready: {name!r} is {record.state}, so it has no trigger yet",
                                headers={"Retry-After": str(NOT_READY_RETRY_AFTER_SECONDS)})
        return self._store.png(record.fingerprint)

    async def wait(self, name: str, timeout: float) -> ModelRecord:
        """Poll until the model's scan ends or `timeout` seconds pass; returns the latest record."""
        deadline = time.monotonic() + timeout
        while True:
            record = await anyio.to_thread.run_sync(self.get, name)
            if record.state not in PENDING_STATES or time.monotonic() >= deadline:
                return record
            await anyio.sleep(WAIT_POLL_SECONDS)

    # -- writes ----------------------------------------------------------------------------

    def register(self, body: ModelCreate) -> tuple[ModelRecord, bool]:
        """Validate the source and register it; returns the record and whether it is new.

        The same name with the same content returns the existing record; the same
        name with other content raises ModelConflict.
        """
        source = normalize_source(body.source)
        fingerprint = self._inspect(source)
        options = body.scan or ScanOptions()
        profile = options.profile or self._settings.scan_profile
        seed = options.seed if options.seed is not None else self._settings.scan_seed

        existing = self._registry.get(body.name)
        if existing is None:
            record = self._registry.add(body.name, source, fingerprint, profile, seed)
            if record is not None:
                logger.info("model registered model=%s source=%s fingerprint=%s request_id=%s",
                            body.name, source, fingerprint[:12], current_request_id())
                self._schedule(record)
                return self.get(body.name), True
            existing = self.get(body.name)  # another request registered the name in between
        if existing.fingerprint != fingerprint:
            raise ModelConflict(
                f"model name taken: {body.name!r} is registered with fingerprint {existing.fingerprint[:12]}, "
                f"got {fingerprint[:12]} from {source!r}; delete it first or choose another name"
            )
        return existing, False

    def rescan(self, name: str, options: ScanOptions | None) -> ModelRecord:
        record = self.get(name)
        options = options or ScanOptions()
        profile = options.profile or record.scan_profile
        seed = options.seed if options.seed is not None else record.scan_seed
        restarted = self._registry.restart_scan(name, profile=profile, seed=seed)
        if restarted is None:
            raise ModelUnknown(f"model not found: {name!r} was deleted")
        self._schedule(restarted, force=True)
        logger.info("rescan requested model=%s profile=%s seed=%d request_id=%s", name, profile, seed,
                    current_request_id())
        return self.get(name)

    def delete(self, name: str) -> None:
        """Remove the registry record; model files and stored triggers stay on disk."""
        if not self._registry.delete(name):
            raise ModelUnknown(f"model not found: {name!r} is not registered")
        self._metrics.forget_model(name)
        logger.info("model deleted model=%s request_id=%s", name, current_request_id())

    # -- start-up --------------------------------------------------------------------------

    def start_up(self) -> None:
        """Register declared models, copy shipped triggers, and reuse or queue a scan for every model."""
        for declared in self._declared_models():
            self._register_declared(declared)

        records = self._registry.all()
        if self._settings.shipped_triggers_dir is not None:
            copied = self._store.seed_from(self._settings.shipped_triggers_dir, {r.fingerprint for r in records})
            if copied:
                logger.info("shipped triggers copied count=%d", len(copied))

        for record in records:
            self._resume(record)

    def _declared_models(self) -> list[ModelCreate]:
        declared = []
        if self._settings.registers_zoo:
            root = self._settings.models_root
            for name, folder in zoo_model_dirs().items():
                source = folder.resolve().relative_to(root).as_posix()
                declared.append(ModelCreate(name=name, source=source))
        if self._settings.models_file is not None:
            declared.extend(read_models_file(self._settings.models_file))
        return declared

    def _register_declared(self, declared: ModelCreate) -> None:
        """Register a declared model; on a fingerprint change the declaration wins and a rescan is queued."""
        try:
            self.register(declared)
        except ModelConflict:
            fingerprint = self._inspect(normalize_source(declared.source))
            logger.warning("model files changed, rescanning model=%s fingerprint=%s", declared.name, fingerprint[:12])
            existing = self.get(declared.name)
            self._registry.restart_scan(declared.name, profile=existing.scan_profile, seed=existing.scan_seed,
                                        fingerprint=fingerprint)
        except (TerdGuardError, ValueError) as error:
            logger.warning("declared model skipped model=%s error=%s", declared.name, error)

    def _resume(self, record: ModelRecord) -> None:
        try:
            fingerprint = self._inspect(record.source)
        except (TerdGuardError, ValueError) as error:
            logger.warning("model source unusable model=%s error=%s", record.name, error)
            self._registry.update_scan(record.name, record.scan_id, state="failed", error=str(error))
            return
        if fingerprint != record.fingerprint:
            logger.warning("model files changed, rescanning model=%s fingerprint=%s", record.name, fingerprint[:12])
            restarted = self._registry.restart_scan(record.name, profile=record.scan_profile, seed=record.scan_seed,
                                                    fingerprint=fingerprint)
        elif not self._store.has(fingerprint):
            restarted = self._registry.restart_scan(record.name, profile=record.scan_profile, seed=record.scan_seed)
        else:
            restarted = record
        if restarted is not None:
            self._schedule(restarted, startup=True)

    # -- helpers ---------------------------------------------------------------------------

    def _inspect(self, source: str) -> str:
        """Validate the model folder without loading it; returns its fingerprint."""
        path = resolve_source(self._settings.models_root, source)
        try:
            _, unet_config, scheduler_config, fingerprint = inspect_model(path)
        except ModelLoadError as error:
            # Core messages name the absolute path; clients see the source they sent instead.
            message = str(error).replace(str(path), source)
            raise type(error)(message) from error
        self._info[fingerprint] = _model_info(unet_config, scheduler_config)
        return fingerprint

    def _schedule(self, record: ModelRecord, force: bool = False, startup: bool = False) -> None:
        """Mark the model ready from a stored or shipped trigger, or queue a scan."""
        shipped = self._settings.shipped_triggers_dir
        if not force and shipped is not None:
            self._store.seed_from(shipped, {record.fingerprint})
        if not force and self._store.has(record.fingerprint):
            try:
                self._scanner.finish_ready(record.name, record.scan_id, self._store.load(record.fingerprint))
                return
            except TerdGuardError as error:
                logger.warning("stored trigger unreadable, rescanning model=%s error=%s", record.name, error)
        self._scanner.submit(ScanJob(
            name=record.name, scan_id=record.scan_id, source=record.source, fingerprint=record.fingerprint,
            profile=record.scan_profile, seed=record.scan_seed, force=force, startup=startup,
        ))

