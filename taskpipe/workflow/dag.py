"""``DagFlow``: functions wired into a directed acyclic graph.

Every node execution is a task. When a node's task is acked, the tasks of its
children are written in the same transaction (fan-out). A node with several
parents (fan-in) is a join: each parent's ack records its output as one part of it,
and the ack that records the last part writes the node's task, exactly once, however
the parents race. The node then takes one parameter: the tuple of its parents'
outputs, in ``depends_on`` order, each decoded into its annotated element type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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
    tuple_types,
)

__all__ = ["DagFlow", "Node"]


class Node:
    """A node of a ``DagFlow`` (made by ``DagFlow.node``); ``depends_on`` wires it."""

    def __init__(self, dag: DagFlow, fn: Callable[..., Any], name: str, max_attempts: int | None):
        self.dag = dag
        self.fn = fn
        self.name = name
        self.max_attempts = max_attempts
        self.deps: tuple[Node, ...] = ()

    def __repr__(self) -> str:
        return f"Node({self.name!r})"

    def depends_on(self, *nodes: Node) -> Node:
        """Run this node on its parents' outputs: one parent's output as it is; several
        parents' as one tuple, in this order. Replaces earlier dependencies."""
        if len(nodes) == 1 and isinstance(nodes[0], (tuple, list)):
            nodes = tuple(nodes[0])  # depends_on((a, b, c)), as in the seed
        if not nodes:
            raise ValueError(f"node {self.name!r}: depends_on() needs at least one node")
        for node in nodes:
            if not isinstance(node, Node) or node.dag is not self.dag:
                raise ValueError(
                    f"node {self.name!r}: depends_on() takes nodes of the same DagFlow "
                    f"(from dag.node(fn)), got {node!r}"
                )
        self.deps = tuple(nodes)
        return self


