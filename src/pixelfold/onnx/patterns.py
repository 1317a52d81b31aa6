"""The one registry of ONNX rewrites: transform name -> :class:`Pattern` (anchor op types + builder).

A builder gets a *copy* of the model, the index of the anchor node and the static shapes, and returns a
:class:`Splice`: which node indices to remove, where to insert, the new nodes. It may add initializers to
the copy (unused ones are pruned afterwards). It raises :class:`~pixelfold.errors.FoldError` with the
reason when the pattern does not apply (reported ``skipped``); the caller verifies every splice (fail
closed). New transforms register here with :func:`register`; :mod:`pixelfold.onnx.api` asks only this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx


@dataclass
class Splice:
    """Replace the nodes at ``remove`` (indices into ``graph.node``) by ``nodes``, inserted at ``at``.

    ``at`` indexes the graph *after* the removals; by default it is the position of the first removed node.
    """

    remove: list[int]
    nodes: list[onnx.NodeProto]
    at: int | None = None
    #: outputs of nodes (e.g. a weight's DequantizeLinear) to delete after the splice if nothing reads them
    drop_if_dead: list[str] = field(default_factory=list)

    def apply(self, model: onnx.ModelProto) -> None:
        """Splice (in place) into ``model.graph.node``."""
        at = min(self.remove) if self.at is None else self.at
        for i in sorted(self.remove, reverse=True):
            del model.graph.node[i]
        for j, n in enumerate(self.nodes):
            model.graph.node.insert(at + j, n)
        dropped = True
        while dropped:  # until nothing more is dead: an Identity read the DequantizeLinear before it went
            read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
            dead = [i for i, n in enumerate(model.graph.node)
                    if n.output and all(o in self.drop_if_dead and o not in read for o in n.output)]
            for i in reversed(dead):
                del model.graph.node[i]
            dropped = bool(dead)


Builder = Callable[[onnx.ModelProto, int, dict], Splice]


@dataclass(frozen=True)
class Pattern:
    """One ONNX rewrite: the op types it anchors on, its builder, and whether it changes stride-1 nodes."""

    name: str
    anchors: tuple[str, ...]
    build: Builder
    doc: str = ""
    applies: Callable[[onnx.NodeProto], bool] = field(default=lambda node: True)
    #: on int8 QDQ graphs, run the builder through :func:`pixelfold.onnx.qdq_lift.lift` (integer weights kept)
    lift_qdq: bool = False
    #: the builder the lift runs instead of ``build`` where the QDQ form differs (``patch_matmul``: one Gemm with
    #: its int32 bias, which onnxruntime fuses into an integer kernel, for the float form's MatMul + Add)
    qdq_build: Builder | None = None

    def splice(self, model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
        """The builder's :class:`Splice` for node ``idx``; through the QDQ lift where the weight is quantized."""
        if self.lift_qdq:
            from pixelfold.onnx import qdq_lift

            if qdq_lift.liftable(model, idx):
                return qdq_lift.lift(self, model, idx, shapes)
        return self.build(model, idx, shapes)


PATTERNS: dict[str, Pattern] = {}


def register(pattern: Pattern) -> Pattern:
    """Add ``pattern`` to :data:`PATTERNS` (names are unique)."""
    if pattern.name in PATTERNS:
        raise ValueError(f"ONNX pattern {pattern.name!r} is registered twice")
    PATTERNS[pattern.name] = pattern
    return pattern


def load_builtin() -> None:
    """Import the built-in pattern modules (each registers itself). Called by :mod:`pixelfold.onnx.api` once
    its own imports are done, not here: the pattern modules import each other's helpers, and loading them
    while this module is half-initialised made import order matter (a circular import)."""
    from pixelfold.onnx import fold  # noqa: F401  (registers "fold")
    from pixelfold.onnx import transposed  # noqa: F401  (registers "transposed")
    from pixelfold.onnx import subpixel  # noqa: F401  (registers "subpixel", "subpixel_crd")
    from pixelfold.onnx import onehot  # noqa: F401  (registers "onehot_s2d", "onehot_d2s")
    from pixelfold.onnx import merge  # noqa: F401  (registers "merge")
    from pixelfold.onnx import dcr_flip  # noqa: F401  (registers "dcr_flip")
    from pixelfold.onnx import rtr  # noqa: F401  (registers "rtr")
    from pixelfold.onnx import lower  # noqa: F401  (registers "lower4")
    from pixelfold.onnx import patch  # noqa: F401  (registers "patch_matmul")
    from pixelfold.onnx import polyphase  # noqa: F401  (registers "polyphase2", "polyphase4")
