"""``Workflow``: steps one after another, each step's output the next one's input.

Every execution of a step is a task; the task of the next step is written in the
same transaction as the ack of the step before it (a follow-up), so a crash never
loses or repeats a transition. What each kind of step writes:

- ``and_then(fn)``: one task; its result is the next step's input;
- ``delay_for(d)`` / ``delay_with(fn)``: no task: the next step's task is due later;
- ``filter_map(fn)``: one task per item of the input; each item's result is a part
  of a join (recorded in that item's ack); the last part writes a *collect* task that
  drops the ``None`` results and passes the rest, in input order, on as a list (an
  empty list ends the run there);
- ``fold(fn, initial)``: one task per item, one after another; ``fn((acc, item))``
  returns the next accumulator, carried to the next item's task;
- ``repeat_until(fn)``: the step runs again (a new task, ``Iteration`` + 1) until
  ``fn`` returns something other than None.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .. import clock
from ..context import WorkerContext
from ..errors import WorkflowError
from ..injection import Signature
from ..store import Claim, Row, require
from ..task import Task
from .runs import (
    START,
    Emitter,
    bind_fn,
    call,
    check_callable,
    emitter_for,
    first_param_type,
    fn_name,
    step_outcome,
)

__all__ = ["Workflow"]

AND_THEN, FILTER_MAP, FOLD, REPEAT = "and_then", "filter_map", "fold", "repeat_until"


@dataclass(frozen=True)
class _Step:
    kind: str
    fn: Callable[..., Any]
    max_attempts: int | None = None
    initial: Any = None  # fold
    every: float = 0.0  # repeat_until: the pause between iterations
    max_iterations: int | None = None  # repeat_until


@dataclass(frozen=True)
class _Delay:
    seconds: float = 0.0
    fn: Callable[[Any], Any] | None = None

    def after(self, value: Any, where: str) -> float:
        if self.fn is None:
            return self.seconds
        delay = self.fn(value)
        try:
            return float(clock.seconds(delay, name="delay_with()'s result") or 0.0)
        except (TypeError, ValueError) as exc:
            raise WorkflowError(
                f"{where}: delay_with() must return a timedelta or seconds: {exc}"
            ) from exc


class Workflow:
    """Steps run one after another, durably (see the module docstring).

    For example::

        flow = Workflow("order").and_then(charge).delay_for(timedelta(seconds=1)).and_then(ship)
        run_id = storage.push_start(order)
        WorkerBuilder("w").backend(storage).build(flow).run()
    """

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise ValueError(f"a workflow needs a non-empty name, got {name!r}")
        self.name = name
        self._elements: list[_Step | _Delay] = []

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, steps={len(self._elements)})"

    # Defining ---------------------------------------------------------------------------
    def and_then(self, fn: Callable[..., Any], *, max_attempts: int | None = None) -> Workflow:
        """Run ``fn`` on the previous step's output (decoded into ``fn``'s annotated
        type); its return value is the next step's input."""
        return self._add(_Step(AND_THEN, fn, max_attempts), "and_then()")

    def delay_for(self, delay: timedelta | float) -> Workflow:
        """Make the next step due ``delay`` (a timedelta or seconds) after this point."""
        seconds = clock.seconds(delay, name="delay_for()")
        if seconds is None or seconds < 0:
            raise ValueError(f"delay_for() takes a non-negative delay, got {delay!r}")
        self._elements.append(_Delay(seconds=float(seconds)))
        return self

    def delay_with(self, fn: Callable[[Any], timedelta | float]) -> Workflow:
        """Make the next step due after ``fn(previous output)`` (a timedelta or seconds)."""
        check_callable(fn, "delay_with()")
        self._elements.append(_Delay(fn=fn))
        return self

    def filter_map(self, fn: Callable[..., Any], *, max_attempts: int | None = None) -> Workflow:
        """Run ``fn`` on each item of the previous output, one task per item; the
        results that are not None go on, in input order, as a list (none: the run ends)."""
        return self._add(_Step(FILTER_MAP, fn, max_attempts), "filter_map()")

    def fold(
        self, fn: Callable[..., Any], initial: Any, *, max_attempts: int | None = None
    ) -> Workflow:
        """Run ``fn((acc, item))`` on each item of the previous output in turn, one task
        each, starting from ``acc = initial``; the last accumulator goes on."""
        return self._add(_Step(FOLD, fn, max_attempts, initial=initial), "fold()")

    def repeat_until(
        self,
        fn: Callable[..., Any],
        *,
        every: timedelta | float = 0.0,
        max_iterations: int | None = None,
        max_attempts: int | None = None,
    ) -> Workflow:
        """Run ``fn`` on the previous output again (``every`` apart) until it returns
        something other than None, which goes on; a parameter annotated ``Iteration``
        receives the run's number (1, 2, …). After ``max_iterations`` the run fails."""
        pause = clock.seconds(every, name="every") or 0.0
        if max_iterations is not None and (
            not isinstance(max_iterations, int) or max_iterations < 1
        ):
            raise ValueError(f"max_iterations must be a positive int, got {max_iterations!r}")
        step = _Step(REPEAT, fn, max_attempts, every=float(pause), max_iterations=max_iterations)
        return self._add(step, "repeat_until()")

    def _add(self, step: _Step, what: str) -> Workflow:
        check_callable(step.fn, what)
        if step.max_attempts is not None and (
            not isinstance(step.max_attempts, int) or step.max_attempts < 1
        ):
            raise ValueError(f"max_attempts must be a positive int, got {step.max_attempts!r}")
        self._elements.append(step)
        return self

    # Checking and drawing ---------------------------------------------------------------
    def step_names(self) -> dict[str, str]:
        """Each step's id (its position, as stored in its tasks) and function name."""
        return {
            str(i): fn_name(el.fn) for i, el in enumerate(self._elements) if isinstance(el, _Step)
        }

    def validate(self) -> None:
        """Raise ``WorkflowError`` when the workflow cannot run: no step, or a fold
        function whose input is annotated as something other than a pair."""
        if not any(isinstance(el, _Step) for el in self._elements):
            raise WorkflowError(f"workflow {self.name!r} has no step: add one with and_then(fn)")
        for i, el in enumerate(self._elements):
            if isinstance(el, _Step) and el.kind == FOLD:
                tp = first_param_type(el.fn)
                args = typing.get_args(tp)
                is_tuple = typing.get_origin(tp) is tuple
                if tp is not Any and (not is_tuple or (args and len(args) != 2)):
                    raise WorkflowError(
                        f"workflow {self.name!r}: step {i} (fold {fn_name(el.fn)}) takes {tp!r}, "
                        "but a fold function takes one (accumulator, item) pair: annotate it "
                        "tuple[Acc, Item]"
                    )

    def to_dot(self) -> str:
        """The workflow as a Graphviz ``digraph`` (steps in order, delays as edges)."""
        lines = [f"digraph {_quote(self.name)} {{", "  rankdir=LR;"]
        previous, label = None, ""
        for i, el in enumerate(self._elements):
            if isinstance(el, _Delay):
                label = "delay" if el.fn is not None else f"delay {el.seconds:g}s"
                continue
            node = _quote(f"{i} {el.kind} {fn_name(el.fn)}")
            lines.append(f"  {node};")
            if previous is not None:
                attr = f" [label={_quote(label)}]" if label else ""
                lines.append(f"  {previous} -> {node}{attr};")
            if el.kind == REPEAT:
                lines.append(f"  {node} -> {node} [label={_quote('until not None')}];")
            previous, label = node, ""
        lines.append("}")
        return "\n".join(lines) + "\n"

    # Running ------------------------------------------------------------------------------
    def check_store(self, store: Any) -> None:
        """Raise ``CapabilityError`` when ``store`` cannot run this workflow."""
        require(store, "follow_ups", f"run workflow {self.name!r} (steps follow acks)")
        require(store, "keys", f"run workflow {self.name!r} (its steps are keyed tasks)")
        if any(isinstance(el, _Step) and el.kind == FILTER_MAP for el in self._elements):
            require(store, "joins", f"run workflow {self.name!r}'s filter_map step (a join)")

    def start_rows(self, emit: Emitter, inputs: Sequence[Any], fan_out: bool) -> list[Row]:
        """The rows that start a run on ``inputs`` (one input: a workflow has one start)."""
        self.validate()
        if len(inputs) != 1:
            raise WorkflowError(
                f"workflow {self.name!r} starts with one input, got {len(inputs)}: "
                "use push_start(args) (start_fan_out() is for a DagFlow)"
            )
        return self._enter(0, inputs[0], emit)

    def bind_worker(self, store: Any, data: dict[type, Any]) -> _Runner:
        """For ``WorkerBuilder.build(flow)``: check the workflow and the store, read each
        step's signature, and return what runs the workflow's tasks."""
        self.validate()
        self.check_store(store)
        signatures = {
            i: bind_fn(el.fn, data, f"workflow {self.name!r} step {i}")
            for i, el in enumerate(self._elements)
            if isinstance(el, _Step)
        }
        return _Runner(self, store, signatures)

    def _enter(
        self,
        index: int,
        value: Any,
        emit: Emitter,
        delay: float = 0.0,
        payload: bytes | None = None,
    ) -> list[Row]:
        """The rows that make the run go on at element ``index`` with ``value`` (its
        encoding ``payload`` when at hand); none when the workflow ends there."""
        elements = self._elements
        while index < len(elements) and isinstance(elements[index], _Delay):
            delay += typing.cast(_Delay, elements[index]).after(value, self._where(index))
            index += 1
        if index >= len(elements):
            return []
        step = typing.cast(_Step, elements[index])
        sid, name = str(index), fn_name(step.fn)
        options: dict[str, Any] = {"delay": delay, "max_attempts": step.max_attempts, "name": name}
        if step.kind in (AND_THEN, REPEAT):
            encoded = payload if payload is not None else emit.encode(value)
            n = 1 if step.kind == REPEAT else None
            return [emit.row(sid, encoded, n=n, **options)]
        items = _items(value, self._where(index))
        if step.kind == FILTER_MAP:
            return [
                emit.row(sid, emit.encode(item), n=n, of=len(items), **options)
                for n, item in enumerate(items)
            ]
        if not items:  # a fold over nothing: its initial value goes on
            return self._enter(index + 1, step.initial, emit, delay)
        envelope = ((step.initial, items[0]), items[1:])
        return [emit.row(sid, emit.encode(envelope), n=0, **options)]

    def _where(self, index: int) -> str:
        el = self._elements[index]
        what = f" ({el.kind} {fn_name(el.fn)})" if isinstance(el, _Step) else ""
        return f"workflow {self.name!r} step {index}{what}"