class DagFlow:
    """A DAG of functions run durably (see the module docstring).

    For example::

        dag = DagFlow("user-etl")
        name, age = dag.node(get_name), dag.node(get_age)
        dag.node(collect).depends_on(name, age)   # collect((name, age))
        dag.validate()
        storage.start_fan_out([42, 42])          # one input per start node
        WorkerBuilder("etl").backend(storage).build(dag).run()
    """

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise ValueError(f"a DagFlow needs a non-empty name, got {name!r}")
        self.name = name
        self._nodes: dict[str, Node] = {}

    def __repr__(self) -> str:
        return f"DagFlow({self.name!r}, nodes={list(self._nodes)})"

    def node(
        self, fn: Callable[..., Any], *, name: str | None = None, max_attempts: int | None = None
    ) -> Node:
        """Add a node running ``fn`` (named ``name``, by default the function's name)."""
        check_callable(fn, "node()")
        name = name if name is not None else fn_name(fn)
        if not isinstance(name, str) or not name or ":" in name or name == START:
            raise ValueError(f"a node name must be a non-empty string without ':', got {name!r}")
        if name in self._nodes:
            raise ValueError(
                f"DagFlow {self.name!r} has a node named {name!r} already: pass node(fn, name=…)"
            )
        if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 1):
            raise ValueError(f"max_attempts must be a positive int, got {max_attempts!r}")
        node = Node(self, fn, name, max_attempts)
        self._nodes[name] = node
        return node

    # Shape ----------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        """Every node, in the order they were added."""
        return list(self._nodes.values())

    def start_nodes(self) -> list[Node]:
        """The nodes without dependencies, in the order they were added: the order of
        ``start_fan_out``'s inputs."""
        return [node for node in self._nodes.values() if not node.deps]

    def children(self, node: Node) -> list[Node]:
        """The nodes that depend on ``node``, in the order they were added."""
        return [child for child in self._nodes.values() if node in child.deps]

    def step_names(self) -> dict[str, str]:
        """Each node's name and its function's name."""
        return {name: fn_name(node.fn) for name, node in self._nodes.items()}

    def validate(self) -> None:
        """Raise ``WorkflowError`` naming the nodes at fault: no node, a cycle, a node
        no start node leads to, several sinks, or a join node whose annotated tuple
        does not have one element per dependency."""
        nodes = self.nodes
        if not nodes:
            raise WorkflowError(f"DagFlow {self.name!r} has no node: add one with dag.node(fn)")
        cycle = self._cycle()
        if cycle:
            raise WorkflowError(f"DagFlow {self.name!r} has a cycle: {' -> '.join(cycle)}")
        reached: set[str] = set()
        todo = self.start_nodes()
        while todo:
            node = todo.pop()
            if node.name not in reached:
                reached.add(node.name)
                todo.extend(self.children(node))
        unreachable = [n.name for n in nodes if n.name not in reached]
        if unreachable:
            raise WorkflowError(
                f"DagFlow {self.name!r}: no start node leads to {', '.join(unreachable)}"
            )
        sinks = [n.name for n in nodes if not self.children(n)]
        if len(sinks) > 1:
            raise WorkflowError(
                f"DagFlow {self.name!r} has several sinks ({', '.join(sinks)}): a DAG ends in one "
                "node; add a node that depends on them all"
            )
        for node in nodes:
            if len(node.deps) < 2:
                continue
            tp = first_param_type(node.fn)
            types = tuple_types(tp, len(node.deps))
            deps = ", ".join(d.name for d in node.deps)
            if tp is not Any and types is None:
                raise WorkflowError(
                    f"DagFlow {self.name!r}: node {node.name!r} depends on {len(node.deps)} nodes "
                    f"({deps}) so it takes one tuple of their outputs, but its input is annotated "
                    f"{tp!r}: annotate it tuple[...] with {len(node.deps)} elements"
                )
            if types is not None and len(types) != len(node.deps):
                raise WorkflowError(
                    f"DagFlow {self.name!r}: node {node.name!r} takes a tuple of {len(types)} "
                    f"({tp!r}) but depends on {len(node.deps)} nodes ({deps})"
                )

    def _cycle(self) -> list[str]:
        """The names along one cycle (first name repeated at the end), or []."""
        state: dict[str, int] = {}  # 1: on the path, 2: done
        path: list[str] = []

        def visit(node: Node) -> list[str]:
            state[node.name] = 1
            path.append(node.name)
            for dep in node.deps:
                if state.get(dep.name) == 1:
                    loop = path[path.index(dep.name) :] + [dep.name]
                    return list(reversed(loop))
                if dep.name not in state:
                    found = visit(dep)
                    if found:
                        return found
            path.pop()
            state[node.name] = 2
            return []

        for node in self._nodes.values():
            if node.name not in state:
                found = visit(node)
                if found:
                    return found
        return []

    def to_dot(self) -> str:
        """The DAG as a Graphviz ``digraph``; a join's edges are labelled with their
        position in its input tuple."""
        lines = [f"digraph {_quote(self.name)} {{"]
        for node in self._nodes.values():
            lines.append(f"  {_quote(node.name)};")
        for node in self._nodes.values():
            for position, dep in enumerate(node.deps):
                label = f" [label={position}]" if len(node.deps) > 1 else ""
                lines.append(f"  {_quote(dep.name)} -> {_quote(node.name)}{label};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    # Running ----------------------------------------------------------------------------------
    def needs_joins(self) -> bool:
        """True when a node has several dependencies (a join)."""
        return any(len(node.deps) > 1 for node in self._nodes.values())

    def check_store(self, store: Any) -> None:
        """Raise ``CapabilityError`` when ``store`` cannot run this DAG."""
        require(store, "follow_ups", f"run DagFlow {self.name!r} (nodes follow acks)")
        require(store, "keys", f"run DagFlow {self.name!r} (its nodes are keyed tasks)")
        if self.needs_joins():
            require(store, "joins", f"run DagFlow {self.name!r} (a node with several dependencies)")

    def start_rows(self, emit: Emitter, inputs: Sequence[Any], fan_out: bool) -> list[Row]:
        """One row per start node, each with its input (their counts must match)."""
        self.validate()
        starts = self._check_inputs(len(inputs), fan_out)
        return [
            self._row(emit, node, emit.encode(value))
            for node, value in zip(starts, inputs, strict=True)
        ]

    def _check_inputs(self, count: int, fan_out: bool) -> list[Node]:
        starts = self.start_nodes()
        names = ", ".join(node.name for node in starts)
        if count != len(starts):
            how = "start_fan_out() got" if fan_out else "push_start() gives"
            hint = "" if fan_out else ": use start_fan_out([...]), one input per start node"
            raise WorkflowError(
                f"DagFlow {self.name!r} has {len(starts)} start node(s) ({names}) but "
                f"{how} {count} input(s){hint}"
            )
        return starts

    def _row(self, emit: Emitter, node: Node, payload: bytes, **meta: Any) -> Row:
        return emit.row(
            node.name, payload, max_attempts=node.max_attempts, name=fn_name(node.fn), **meta
        )

    def bind_worker(self, store: Any, data: dict[type, Any]) -> _Runner:
        """For ``WorkerBuilder.build(dag)``: validate the DAG, check the store, read
        each node's signature, and return what runs the DAG's tasks."""
        self.validate()
        self.check_store(store)
        signatures = {
            name: bind_fn(node.fn, data, f"DagFlow {self.name!r} node {name!r}")
            for name, node in self._nodes.items()
        }
        return _Runner(self, store, signatures)


class _Runner:
    """Runs the tasks of one ``DagFlow`` for one worker (``bind_worker``)."""

    def __init__(self, dag: DagFlow, store: Any, signatures: dict[str, Signature]):
        self.dag = dag
        self.store = store
        self.signatures = signatures
        self.children = {node.name: dag.children(node) for node in dag.nodes}

    def __call__(self, claim: Claim, task: Task[Any], ctx: WorkerContext) -> Any:
        dag, store = self.dag, self.store
        emit = emitter_for(store, claim, task, dag.name)
        step = claim.meta.get("step")
        if step == START:
            return self._start(claim, emit)
        node = dag._nodes.get(step) if isinstance(step, str) else None
        if node is None:
            raise WorkflowError(
                f"DagFlow {dag.name!r} has no node {step!r}: was this run started with another "
                "DAG (or an older version of this one)?"
            )
        signature = self.signatures[node.name]
        if claim.meta.get("join"):
            args: Any = tuple(self._join_inputs(node, claim.meta["join"], signature))
        else:
            args = store.codec.decode(claim.payload, signature.args_type)
        result = call(node.fn, signature, args, task, ctx)
        rows, parts = [], []
        encoded = emit.encode(result) if self.children[node.name] else b""
        for child in self.children[node.name]:
            if len(child.deps) == 1:
                rows.append(dag._row(emit, child, encoded))
                continue
            join = emit.join_key(child.name)
            row = dag._row(emit, child, emit.encode(None), join=join)
            for slot, dep in enumerate(child.deps):
                if dep is node:
                    parts.append(emit.join_part(child.name, len(child.deps), slot, result, row))
        return step_outcome(result, rows, parts)

    def _join_inputs(self, node: Node, key: str, signature: Signature) -> list[Any]:
        slots = len(node.deps)
        types = tuple_types(signature.args_type, slots) or [Any] * slots
        parts = self.store.join_parts(key)
        if [slot for slot, _ in parts] != list(range(slots)):
            raise WorkflowError(f"join {key} is incomplete: {len(parts)} of {slots} parts")
        codec = self.store.codec
        return [codec.decode(value, tp) for (_, value), tp in zip(parts, types, strict=True)]

    def _start(self, claim: Claim, emit: Emitter) -> Any:
        """A start task pushed without the DAG: one task per start node."""
        dag, codec = self.dag, self.store.codec
        if claim.meta.get("fan_out"):
            inputs = codec.decode(claim.payload)
            if not isinstance(inputs, list):
                raise WorkflowError(f"run {emit.run_id}: its start task holds no list of inputs")
            starts = dag._check_inputs(len(inputs), True)
            rows = [
                dag._row(emit, node, emit.encode(v)) for node, v in zip(starts, inputs, strict=True)
            ]
        else:
            [node] = dag._check_inputs(1, False)
            rows = [dag._row(emit, node, bytes(claim.payload))]
        return step_outcome(None, rows)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
