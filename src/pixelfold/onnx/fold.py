"""Conv with stride s (2-D, equal strides) -> [Pad] -> [Slice] -> space-to-depth(s) -> Conv stride 1.

The weight comes from :func:`pixelfold.transforms.to_depth_weight` in the order the space-to-depth writes
(:func:`fold_order`):

- ``group = 1``: ``SpaceToDepth(s)``, order ``"dcr"`` (ONNX SpaceToDepth puts the block offset outside the
  channel: ``(bh*s + bw)*C + c``);
- ``group > 1`` (depthwise and grouped convs): ``dcr`` would interleave the groups' channels, so the input is
  rearranged in ``"crd"`` order (``c*s*s + bh*s + bw``: each channel's s² phases side by side, each group's
  channels contiguous) by ``Reshape(N, C, H/s, s, W/s, s) → Transpose(0, 1, 3, 5, 2, 4) → Reshape(N, C·s², H/s, W/s)``
  (every opset; ``SpaceToDepth`` has no ``mode`` before opset 28), and the folded Conv keeps the group count
  with ``C·s²`` input channels.

The conv's padding (explicit or auto_pad) is moved into an explicit Pad so the folded conv has none; the padded
size is then trimmed or extended to exactly what the folded kernel reads.

>>> from onnx import TensorProto
>>> w = numpy_helper.from_array(np.ones((8, 1, 3, 3), np.float32), "w")  # depthwise 3x3 stride 2
>>> g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="dw", strides=[2, 2], pads=[1, 1, 1, 1],
...     group=8)], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 9, 7])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 5, 4])], [w])
>>> m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
>>> nodes = fold_conv(m, m.graph.node[0], [1, 8, 9, 7])
>>> [n.op_type for n in nodes], attrs(nodes[-1])["group"], const(m, nodes[-1].input[1]).shape
(['Pad', 'Reshape', 'Transpose', 'Reshape', 'Conv'], 8, (8, 4, 2, 2))
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from pixelfold.errors import FoldError
from pixelfold.onnx.graph import attrs, const, fresh
from pixelfold.onnx.ops import annotation
from pixelfold.onnx.patterns import Pattern, Splice, register
from pixelfold.spec import ConvSpec
from pixelfold.transforms import to_depth_weight


def conv_pads(node: onnx.NodeProto, in_hw: list[int], k: list[int], s: list[int], d: list[int]) -> list[int]:
    """Explicit ``[top, left, bottom, right]`` pads of a Conv, resolving auto_pad (ONNX semantics).

    >>> n = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2])
    >>> conv_pads(n, [7, 8], [4, 4], [2, 2], [1, 1])
    [2, 1, 1, 1]
    """
    a = attrs(node)
    mode = a.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "NOTSET":
        return list(a.get("pads", [0] * 4))
    if mode == "VALID":
        return [0] * 4
    lo, hi = [], []
    for n, kk, ss, dd in zip(in_hw, k, s, d):
        out = -(-n // ss)
        total = max(0, (out - 1) * ss + dd * (kk - 1) + 1 - n)
        small, big = total // 2, total - total // 2
        lo.append(big if mode == "SAME_LOWER" else small)
        hi.append(small if mode == "SAME_LOWER" else big)
    return lo + hi


def fold_plan(node: onnx.NodeProto, w_shape: tuple[int, ...], in_shape: list[int]) -> tuple[ConvSpec, int, list[int]]:
    """``(spec without padding, block, explicit [t, l, b, r] pads)`` of a foldable Conv, or :class:`FoldError`."""
    if len(in_shape) != 4:
        raise FoldError(f"fold handles 2-D convs (rank-4 input); this input has rank {len(in_shape)}")
    a = attrs(node)
    k = list(w_shape[2:])
    s = list(a.get("strides", [1, 1]))
    d = list(a.get("dilations", [1, 1]))
    g = int(a.get("group", 1))
    if s[0] != s[1] or s[0] < 2:
        raise FoldError(f"strides {s}: fold needs equal strides > 1")
    pads = conv_pads(node, in_shape[2:], k, s, d)
    return ConvSpec.make(w_shape[1] * g, w_shape[0], k, stride=s, padding=0, dilation=d, groups=g), s[0], pads


def fold_order(spec: ConvSpec) -> str:
    """The channel order of the fold's space-to-depth: ``"dcr"`` (ONNX ``SpaceToDepth``) for ``group = 1``,
    ``"crd"`` (Reshape/Transpose/Reshape, groups kept apart) for grouped convs."""
    return "dcr" if spec.groups == 1 else "crd"


def _crd_nodes(model: onnx.ModelProto, node: onnx.NodeProto, x: str, shape: list[int], b: int) -> tuple[list[onnx.NodeProto], str]:
    """``Reshape → Transpose → Reshape``: the ``crd`` space-to-depth of ``x`` (static ``N, C, H, W``, H and W
    multiples of ``b``: :func:`space_nodes` pads or cuts to that), channel ``c*b*b + bh*b + bw``."""
    _, C, H, W = shape
    doc = annotation("space_to_depth", b, "crd", C, (shape[0], H // b, W // b), rank=6)  # what a target judges
    s6, s4 = (fresh(model, node.name + n) for n in ("_s2d_shape6", "_s2d_shape4"))
    for nm, v in ((s6, [-1, C, H // b, b, W // b, b]), (s4, [-1, C * b * b, H // b, W // b])):
        model.graph.initializer.append(numpy_helper.from_array(np.array(v, np.int64), nm))
    r6, t6, y = (fresh(model, node.name + n) for n in ("_s2d_r6", "_s2d_t6", "_s2d"))
    return [helper.make_node("Reshape", [x, s6], [r6], name=fresh(model, node.name + "_S2D_Reshape6"), doc_string=doc),
            helper.make_node("Transpose", [r6], [t6], name=fresh(model, node.name + "_S2D_Transpose"),
                             perm=[0, 1, 3, 5, 2, 4], doc_string=doc),
            helper.make_node("Reshape", [t6, s4], [y], name=fresh(model, node.name + "_S2D_Reshape4"), doc_string=doc)], y


def space_nodes(model: onnx.ModelProto, node: onnx.NodeProto, x: str, in_shape: list[int], spec: ConvSpec,
                pads: list[int], kernel: tuple[int, ...], pad_value: str | None = None) -> tuple[list[onnx.NodeProto], str]:
    """``([Pad] [Slice] SpaceToDepth, output name)`` feeding the folded conv (kernel ``kernel``) from ``x``;
    for ``spec.groups > 1`` the SpaceToDepth is the ``crd`` Reshape/Transpose/Reshape (:func:`fold_order`).

    ``pad_value`` names a scalar initializer for Pad's constant (the zero point when ``x`` is quantized);
    None pads with 0. Adds the pads/slice initializers to ``model``.
    """
    b, k, s, d = spec.stride[0], spec.kernel, spec.stride, spec.dilation
    nodes: list[onnx.NodeProto] = []
    ends, need = [], []
    for i in range(2):
        padded = in_shape[2 + i] + pads[i] + pads[2 + i]
        out = (padded - (d[i] * (k[i] - 1) + 1)) // s[i] + 1
        need.append(b * (out - 1 + kernel[i]))
        ends.append(need[i] - (in_shape[2 + i] + pads[i]))  # extra (>0) or cut (<0) at the far end
    hi = [max(e, 0) for e in ends]
    if any(pads[:2]) or any(hi):
        pname = fresh(model, node.name + "_pads")
        model.graph.initializer.append(numpy_helper.from_array(np.array([0, 0, pads[0], pads[1], 0, 0, hi[0], hi[1]], np.int64), pname))
        y = fresh(model, node.name + "_padded")
        ins = [x, pname] + ([pad_value] if pad_value else [])
        nodes.append(helper.make_node("Pad", ins, [y], name=fresh(model, node.name + "_Pad"), mode="constant"))
        x = y
    if any(e < 0 for e in ends):
        st, en, ax = (fresh(model, node.name + n) for n in ("_st", "_en", "_ax"))
        stop = [in_shape[2 + i] + pads[i] + min(ends[i], 0) for i in range(2)]
        for nm, v in ((st, [0, 0]), (en, stop), (ax, [2, 3])):
            model.graph.initializer.append(numpy_helper.from_array(np.array(v, np.int64), nm))
        y = fresh(model, node.name + "_cut")
        nodes.append(helper.make_node("Slice", [x, st, en, ax], [y], name=fresh(model, node.name + "_Slice")))
        x = y
    if fold_order(spec) == "crd":
        crd, y = _crd_nodes(model, node, x, [in_shape[0], in_shape[1], *need], b)
        return nodes + crd, y
    y = fresh(model, node.name + "_s2d")
    nodes.append(helper.make_node("SpaceToDepth", [x], [y], name=fresh(model, node.name + "_S2D"), blocksize=b))
    return nodes, y


def fold_conv(model: onnx.ModelProto, node: onnx.NodeProto, in_shape: list[int]) -> list[onnx.NodeProto]:
    """Replacement nodes for ``node`` (a stride>1 2-D Conv); adds initializers to ``model``.

    Raises :class:`FoldError` when the conv is not foldable (reason in the message).
    """
    w = const(model, node.input[1])
    if w is None:
        raise FoldError(f"the weight {node.input[1]!r} is not an initializer; fold needs constant weights")
    spec, b, pads = fold_plan(node, w.shape, in_shape)
    tw, new = to_depth_weight(torch.from_numpy(np.array(w)).double(), spec, b, order=fold_order(spec))
    nodes, y = space_nodes(model, node, node.input[0], in_shape, spec, pads, new.kernel)
    wname = fresh(model, node.input[1] + "_folded")
    model.graph.initializer.append(numpy_helper.from_array(tw.numpy().astype(w.dtype), wname))
    nodes.append(folded_conv_node(model, node, [y, wname] + list(node.input[2:]), new))
    return nodes


def folded_conv_node(model: onnx.ModelProto, node: onnx.NodeProto, inputs: list[str], new: ConvSpec) -> onnx.NodeProto:
    """The stride-1, padding-free Conv that replaces ``node`` (same name and outputs)."""
    return helper.make_node("Conv", inputs, list(node.output), name=node.name or fresh(model, "Conv"),
                            kernel_shape=list(new.kernel), group=new.groups)


def _build(model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
    node = model.graph.node[idx]
    if node.input[0] not in shapes:
        raise FoldError("input shape is not static; fold needs it")
    from pixelfold.onnx import qdq  # int8 QDQ graphs: the weight comes from a DequantizeLinear

    if qdq.weight_dq(model, node) is not None:
        return qdq.fold_splice(model, idx, shapes)
    return Splice(remove=[idx], nodes=fold_conv(model, node, shapes[node.input[0]]))


def _strided(node: onnx.NodeProto) -> bool:
    return max(attrs(node).get("strides", [1, 1])) >= 2


register(Pattern("fold", ("Conv",), _build, "strided Conv -> [Pad] [Slice] SpaceToDepth (group > 1: CRD "
                 "Reshape/Transpose/Reshape) Conv(stride 1)", _strided))