class _Runner:
    """Runs the tasks of one ``Workflow`` for one worker (``bind_worker``)."""

    def __init__(self, flow: Workflow, store: Any, signatures: dict[int, Signature]):
        self.flow = flow
        self.store = store
        self.signatures = signatures

    def __call__(self, claim: Claim, task: Task[Any], ctx: WorkerContext) -> Any:
        flow, store = self.flow, self.store
        emit = emitter_for(store, claim, task, flow.name)
        step = claim.meta.get("step")
        if step == START:
            return self._start(claim, emit)
        index = _index(step, flow)
        el = typing.cast(_Step, flow._elements[index])
        signature = self.signatures[index]
        codec = store.codec
        n = claim.meta.get("n")
        n = n if isinstance(n, int) else 0  # (a filter_map's collect task has none)
        if el.kind == AND_THEN:
            result = call(
                el.fn, signature, codec.decode(claim.payload, signature.args_type), task, ctx
            )
            return step_outcome(result, flow._enter(index + 1, result, emit))
        if el.kind == FILTER_MAP:
            if claim.meta.get("join"):
                return self._collect(index, claim, emit)
            result = call(
                el.fn, signature, codec.decode(claim.payload, signature.args_type), task, ctx
            )
            slots = int(claim.meta["of"])
            collect = emit.row(
                str(index), emit.encode(None), n="collect", join=emit.join_key(str(index)),
                of=slots, name=fn_name(el.fn), max_attempts=el.max_attempts,
            )  # fmt: skip
            return step_outcome(result, (), [emit.join_part(str(index), slots, n, result, collect)])
        if el.kind == FOLD:
            tp = signature.args_type
            item_types = typing.get_args(tp) if typing.get_origin(tp) is tuple else ()
            item_type = item_types[1] if len(item_types) == 2 else Any
            pair, rest = codec.decode(claim.payload, tuple[tp, list[item_type]])  # type: ignore[valid-type]
            acc = call(el.fn, signature, tuple(pair), task, ctx)
            if rest:
                envelope = ((acc, rest[0]), rest[1:])
                row = emit.row(
                    str(index), emit.encode(envelope), n=n + 1,
                    name=fn_name(el.fn), max_attempts=el.max_attempts,
                )  # fmt: skip
                return step_outcome(acc, [row])
            return step_outcome(acc, flow._enter(index + 1, acc, emit))
        # REPEAT
        result = call(el.fn, signature, codec.decode(claim.payload, signature.args_type), task, ctx)
        if result is not None:
            return step_outcome(result, flow._enter(index + 1, result, emit))
        if el.max_iterations is not None and n >= el.max_iterations:
            raise WorkflowError(
                f"{flow._where(index)} returned None {n} times (max_iterations={el.max_iterations})"
            )
        again = emit.row(
            str(index), bytes(claim.payload), n=n + 1, delay=el.every,
            name=fn_name(el.fn), max_attempts=el.max_attempts,
        )  # fmt: skip
        return step_outcome(None, [again])

    def _start(self, claim: Claim, emit: Emitter) -> Any:
        """A start task pushed without the flow: route its input to the first step."""
        if claim.meta.get("fan_out"):
            inputs = self.store.codec.decode(claim.payload)
            if not isinstance(inputs, list) or len(inputs) != 1:
                count = len(inputs) if isinstance(inputs, list) else "?"
                raise WorkflowError(
                    f"workflow {self.flow.name!r} starts with one input, but this run was "
                    f"started with start_fan_out() and {count} inputs: use push_start(args)"
                )
            return step_outcome(None, self.flow._enter(0, inputs[0], emit))
        payload = bytes(claim.payload)
        value = self.store.codec.decode(payload)
        return step_outcome(None, self.flow._enter(0, value, emit, payload=payload))

    def _collect(self, index: int, claim: Claim, emit: Emitter) -> Any:
        """A filter_map's items are all done: their results, None dropped, go on."""
        key, slots = claim.meta["join"], int(claim.meta["of"])
        parts = self.store.join_parts(key)
        if [slot for slot, _ in parts] != list(range(slots)):
            raise WorkflowError(f"join {key} is incomplete: {len(parts)} of {slots} parts")
        values = [self.store.codec.decode(value) for _, value in parts]
        kept = [value for value in values if value is not None]
        if not kept:  # nothing left: the run ends here
            return step_outcome(kept)
        return step_outcome(kept, self.flow._enter(index + 1, kept, emit))


def _index(step: Any, flow: Workflow) -> int:
    try:
        index = int(step)
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < len(flow._elements) or not isinstance(flow._elements[index], _Step):
        raise WorkflowError(
            f"workflow {flow.name!r} has no step {step!r}: was this run started with another "
            "workflow (or an older version of this one)?"
        )
    return index


def _items(value: Any, where: str) -> list[Any]:
    if isinstance(value, (str, bytes, bytearray)) or not hasattr(value, "__iter__"):
        raise WorkflowError(f"{where} takes a list of items, got {type(value).__name__}")
    return list(value)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
