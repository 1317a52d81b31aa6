"""Space-to-depth -> Conv => one Conv with stride ``s*b`` on the original input: the ``merge`` pattern.

What YOLOv5 did to its Focus layer, on an ONNX graph. The step is a SpaceToDepth (order ``"dcr"``, its
only order) or a Reshape -> Transpose -> Reshape recognised as a space-to-depth in DCR or CRD order
(:func:`pixelfold.onnx.rtr.match`; CRD is what torch's ``pixel_unshuffle`` exports, and has no ONNX op of
its own). The weight is :func:`pixelfold.transforms.to_space_weight` in that order, kernel ``E*b`` (``E``
the dense kernel extent: dilation is written out), stride ``s*b``, each pad ``p*b`` (asymmetric pads and
``auto_pad`` too: ONNX Conv pads each side on its own). A grouped conv is written out densely first
(zeros between groups) and split back into as many groups as its zeros allow, as :func:`pixelfold.merge`
does: DCR mixes the groups' channels (``groups=1``), CRD keeps them.

Applies when the step's output feeds only that Conv (as its data input) and the weight is constant;
H and W need to be static only for ``auto_pad=SAME_*`` (a SpaceToDepth already requires them divisible
by the block). Anchored on the step (SpaceToDepth, or the Transpose),
so that a profile can try ``merge`` before ``onehot_s2d`` on the same node.

>>> from pixelfold.onnx.patterns import PATTERNS
>>> PATTERNS["merge"].anchors
('SpaceToDepth', 'Transpose')
"""

from __future__ import annotations

import onnx
from onnx import helper

from pixelfold.errors import FoldError
from pixelfold.onnx.fold import conv_pads
from pixelfold.onnx.graph import attrs, const, fresh
from pixelfold.onnx.nodes import dense_index, dims, gather, init, sole_consumer, text
from pixelfold.onnx.patterns import Pattern, Splice, register
from pixelfold.onnx.rtr import match, rearranging
from pixelfold.onnx.transposed import s2d_order
from pixelfold.probe import _regroup
from pixelfold.spec import ConvSpec
from pixelfold.transforms import to_space_weight



def _step(model: onnx.ModelProto, idx: int, shapes: dict) -> tuple[list[int], str, str, int, str]:
    """The space-to-depth step anchored at ``idx``: ``(node indices, input, output, block, order)``."""
    node = model.graph.node[idx]
    if node.op_type == "SpaceToDepth":
        return [idx], node.input[0], node.output[0], *s2d_order(node)
    m = match(model, idx, shapes, "merge")
    if m.op != "SpaceToDepth":
        raise FoldError(f"merge: the Reshape -> Transpose -> Reshape is a {m.op}, not a space-to-depth")
    return m.remove, m.x, m.y, m.block, m.order


def _build(model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
    remove, x, t, b, order = _step(model, idx, shapes)
    ci = sole_consumer(model, t, "merge")
    conv = model.graph.node[ci]
    if conv.op_type != "Conv" or conv.input[0] != t or list(conv.input).count(t) != 1:
        raise FoldError(f"merge: the space-to-depth output feeds a {conv.op_type} (not as the data input of a Conv)")
    N, C, H, W = shapes.get(x, [None] * 4)  # (a SpaceToDepth already requires H, W divisible by the block)
    if (H or 0) % b or (W or 0) % b:
        raise FoldError(f"merge: spatial size {H}x{W} is not divisible by blocksize {b}")
    w = const(model, conv.input[1])
    if w is None or w.ndim != 4:
        raise FoldError(f"merge: the weight {conv.input[1]!r} is not a constant rank-4 initializer")
    a = attrs(conv)
    same = text(a.get("auto_pad"), "NOTSET") in ("SAME_UPPER", "SAME_LOWER")
    deep = dims(model, t, "merge", "HW", "to resolve auto_pad") if same else [None] * 4
    k = list(w.shape[2:])
    s = list(a.get("strides", [1, 1]))
    d = list(a.get("dilations", [1, 1]))
    g = int(a.get("group", 1))
    pads = conv_pads(conv, deep[2:], k, s, d)
    O, Cg = w.shape[:2]
    dense = dense_index(w.shape, g)
    spec = ConvSpec(Cg * g, O, tuple(k), tuple(s), ((pads[0], pads[2]), (pads[1], pads[3])), tuple(d))
    index, new = to_space_weight(dense, spec, (b, b), order)
    index, groups = _regroup(index)
    weight = gather(w, index)
    base = conv.name or "conv"
    inputs = [x, init(model, weight, conv.input[1] + "_merged"), *conv.input[2:]]
    (t, bo), (l, r) = new.padding
    node = helper.make_node("Conv", inputs, list(conv.output), name=fresh(model, base + "_merged"),
                            kernel_shape=list(new.kernel), strides=list(new.stride), pads=[t, l, bo, r], group=groups)
    remove = remove + [ci]
    return Splice(remove=remove, nodes=[node], at=ci - sum(i < ci for i in remove))


def _applies(node: onnx.NodeProto) -> bool:
    return node.op_type == "SpaceToDepth" or rearranging(node)


register(Pattern("merge", ("SpaceToDepth", "Transpose"), _build,
                 "SpaceToDepth(b) or Reshape-Transpose-Reshape space-to-depth -> Conv => one Conv(stride s*b)", _applies,
                 lift_qdq=True))
