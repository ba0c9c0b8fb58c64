"""The input guard: score initial noise against a model's reversed trigger and apply the guard policy.

Policies:
    reject    Any poisoned sample rejects the whole request, and nothing reaches the sampler.
    resample  Poisoned samples are replaced by fresh noise N(0, I) that scores clean.
    monitor   Every sample goes to the sampler, and poisoned ones are reported as flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch

from terdguard.core.scoring import decide

from .errors import PolicyForbidden
from .settings import GUARD_POLICIES, Policy
from .store import GuardTrigger

# A sample redrawn this often and still poisoned means the trigger flags clean
# noise; the request is then rejected instead of looping.
MAX_RESAMPLE_ATTEMPTS = 8
PROTECTIVE_POLICIES = ("reject", "resample")

Verdict = Literal["poisoned", "clean"]
Action = Literal["passed", "rejected", "resampled", "flagged"]


@dataclass(frozen=True)
class Decision:
    """The guard's decision on one sample."""

    index: int
    llr: float
    threshold: float
    verdict: Verdict
    action: Action


@dataclass(frozen=True)
class Screening:
    """The outcome for a batch: the latents allowed through and one decision per sample."""

    x_T: torch.Tensor  # (B, C, H, W), flagged samples already replaced under `resample`
    decisions: tuple[Decision, ...]
    rejected: bool


def allowed_policies(server_policy: str) -> tuple[str, ...]:
    """Return the policies a request may ask for under the server's policy.

    `monitor` lets poisoned noise through, so a request may choose it only when the
    server runs `monitor` itself. `reject` and `resample` are always allowed because
    both keep poisoned noise away from the sampler.
    """
    return GUARD_POLICIES if server_policy == "monitor" else PROTECTIVE_POLICIES


def resolve_policy(requested: str | None, server_policy: str) -> Policy:
    """Return the policy for one request; raises PolicyForbidden when it is weaker than the server's."""
    if requested is None:
        return cast(Policy, server_policy)
    allowed = allowed_policies(server_policy)
    if requested not in allowed:
        raise PolicyForbidden(
            f"guard policy not allowed: got {requested!r}, expected one of {allowed} "
            f"because the server enforces {server_policy!r}"
        )
    return cast(Policy, requested)


def screen(trigger: GuardTrigger, x_T: torch.Tensor, policy: str, generator: torch.Generator) -> Screening:
    """Score `x_T` (B, C, H, W) and apply `policy`; `generator` draws replacement noise for `resample`.

    Raises InvalidLatentsError (from the scorer) when the shape does not match the trigger.
    """
    if policy not in GUARD_POLICIES:
        raise ValueError(f"policy invalid: got {policy!r}, expected one of {GUARD_POLICIES}")
    threshold = trigger.llr_threshold

    # 1. Score every sample under the clean and the poisoned prior.
    llr = trigger.scorer.score(x_T)
    flagged = decide(llr, threshold)

    # 2. Under `resample`, redraw each flagged sample until it scores clean.
    accepted = x_T.clone()
    still_flagged = flagged.clone()
    if policy == "resample":
        for _ in range(MAX_RESAMPLE_ATTEMPTS):
            rows = still_flagged.nonzero().flatten()
            if rows.numel() == 0:
                break
            fresh = torch.randn((rows.numel(), *x_T.shape[1:]), generator=generator, dtype=x_T.dtype)
            accepted[rows] = fresh
            still_flagged[rows] = decide(trigger.scorer.score(fresh), threshold)

    # 3. Name the action taken on each sample.
    decisions = []
    for index in range(x_T.shape[0]):
        poisoned = bool(flagged[index])
        action: Action
        if not poisoned:
            action = "passed"
        elif policy == "monitor":
            action = "flagged"
        elif policy == "resample" and not bool(still_flagged[index]):
            action = "resampled"
        else:
            action = "rejected"
        decisions.append(Decision(index, float(llr[index]), threshold, "poisoned" if poisoned else "clean", action))
    rejected = any(decision.action == "rejected" for decision in decisions)
    return Screening(x_T=accepted, decisions=tuple(decisions), rejected=rejected)
