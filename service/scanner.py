"""The scan worker: one background thread that reverses triggers one model at a time on the configured device."""

from __future__ import annotations

import datetime
import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from terdguard.core.errors import TerdGuardError
from terdguard.core.loading import load_model
from terdguard.core.reversion import ProgressCallback, ReversionConfig, ReversionProgress
from terdguard.core.scan import scan_model

from .errors import ModelChanged, ServiceError
from .metrics import Metrics
from .registry import Registry
from .settings import Settings
from .sources import resolve_source
from .store import GuardTrigger, TriggerStore

logger = logging.getLogger(__name__)

PROGRESS_WRITE_SECONDS = 0.5  # registry writes of scan progress at most this often
STOP_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class ScanJob:
    """One queued scan; it applies only while the registry row still carries `scan_id`."""

    name: str
    scan_id: str
    source: str
    fingerprint: str
    profile: str
    seed: int
    force: bool = False  # scan even when a trigger for this fingerprint is stored
    startup: bool = False  # counts toward readiness


class _Stopped(Exception):
    """Raised from the progress callback to abandon a scan when the service stops."""


class ScanWorker:
    """Runs queued scans in a daemon thread and records each outcome in the registry and the store."""

    def __init__(self, settings: Settings, registry: Registry, store: TriggerStore, metrics: Metrics,
                 configs: Mapping[str, ReversionConfig] | None = None) -> None:
        self._settings = settings
        self._registry = registry
        self._store = store
        self._metrics = metrics
        self._configs = dict(configs or {})
        self._jobs: queue.Queue[ScanJob] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._startup_left: set[str] = set()
        self._lock = threading.Lock()
        self._depth = metrics.queue_depth.labels(queue="scan")

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="terdguard-scan", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to stop; a running scan is abandoned and rescanned at the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("scan worker still running after stop timeout=%.1fs", timeout)

    def submit(self, job: ScanJob) -> None:
        if job.startup:
            with self._lock:
                self._startup_left.add(job.scan_id)
        self._jobs.put(job)
        self._depth.set(self._jobs.qsize())
        logger.info("scan queued model=%s profile=%s fingerprint=%s", job.name, job.profile, job.fingerprint[:12])

    @property
    def startup_done(self) -> bool:
        with self._lock:
            return not self._startup_left

    @property
    def startup_pending(self) -> int:
        with self._lock:
            return len(self._startup_left)

    def config_for(self, profile: str) -> ReversionConfig:
        return self._configs.get(profile) or ReversionConfig.for_profile(profile)

    # -- the worker thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._jobs.get(timeout=STOP_POLL_SECONDS)
            except queue.Empty:
                continue
            self._depth.set(self._jobs.qsize())
            try:
                self._process(job)
            except _Stopped:
                logger.info("scan abandoned at stop model=%s", job.name)
            except Exception:  # the worker must survive anything one scan throws
                logger.exception("scan worker error model=%s", job.name)
            finally:
                with self._lock:
                    self._startup_left.discard(job.scan_id)

    def _process(self, job: ScanJob) -> None:
        record = self._registry.get(job.name)
        if record is None or record.scan_id != job.scan_id:
            logger.info("scan skipped, superseded model=%s", job.name)
            return

        # 1. Reuse a stored trigger unless a rescan was requested.
        if not job.force and self._store.has(job.fingerprint):
            try:
                self.finish_ready(job.name, job.scan_id, self._store.load(job.fingerprint))
                return
            except TerdGuardError as error:
                logger.warning("stored trigger unreadable, rescanning model=%s error=%s", job.name, error)

        # 2. Load and scan, reporting progress to the registry.
        config = self.config_for(job.profile)
        planned = config.planned_iterations()
        self._registry.update_scan(job.name, job.scan_id, state="scanning", progress_done=0, progress_planned=planned)
        start = time.perf_counter()
        try:
            model = load_model(resolve_source(self._settings.models_root, job.source), device=self._settings.device)
            if model.fingerprint != job.fingerprint:
                raise ModelChanged(
                    f"model files changed: {job.source} has fingerprint {model.fingerprint[:12]}, "
                    f"expected {job.fingerprint[:12]}; restart the service or register the model again"
                )
            logger.info("scan started model=%s profile=%s device=%s", job.name, job.profile, model.device)
            result = scan_model(
                model, config, seed=job.seed, false_positive_rate=self._settings.false_positive_rate,
                progress=self._progress_writer(job, planned),
            )
            trigger = self._store.save(result)
        except _Stopped:
            raise
        except Exception as error:
            self._record_failure(job, error, time.perf_counter() - start)
            return

        # 3. Record the verdict.
        seconds = time.perf_counter() - start
        self._metrics.scans.labels(profile=job.profile, outcome=trigger.verdict).inc()
        self._metrics.scan_duration.labels(profile=job.profile, outcome=trigger.verdict).observe(seconds)
        self.finish_ready(job.name, job.scan_id, trigger)
        logger.info("scan finished model=%s verdict=%s kl_mean=%.4g kl_var=%.4g seconds=%.1f",
                    job.name, trigger.verdict, trigger.kl_mean, trigger.kl_var, seconds)

        # 4. The store keys triggers by fingerprint, so ready models with the same files now use this one too.
        for other in self._registry.with_fingerprint(job.fingerprint):
            if other.name == job.name or other.state != "ready":
                continue
            if self.finish_ready(other.name, other.scan_id, trigger):
                logger.info("trigger shared model=%s from=%s", other.name, job.name)

    def finish_ready(self, name: str, scan_id: str, trigger: GuardTrigger) -> bool:
        """Mark a model ready with a trigger's verdict and statistics; False when the scan was superseded."""
        iterations = trigger.result.report.iterations
        done = self._registry.update_scan(
            name, scan_id, state="ready", verdict=trigger.verdict, statistics=trigger.statistics(), error=None,
            progress_done=iterations, progress_planned=iterations,
            scanned_at=_parse_time(trigger.result.report.created),
        )
        if done:
            self._metrics.guard_threshold.labels(model=name).set(trigger.llr_threshold)
        return done

    def _record_failure(self, job: ScanJob, error: Exception, seconds: float) -> None:
        if isinstance(error, (TerdGuardError, ServiceError)):
            message = str(error)
            logger.warning("scan failed model=%s error=%s", job.name, message)
        else:
            message = f"scan failed with an unexpected {type(error).__name__}; the server log has the details"
            logger.error("scan failed model=%s", job.name, exc_info=error)
        self._metrics.scans.labels(profile=job.profile, outcome="failed").inc()
        self._metrics.scan_duration.labels(profile=job.profile, outcome="failed").observe(seconds)
        self._registry.update_scan(job.name, job.scan_id, state="failed", verdict=None, statistics=None, error=message)

    def _progress_writer(self, job: ScanJob, planned: int) -> ProgressCallback:
        last_write = 0.0

        def report(progress: ReversionProgress) -> None:
            nonlocal last_write
            if self._stop.is_set():
                raise _Stopped()
            now = time.monotonic()
            if now - last_write >= PROGRESS_WRITE_SECONDS or progress.iteration >= progress.planned:
                last_write = now
                self._registry.update_scan(
                    job.name, job.scan_id, progress_done=progress.iteration,
                    progress_planned=progress.planned or planned,
                )

        return report


def _parse_time(value: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
