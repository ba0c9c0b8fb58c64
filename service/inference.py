"""Generation and detection requests: check the request, run the guard, hand accepted latents to the sampler."""

from __future__ import annotations

import base64
import logging
import secrets
import time
from dataclasses import dataclass

import anyio
import torch

from terdguard.core.errors import InvalidLatentsError

from .errors import ClientDisconnected, GuardRejected, InvalidRequest
from .generation import Disconnected, GenerationGate, LocalSampler, RemoteSampler, SampleJob, SampleOutput
from .guard import Decision, Screening, resolve_policy, screen
from .metrics import Metrics
from .models_service import ModelInfo, ModelService
from .registry import ModelRecord
from .schemas import DecisionPublic, DetectRequest, DetectResponse, GenerateRequest, GenerateResponse, Timings
from .settings import Settings
from .store import GuardTrigger
from .tensors import TensorObject, decode_tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardStep:
    """The guard's part of one request and how long it took."""

    screening: Screening
    seed: int
    seconds: float


def _public(decisions: tuple[Decision, ...]) -> list[DecisionPublic]:
    return [DecisionPublic(index=d.index, llr=d.llr, threshold=d.threshold, verdict=d.verdict, action=d.action)
            for d in decisions]


class InferenceService:
    """Runs /generate and /detect; the guard work runs in worker threads, never on the event loop."""

    def __init__(self, settings: Settings, models: ModelService, metrics: Metrics, gate: GenerationGate,
                 local: LocalSampler | None, remote: RemoteSampler | None) -> None:
        self._settings = settings
        self._models = models
        self._metrics = metrics
        self._gate = gate
        self._local = local
        self._remote = remote

    async def detect(self, body: DetectRequest) -> DetectResponse:
        start = time.perf_counter()
        record, trigger, info = await anyio.to_thread.run_sync(self._models.require_ready, body.model)
        policy = self._settings.guard_policy
        step = await anyio.to_thread.run_sync(self._guard, record, trigger, info, body.latents, None, None, policy)
        seconds = time.perf_counter() - start
        return DetectResponse(model=record.name, policy=policy, decisions=_public(step.screening.decisions),
                              timings=Timings(guard_seconds=step.seconds, sampler_seconds=0.0, total_seconds=seconds))

    async def generate(self, body: GenerateRequest, request_id: str | None,
                       disconnected: Disconnected | None = None) -> GenerateResponse:
        start = time.perf_counter()
        if body.latents is not None and body.num_images is not None:
            raise InvalidRequest("request invalid: got both latents and num_images, expected one of them")
        record, trigger, info = await anyio.to_thread.run_sync(self._models.require_ready, body.model)
        policy = resolve_policy(body.guard, self._settings.guard_policy)
        steps = self._num_inference_steps(body.num_inference_steps, info)

        # 1. Guard: score the noise and apply the policy.
        step = await anyio.to_thread.run_sync(
            self._guard, record, trigger, info, body.latents, body.num_images, body.seed, policy,
        )
        if step.screening.rejected:
            flagged = sum(decision.verdict == "poisoned" for decision in step.screening.decisions)
            logger.warning("generation rejected model=%s flagged=%d request_id=%s", record.name, flagged, request_id)
            raise GuardRejected(
                f"request rejected: {flagged} of {len(step.screening.decisions)} samples carry "
                f"the trigger of {record.name!r} (llr above {trigger.llr_threshold:.4g})",
                extensions={"decisions": [d.model_dump() for d in _public(step.screening.decisions)]},
            )

        # 2. Sampler: only accepted latents get here.
        job = SampleJob(model=record.name, source=record.source, fingerprint=record.fingerprint,
                        x_T=step.screening.x_T, sampler=body.sampler, num_inference_steps=steps, seed=step.seed)
        output = await self._sample(job, request_id, disconnected)
        self._metrics.generation_duration.labels(model=record.name, sampler=body.sampler).observe(output.seconds)

        total = time.perf_counter() - start
        logger.info("generation finished model=%s images=%d sampler=%s steps=%d seconds=%.3f request_id=%s",
                    record.name, len(output.images), body.sampler, steps, total, request_id)
        return GenerateResponse(
            model=record.name, policy=policy, sampler=body.sampler, num_inference_steps=steps, seed=step.seed,
            images=[_base64(image) for image in output.images], decisions=_public(step.screening.decisions),
            timings=Timings(guard_seconds=step.seconds, sampler_seconds=output.seconds, total_seconds=total),
        )

    async def _sample(self, job: SampleJob, request_id: str | None, disconnected: Disconnected | None) -> SampleOutput:
        async with self._gate.slot():
            start = time.perf_counter()
            if self._remote is not None:
                output = await self._remote.sample(job, request_id)
            else:
                assert self._local is not None, "an app has a local or a remote sampler"
                try:
                    output = await self._local.sample_while_connected(job, disconnected)
                except ClientDisconnected as error:
                    logger.info("generation stopped model=%s request_id=%s: %s", job.model, request_id, error)
                    raise
            # Wall time seen by the guard, so a remote sampler's network time counts too.
            return SampleOutput(output.images, time.perf_counter() - start)

    def _num_inference_steps(self, requested: int | None, info: ModelInfo) -> int:
        limit = info.num_train_timesteps
        if requested is None:
            return min(self._settings.default_num_inference_steps, limit)
        if not 1 <= requested <= limit:
            raise InvalidRequest(f"num_inference_steps invalid: got {requested}, expected 1 to {limit}")
        return requested

    def _guard(self, record: ModelRecord, trigger: GuardTrigger, info: ModelInfo, latents: TensorObject | None,
               num_images: int | None, seed: int | None, policy: str) -> GuardStep:
        """Decode or draw x_T, score it and apply `policy`; blocking, so it runs in a worker thread."""
        start = time.perf_counter()
        seed = seed if seed is not None else secrets.randbits(63)
        generator = torch.Generator().manual_seed(seed)
        limit = self._settings.max_images_per_request
        if latents is not None:
            self._check_shape(latents.shape, info)
            x_T = decode_tensor(latents)
        else:
            count = num_images if num_images is not None else 1
            if count > limit:
                raise InvalidRequest(f"num_images invalid: got {count}, expected 1 to {limit}")
            x_T = torch.randn((count, *info.sample_shape), generator=generator)
            # Server noise cannot carry a caller's trigger: a flag on it is a false
            # positive, so it is redrawn instead of failing the request.
            if policy == "reject":
                policy = "resample"
        screening = screen(trigger, x_T, policy, generator)
        self._record(record.name, trigger, screening)
        return GuardStep(screening=screening, seed=seed, seconds=time.perf_counter() - start)

    def _check_shape(self, shape: list[int], info: ModelInfo) -> None:
        if len(shape) != 4 or tuple(shape[1:]) != info.sample_shape:
            raise InvalidLatentsError(
                f"latents shape invalid: got {tuple(shape)}, expected (B, {', '.join(map(str, info.sample_shape))})"
            )
        limit = self._settings.max_images_per_request
        if shape[0] > limit:
            raise InvalidRequest(f"latents batch invalid: got {shape[0]} samples, expected 1 to {limit}")

    def _record(self, model: str, trigger: GuardTrigger, screening: Screening) -> None:
        self._metrics.guard_threshold.labels(model=model).set(trigger.llr_threshold)
        llr_margin = self._metrics.guard_llr.labels(model=model)
        for decision in screening.decisions:
            self._metrics.guard_decisions.labels(model=model, verdict=decision.verdict, action=decision.action).inc()
            llr_margin.observe(decision.llr - decision.threshold)


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
