"""What an ONNX node is, as a target sees it: :func:`onnx_ops` maps a node to :class:`pixelfold.units.Op`\\ s.

The targets (:mod:`pixelfold.targets`) judge operators, not nodes; this is the bridge for ONNX graphs, the
counterpart of :func:`pixelfold.units.original_ops` for PyTorch modules. ``Conv``/``ConvTranspose`` carry a
:class:`~pixelfold.spec.ConvSpec` built from their attributes (``pads``/``auto_pad``, ``group``,
``dilations``, ``output_padding``); ``SpaceToDepth`` and ``DepthToSpace`` are
``dcr`` or ``crd`` by their ``mode`` (SpaceToDepth has one since opset 28); ``Transpose``/``Reshape`` carry their rank. The Reshape/Transpose nodes
pixelfold writes for a rearrangement (the rank-4 lowering, :mod:`pixelfold.onnx.lower`; the rank-6 ``crd``
space-to-depth of a grouped ``fold``, :mod:`pixelfold.onnx.fold`) say in their ``doc_string`` which
rearrangement they implement, so they map to the same lowered ops :func:`pixelfold.forms.lowered` gives the
PyTorch side (``block``, ``order``, ``channels``, ``rank`` 4 or 6, ``note="lowered ..."``). Nodes no target
constrains (Relu, Add, ...) map to ``[]``.

>>> from onnx import helper
>>> n = helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=3, mode="CRD")
>>> [str(o) for o in onnx_ops(None, n, {"x": [1, 18, 5, 5]})]
['depth_to_space 3×3 crd']
>>> n = helper.make_node("Reshape", ["x", "s"], ["y"], doc_string=annotation("depth_to_space", 3, "dcr", 2, (1, 5, 5)))
>>> onnx_ops(None, n, {})[0].attrs()["order"], onnx_ops(None, n, {})[0].rank
('dcr', 4)
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import onnx

from pixelfold.errors import FoldError
from pixelfold.onnx.graph import attrs, const
from pixelfold.onnx.nodes import text
from pixelfold.spec import ConvSpec
from pixelfold.units import Op

__all__ = ["onnx_ops", "conv_spec", "annotation", "node_macs", "PLAIN"]

#: ONNX op type -> Op kind for the ops that carry no more than their kind
PLAIN = {"Pad": "pad", "Slice": "slice", "Concat": "concat", "MatMul": "matmul", "Gemm": "matmul"}
_TAG = "pixelfold lower4:"
_ANNOT = re.compile(r"pixelfold lower4: (\w+) block=(\d+) order=(\w+) channels=(\d+)(?: grid=([\d,]+))?(?: rank=(\d+))?")


def annotation(kind: str, block: int, order: str, channels: int, grid: Sequence[int] | None, rank: int = 4) -> str:
    """The ``doc_string`` pixelfold writes on each Reshape/Transpose of a rearrangement it emits (``rank``: of
    its tensors; 4 for :mod:`pixelfold.onnx.lower`, 6 for a grouped fold's ``crd`` space-to-depth).

    >>> annotation("space_to_depth", 2, "crd", 8, (1, 5, 4), rank=6)
    'pixelfold lower4: space_to_depth block=2 order=crd channels=8 grid=1,5,4 rank=6'
    """
    g = f" grid={','.join(map(str, grid))}" if grid else ""
    r = f" rank={rank}" if rank != 4 else ""
    return f"{_TAG} {kind} block={block} order={order} channels={channels}{g}{r}"


def _weight_shape(model: onnx.ModelProto | None, node: onnx.NodeProto, shapes: dict) -> list[int] | None:
    if len(node.input) > 1:
        if node.input[1] in shapes:
            return list(shapes[node.input[1]])
        w = const(model, node.input[1]) if model is not None else None
        if w is not None:
            return list(w.shape)
    return None


def conv_spec(model: onnx.ModelProto | None, node: onnx.NodeProto, shapes: dict) -> ConvSpec:
    """The :class:`ConvSpec` of a ``Conv`` / ``ConvTranspose`` node (its weight's shape must be known).

    ``auto_pad`` ``SAME_*`` is resolved with the input's static H and W (ONNX semantics); without them the
    pads are written as the symmetric ``k // 2`` the target sees for "same" (a constraint on padding is then
    approximate, which is said nowhere else: give static shapes).
    """
    w = _weight_shape(model, node, shapes)
    if w is None:
        raise FoldError(f"{node.op_type} {node.name!r}: the shape of its weight {node.input[1]!r} is unknown; "
                        "a constant (initializer) weight or static shapes are needed to judge it for a target")
    a = attrs(node)
    n = len(w) - 2
    k = list(a.get("kernel_shape", w[2:]))
    s = list(a.get("strides", [1] * n))
    d = list(a.get("dilations", [1] * n))
    g = int(a.get("group", 1))
    mode = text(a.get("auto_pad"), "NOTSET")
    bias = len(node.input) > 2 and bool(node.input[2])
    x = shapes.get(node.input[0])
    if node.op_type == "Conv":
        if mode in ("SAME_UPPER", "SAME_LOWER") and (x is None or len(x) != n + 2):
            pads = [dd * (kk - 1) // 2 for kk, dd in zip(k, d)] * 2
        elif n == 2:
            from pixelfold.onnx.fold import conv_pads

            pads = conv_pads(node, list(x[2:]) if x is not None else [0, 0], k, s, d)
        else:
            pads = [0] * (2 * n) if mode == "VALID" else list(a.get("pads", [0] * (2 * n)))
        return ConvSpec(w[1] * g, w[0], tuple(k), tuple(s), tuple(zip(pads[:n], pads[n:])), tuple(d), groups=g,
                        bias=bias)
    pads = [0] * (2 * n) if mode != "NOTSET" else list(a.get("pads", [0] * (2 * n)))
    if n == 2 and ("output_shape" in a or mode in ("SAME_UPPER", "SAME_LOWER")) and x is not None:
        from pixelfold.onnx.subpixel import convt_pads

        lo, hi = convt_pads(a, list(x[2:]), k, d, list(a.get("output_padding", [0, 0])))
        pads = lo + hi
    return ConvSpec(w[0], w[1] * g, tuple(k), tuple(s), tuple((p, p) for p in pads[:n]), tuple(d), groups=g,
                    bias=bias, transposed=True, output_padding=tuple(a.get("output_padding", [0] * n)))


def _rearrangement(node: onnx.NodeProto, shapes: dict) -> Op:
    a = attrs(node)
    b = int(a["blocksize"])
    x = shapes.get(node.input[0])
    if node.op_type == "SpaceToDepth":
        channels = x[1] if x is not None else None
        grid = (x[0], x[2] // b, x[3] // b) if x is not None and len(x) == 4 else None
        return Op("space_to_depth", block=(b, b), order=text(a.get("mode"), "DCR").lower(), channels=channels,
                  grid=grid)  # opset 28 added mode="CRD"
    order = text(a.get("mode"), "DCR").lower()
    channels = x[1] // (b * b) if x is not None else None
    grid = (x[0], x[2], x[3]) if x is not None and len(x) == 4 else None
    return Op("depth_to_space", block=(b, b), order=order, channels=channels, grid=grid)


def _lowered(node: onnx.NodeProto, m: re.Match) -> Op:
    kind, block, order, channels, grid, rank = m.groups()
    b = int(block)
    return Op(node.op_type.lower(), block=(b, b), order=order, channels=int(channels), rank=int(rank or 4),
              grid=tuple(int(v) for v in grid.split(",")) if grid else None, note=f"lowered {kind}")


def onnx_ops(model: onnx.ModelProto | None, node: onnx.NodeProto, shapes: dict) -> list[Op]:
    """The operators ``node`` is, as a target's constraints see them (see the module docstring).

    ``shapes`` maps value names to static shapes (:func:`pixelfold.onnx.graph.static_shapes`); ``model``
    gives the weights' shapes where ``shapes`` lacks them (it may be ``None`` for nodes without weights).
    """
    t = node.op_type
    if t in ("Conv", "ConvTranspose"):
        spec = conv_spec(model, node, shapes)
        return [Op("conv_transpose" if spec.transposed else "conv", spec=spec)]
    if t in ("SpaceToDepth", "DepthToSpace"):
        return [_rearrangement(node, shapes)]
    if t in ("Transpose", "Reshape"):
        m = _ANNOT.search(node.doc_string or "")
        if m:
            return [_lowered(node, m)]
        if t == "Transpose":
            perm = attrs(node).get("perm")
            rank = len(perm) if perm is not None else len(shapes.get(node.input[0], [])) or None
        else:
            ranks = [len(shapes[v]) for v in (node.input[0], node.output[0]) if v in shapes]
            rank = max(ranks) if ranks else None
        return [Op(t.lower(), rank=rank)]
    if t in PLAIN:
        return [Op(PLAIN[t])]
    return []


def node_macs(model: onnx.ModelProto, node: onnx.NodeProto, shapes: dict) -> float:
    """Multiply-accumulates of a Conv / ConvTranspose / MatMul node (0 for others; ``nan`` if sizes are unknown)."""
    t = node.op_type
    if t in ("Conv", "ConvTranspose"):
        w = _weight_shape(model, node, shapes)
        side = node.output[0] if t == "Conv" else node.input[0]
        if w is None or side not in shapes:
            return math.nan
        # Conv: every output position × O × C/g·k; ConvTranspose: every input position × C × O/g·k
        return float(math.prod(shapes[side][:1] + shapes[side][2:]) * math.prod(w))
    if t in ("MatMul", "Gemm"):
        a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        if a is None or y is None:
            return math.nan
        return float(math.prod(y) * a[-1])
    return 0.0


def describe(ops: Sequence[Any]) -> str:
    """``op; op`` in the words the PyTorch side's notes use."""
    return "; ".join(map(str, ops))
