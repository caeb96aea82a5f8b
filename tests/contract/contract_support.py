"""Helpers for the contract suite (imported by its modules as ``contract_support``)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from taskpipe import clock
from taskpipe.context import WorkerContext
from taskpipe.store import Claim, Outcome, OutcomeKind, Store

#: Where frozen-clock tests start: a whole second, so that sums of seconds are exact.
T0 = datetime(2030, 1, 1, tzinfo=UTC)
T0_TS = T0.timestamp()


def need(store: Store, *capabilities: str) -> None:
    """Skip the calling test unless ``store`` declares every one of ``capabilities``."""
    for capability in capabilities:
        if not getattr(store.capabilities, capability):
            pytest.skip(f"{type(store).__name__} does not declare the {capability!r} capability")


def make_ctx(
    name: str = "contract", capacity: int = 64
) -> tuple[WorkerContext, list[BaseException]]:
    """A worker run's context, as a worker makes it, and the list its reports go to."""
    reported: list[BaseException] = []
    return WorkerContext(name, capacity=capacity, report=reported.append), reported


def ctx(name: str = "contract") -> WorkerContext:
    """A worker run's context whose reports are dropped."""
    return make_ctx(name)[0]


def args_of(store: Store, claim: Claim) -> Any:
    """The claim's payload, decoded (untyped) with the store's codec."""
    return store.codec.decode(claim.payload)


def outcome(store: Store, claim: Claim, kind: OutcomeKind, **fields: Any) -> Outcome:
    """An ``Outcome`` for ``claim``; a DONE one gets its ``encoded_result`` from ``result``."""
    if kind is OutcomeKind.DONE and "result" in fields:
        fields.setdefault("encoded_result", store.encode_result(fields["result"]))
    return Outcome(claim, kind, **fields)


def ack_one(store: Store, claim: Claim, kind: OutcomeKind, **fields: Any) -> Outcome:
    """Ack one outcome for ``claim`` and return it (``accepted`` set by the store)."""
    out = outcome(store, claim, kind, **fields)
    store.ack([out])
    return out


def with_lease(claim: Claim, lease: str) -> Claim:
    """A copy of ``claim`` carrying another lease (as a zombie's claim would)."""
    return dataclasses.replace(claim, lease=lease)


def claim_all(store: Store, run: WorkerContext, limit: int = 1000) -> list[Claim]:
    """Claim until nothing more is due; every claim, in order."""
    claims: list[Claim] = []
    while True:
        batch = store.claim(run, limit)
        if not batch:
            return claims
        claims.extend(batch)


def now() -> float:
    """The current (possibly frozen) time, in epoch seconds."""
    return clock.timestamp()


def at(seconds_after_t0: float) -> datetime:
    """The aware datetime ``seconds_after_t0`` after ``T0``."""
    return datetime.fromtimestamp(T0_TS + seconds_after_t0, tz=UTC)
