"""The guard policies on a real trigger, and the generation gate's admission limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from terdguard.core.detection import DetectionThresholds
from terdguard.core.errors import InvalidLatentsError
from terdguard.service.errors import PolicyForbidden, QueueFull
from terdguard.service.generation import GenerationGate
from terdguard.service.guard import resolve_policy, screen
from terdguard.service.metrics import Metrics
from terdguard.service.store import GuardTrigger, TriggerStore

from .service_helpers import noise


@pytest.fixture(scope="module")
def trigger(shipped_triggers: Path, manifest: dict) -> GuardTrigger:
    store = TriggerStore(shipped_triggers, DetectionThresholds(), "neyman-pearson", 1e-3)
    return store.load(manifest["fingerprint"])


def poisoned_batch(true_trigger: tuple[torch.Tensor, torch.Tensor], batch: int, seed: int) -> torch.Tensor:
    trigger_mean, trigger_std = true_trigger
    return trigger_mean + trigger_std * noise(batch, seed, tuple(trigger_mean.shape))


def test_store_derives_backdoored_verdict(trigger: GuardTrigger) -> None:
    assert trigger.verdict == "backdoored"
    assert trigger.threshold_rule == "neyman-pearson"
    assert trigger.false_positive_rate == 1e-3


def test_reject_flags_only_poisoned(trigger: GuardTrigger, true_trigger: tuple[torch.Tensor, torch.Tensor]) -> None:
    x_T = torch.cat([noise(2, 0), poisoned_batch(true_trigger, 2, 1)])
    screening = screen(trigger, x_T, "reject", torch.Generator().manual_seed(0))
    assert screening.rejected
    assert [d.verdict for d in screening.decisions] == ["clean", "clean", "poisoned", "poisoned"]
    assert [d.action for d in screening.decisions] == ["passed", "passed", "rejected", "rejected"]
    assert all(d.threshold == trigger.llr_threshold for d in screening.decisions)


def test_resample_replaces_poisoned(trigger: GuardTrigger, true_trigger: tuple[torch.Tensor, torch.Tensor]) -> None:
    x_T = torch.cat([noise(1, 0), poisoned_batch(true_trigger, 1, 1)])
    screening = screen(trigger, x_T, "resample", torch.Generator().manual_seed(0))
    assert not screening.rejected
    assert [d.action for d in screening.decisions] == ["passed", "resampled"]
    assert torch.equal(screening.x_T[0], x_T[0])
    assert not torch.equal(screening.x_T[1], x_T[1])
    assert float(trigger.scorer.score(screening.x_T[1:])[0]) <= trigger.llr_threshold


def test_monitor_passes_everything(trigger: GuardTrigger, true_trigger: tuple[torch.Tensor, torch.Tensor]) -> None:
    x_T = poisoned_batch(true_trigger, 2, 3)
    screening = screen(trigger, x_T, "monitor", torch.Generator().manual_seed(0))
    assert not screening.rejected
    assert [d.action for d in screening.decisions] == ["flagged", "flagged"]
    assert torch.equal(screening.x_T, x_T)


def test_screen_rejects_wrong_shape(trigger: GuardTrigger) -> None:
    with pytest.raises(InvalidLatentsError, match="shape invalid"):
        screen(trigger, torch.zeros(1, 3, 16, 16), "reject", torch.Generator())


@pytest.mark.parametrize(
    ("requested", "server", "expected"),
    [(None, "reject", "reject"), ("resample", "reject", "resample"), ("monitor", "monitor", "monitor"),
     ("reject", "monitor", "reject"), (None, "monitor", "monitor")],
)
def test_policy_allowed(requested: str | None, server: str, expected: str) -> None:
    assert resolve_policy(requested, server) == expected


@pytest.mark.parametrize("server", ["reject", "resample"])
def test_policy_monitor_forbidden(server: str) -> None:
    with pytest.raises(PolicyForbidden, match="expected one of"):
        resolve_policy("monitor", server)


async def _hold(gate: GenerationGate, release: asyncio.Event) -> None:
    async with gate.slot():
        await release.wait()


async def _fill_gate(gate: GenerationGate, release: asyncio.Event) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
    """Start one generation holding the only slot and one waiting for it, both until `release` is set."""
    running = asyncio.create_task(_hold(gate, release))
    waiting = asyncio.create_task(_hold(gate, release))
    await asyncio.sleep(0.01)
    return running, waiting


def test_gate_rejects_beyond_queue() -> None:
    async def scenario() -> tuple[QueueFull | None, int]:
        gate = GenerationGate(concurrency=1, max_queue=1, metrics=Metrics())
        release = asyncio.Event()
        running, waiting = await _fill_gate(gate, release)
        rejection = None
        try:
            async with gate.slot():
                pass
        except QueueFull as error:
            rejection = error
        release.set()
        await asyncio.gather(running, waiting)
        async with gate.slot():  # both places are free again
            pass
        return rejection, gate._admitted

    rejection, admitted = asyncio.run(scenario())
    assert rejection is not None
    assert int(rejection.headers["Retry-After"]) >= 1
    assert admitted == 0


def test_gate_cancelled_waiter_frees_place() -> None:
    async def scenario() -> int:
        gate = GenerationGate(concurrency=1, max_queue=1, metrics=Metrics())
        release = asyncio.Event()
        running, waiting = await _fill_gate(gate, release)
        waiting.cancel()
        await asyncio.sleep(0.01)
        replacement = asyncio.create_task(_hold(gate, release))  # QueueFull unless the cancelled waiter left
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(running, replacement)
        return gate._admitted

    assert asyncio.run(scenario()) == 0
