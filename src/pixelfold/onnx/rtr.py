"""Reshape -> Transpose -> Reshape recognised as DepthToSpace (DCR or CRD) or SpaceToDepth: the ``rtr`` pattern.

Exporters and hand-written code (einops, custom pixel-shuffles, torch's ``pixel_unshuffle``) spell the
rearrangements as three ops; NPU compilers map the single op better, and the other patterns here
(``transposed``, ``merge``, ``onehot_*``, ``dcr_flip``) anchor on it. The triple is recognised by what it
does, not by its attributes: it is run on an index tensor (NumPy reshape/transpose at the static shapes)
and compared with :func:`pixelfold.rearrange.depth_to_space` / ``space_to_depth`` in each order. A
reshape is fully determined by its output shape, so this is exact for the declared shapes; the Reshape
shapes must be constants (initializers or Constant nodes; a shape computed in the graph is refused: the
rewrite would freeze it).

Space-to-depth in CRD order (``pixel_unshuffle``) has no ONNX op (SpaceToDepth is DCR only) and is
skipped with that reason here; ``merge`` folds it (and a DCR one) into a following Conv.

>>> y = np.arange(32).reshape(1, 2, 2, 2, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(1, 2, 4, 4)  # pixel_shuffle
>>> recognise(y, [1, 8, 2, 2])
('DepthToSpace', 2, 'crd')

With one output channel DCR and CRD coincide; DCR (the ONNX default) is preferred.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper

from pixelfold.errors import FoldError
from pixelfold.onnx.graph import attrs, fresh
from pixelfold.onnx.nodes import constant, consumers, producer, sole_consumer, static_shape
from pixelfold.onnx.patterns import Pattern, Splice, register
from pixelfold.rearrange import depth_to_space, space_to_depth


def recognise(y: np.ndarray, x_shape: list[int]) -> tuple[str, int, str]:
    """``(op, block, order)`` such that ``op(arange(x_shape), block, order) == y``; :class:`FoldError` if none."""
    N, C, H, W = x_shape
    N2, C2, H2, W2 = y.shape
    x = torch.arange(math.prod(x_shape), dtype=torch.float64).reshape(x_shape)
    yt = torch.from_numpy(np.ascontiguousarray(y)).double()
    if N2 == N and H2 > H and H2 % H == 0 and H2 // H == W2 // W and W2 % W == 0:
        b, op, fn = H2 // H, "DepthToSpace", depth_to_space
    elif N2 == N and H2 < H and H % H2 == 0 and H // H2 == W // W2 and W % W2 == 0:
        b, op, fn = H // H2, "SpaceToDepth", space_to_depth
    else:
        raise FoldError(f"rtr: {x_shape} -> {list(y.shape)} is not a depth-to-space or space-to-depth with one block")
    for order in ("dcr", "crd"):
        if torch.equal(fn(x, b, order), yt):
            return op, b, order
    raise FoldError(f"rtr: {x_shape} -> {list(y.shape)} moves the values neither as {op} DCR nor CRD (block {b})")


@dataclass
class Match:
    """A recognised Reshape -> Transpose -> Reshape: the node indices it spans (Constant shape nodes included),
    its input and output values, and the rearrangement it is."""

    remove: list[int]
    x: str
    y: str
    last: int
    op: str
    block: int
    order: str


def match(model: onnx.ModelProto, idx: int, shapes: dict, what: str = "rtr") -> Match:
    """The rearrangement the Transpose at ``idx`` and its two Reshapes perform; :class:`FoldError` if none."""
    tr = model.graph.node[idx]
    ri = producer(model, tr.input[0])
    if ri is None or model.graph.node[ri].op_type != "Reshape":
        raise FoldError(f"{what}: the Transpose input {tr.input[0]!r} does not come from a Reshape")
    sole_consumer(model, tr.input[0], what)
    oi = sole_consumer(model, tr.output[0], what)
    r1, r2 = model.graph.node[ri], model.graph.node[oi]
    if r2.op_type != "Reshape" or r2.input[0] != tr.output[0]:
        raise FoldError(f"{what}: the Transpose output feeds a {r2.op_type}, not the data input of a Reshape")
    remove = [ri, idx, oi]
    for r in (r1, r2):
        value, ki = constant(model, r.input[1])
        if value is None:
            raise FoldError(f"{what}: the shape {r.input[1]!r} of Reshape {r.name!r} is computed in the graph, not a "
                            "constant; replacing it would freeze it")
        if ki is not None and len(consumers(model, r.input[1])) == 1:
            remove.append(ki)  # its Constant node goes with it
    x_shape = static_shape(shapes, r1.input[0], what)
    mid = static_shape(shapes, r1.output[0], what, rank=len(shapes.get(r1.output[0], [])))
    y_shape = static_shape(shapes, r2.output[0], what)
    perm = list(attrs(tr).get("perm", reversed(range(len(mid)))))
    y = np.arange(math.prod(x_shape)).reshape(mid).transpose(perm).reshape(y_shape)
    op, b, order = recognise(y, x_shape)
    return Match(remove, r1.input[0], r2.output[0], oi, op, b, order)


def rearranging(node: onnx.NodeProto) -> bool:
    """Cheap filter: a Transpose of rank 5 or 6, as every 2-D depth-to-space / space-to-depth triple has."""
    return 5 <= len(attrs(node).get("perm", [])) <= 6


def _build(model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
    m = match(model, idx, shapes)
    if m.op == "SpaceToDepth" and m.order == "crd":
        raise FoldError("rtr: this is space-to-depth in CRD order (torch pixel_unshuffle), which has no ONNX op: "
                        "SpaceToDepth is DCR only; kept (merge folds it into a following Conv)")
    extra = {"mode": m.order.upper()} if m.op == "DepthToSpace" else {}
    tr = model.graph.node[idx]
    node = helper.make_node(m.op, [m.x], [m.y], name=fresh(model, (tr.name or "rtr") + "_" + m.op),
                            blocksize=m.block, **extra)
    return Splice(remove=m.remove, nodes=[node], at=m.last - sum(i < m.last for i in m.remove))


register(Pattern("rtr", ("Transpose",), _build,
                 "Reshape -> Transpose -> Reshape => DepthToSpace (DCR/CRD) or SpaceToDepth, recognised on indices",
                 rearranging))
