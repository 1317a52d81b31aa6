"""int8 QDQ graphs (``onnxruntime.quantization.quantize_static``, QDQ format): fold keeping weights integer.

A QDQ Conv reads ``DequantizeLinear(x_q)`` and ``DequantizeLinear(w_q, s_w, z_w, axis=0)``. The fold becomes

``x_q → [Pad(value = z_x)] → [Slice] → SpaceToDepth → DequantizeLinear(s_x, z_x) → Conv ← DequantizeLinear(w_q')``

- the rearrangement runs on the *quantized* tensor, padded with the activation zero point, so a new
  DequantizeLinear feeds the Conv directly and onnxruntime's QDQ Conv selector (DQ x, DQ w, [DQ b], Conv, Q)
  still fuses it into QLinearConv: no Q/DQ pair is needed around SpaceToDepth (onnxruntime's DropQDQ rules
  leave SpaceToDepth/DepthToSpace out, see its ``qdq_selector_action_transformer.cc``);
- ``w_q'`` is :func:`pixelfold.transforms.to_depth_weight` applied to ``w_q - z_w`` (a permutation plus zero
  taps) with ``z_w`` added back, so the new taps hold the weight's zero point (per output channel); scales,
  zero points, axis and the int32 bias are reused (fold keeps the output channels);
- DQ is elementwise and ``DQ(z_x) = 0`` exactly, so the graph computes the same reals; the integer
  accumulation of QLinearConv sees the same non-zero products, so its int32 sums and outputs are identical;
- grouped and depthwise convs: the SpaceToDepth is the ``crd`` Reshape → Transpose → Reshape of
  :mod:`pixelfold.onnx.fold` (each group's channels kept together) and the weight is permuted in ``crd`` order,
  the group count kept; it is data movement too, so it sits where SpaceToDepth sits in both layouts below.

Verification: :mod:`pixelfold.onnx.qdq_verify` (exact integer accumulators; onnxruntime on and off in LSBs).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from pixelfold.errors import FoldError
from pixelfold.onnx.fold import fold_order, fold_plan, folded_conv_node, space_nodes
from pixelfold.onnx.graph import attrs, const, fresh
from pixelfold.onnx.patterns import Splice
from pixelfold.transforms import to_depth_weight

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def is_qdq(model: onnx.ModelProto) -> bool:
    """True when ``model`` has QuantizeLinear/DequantizeLinear nodes (it is then verified in LSBs)."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def producer(model: onnx.ModelProto, name: str) -> int | None:
    """Index of the node that outputs ``name`` (None for graph inputs and initializers)."""
    return next((i for i, n in enumerate(model.graph.node) if name in n.output), None)


def consumers(model: onnx.ModelProto, name: str) -> list[int]:
    """Indices of the nodes reading ``name``."""
    return [i for i, n in enumerate(model.graph.node) if name in n.input]


def weight_dq(model: onnx.ModelProto, node: onnx.NodeProto) -> int | None:
    """Index of the DequantizeLinear that produces ``node``'s weight (input 1), or None."""
    i = producer(model, node.input[1]) if len(node.input) > 1 else None
    return i if i is not None and model.graph.node[i].op_type == "DequantizeLinear" else None


def _dq_params(model: onnx.ModelProto, dq: onnx.NodeProto, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``(scale, zero point, axis)`` initializers of a DequantizeLinear, or :class:`FoldError`."""
    scale = const(model, dq.input[1])
    zp = const(model, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    if scale is None or (len(dq.input) > 2 and dq.input[2] and zp is None):
        raise FoldError(f"the {what} DequantizeLinear {dq.name!r} has a non-constant scale or zero point; "
                        "fold needs them as initializers")
    a = attrs(dq)
    if a.get("block_size", 0):
        raise FoldError(f"the {what} DequantizeLinear {dq.name!r} is block-quantized (block_size "
                        f"{a['block_size']}); fold handles per-tensor and per-channel (axis 0) only")
    return scale, zp, int(a.get("axis", 1))


def fold_weight_q(w_q: np.ndarray, zp: np.ndarray | None, axis: int, spec, block: int) -> tuple[np.ndarray, object]:
    """The folded integer weight: ``to_depth_weight(w_q - z) + z``, zero taps = z (per output channel).

    >>> from pixelfold.spec import ConvSpec
    >>> w = np.arange(2 * 1 * 3 * 3, dtype=np.int8).reshape(2, 1, 3, 3)
    >>> z = np.array([5, -3], np.int8)
    >>> wq, new = fold_weight_q(w, z, 0, ConvSpec.make(1, 2, 3, stride=2), 2)
    >>> wq.dtype, wq.shape, new.kernel
    (dtype('int8'), (2, 4, 2, 2), (2, 2))
    >>> int((wq[0] == 5).sum() - (w[0] == 5).sum()), int((wq[1] == -3).sum())  # the 7 new taps hold z
    (7, 7)
    >>> wq, new = fold_weight_q(w, z, 0, ConvSpec.make(2, 2, 3, stride=2, groups=2), 2)  # depthwise: crd order
    >>> wq.shape, new.groups, new.in_channels
    ((2, 4, 2, 2), 2, 8)
    """
    z = np.zeros(w_q.shape[0], np.int64) if zp is None else np.asarray(zp, np.int64)
    if z.ndim == 0 or z.size == 1:
        z = np.full(w_q.shape[0], int(z.reshape(-1)[0]), np.int64)
    elif axis not in (0, -4) or z.shape != (w_q.shape[0],):
        raise FoldError(f"the weight zero point has shape {list(z.shape)} on axis {axis}; fold keeps "
                        f"per-output-channel (axis 0, {w_q.shape[0]} values) or per-tensor quantization only")
    centred = torch.from_numpy(w_q.astype(np.int64) - z.reshape(-1, 1, 1, 1)).double()
    tw, new = to_depth_weight(centred, spec, block, order=fold_order(spec))
    out = tw.numpy() + z.reshape(-1, 1, 1, 1)
    info = np.iinfo(w_q.dtype)
    if not np.array_equal(out, np.round(out)) or out.min() < info.min or out.max() > info.max:
        raise FoldError("the folded weight is not an exact permutation of the integer weight; not rewritten")
    return out.astype(w_q.dtype), new


def fold_splice(model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
    """The fold of QDQ Conv ``model.graph.node[idx]``; adds initializers to ``model`` (a copy)."""
    node = model.graph.node[idx]
    wi = weight_dq(model, node)
    wdq = model.graph.node[wi]
    w_q = const(model, wdq.input[0])
    if w_q is None or w_q.dtype.kind not in "iu":
        raise FoldError(f"the weight DequantizeLinear {wdq.name!r} does not read an integer initializer; "
                        "quantize the weights statically (quantize_static) so fold can permute them")
    if w_q.dtype not in (np.int8, np.uint8):
        raise FoldError(f"the weight {wdq.input[0]!r} is {w_q.dtype}; fold handles int8 and uint8 QDQ weights only")
    sw, zw, axis = _dq_params(model, wdq, "weight")
    if sw.size > 1 and axis not in (0, -4):
        raise FoldError(f"the weight is quantized per channel on axis {axis}; fold keeps axis 0 (output channels) only")
    spec, b, pads = fold_plan(node, w_q.shape, shapes[node.input[0]])
    tw, new = fold_weight_q(w_q, zw, axis, spec, b)
    remove = [idx]
    wname = fresh(model, wdq.input[0] + "_folded")
    model.graph.initializer.append(numpy_helper.from_array(tw, wname))
    wout = fresh(model, node.input[1] + "_folded")
    w_nodes = [helper.make_node("DequantizeLinear", [wname, *wdq.input[1:]], [wout],
                                name=fresh(model, wdq.name + "_folded"), **({"axis": axis} if sw.size > 1 else {}))]
    if consumers(model, node.input[1]) == [idx]:
        remove.append(wi)
    xi = producer(model, node.input[0])
    xdq = model.graph.node[xi] if xi is not None else None
    sx = const(model, xdq.input[1]) if xdq is not None and xdq.op_type == "DequantizeLinear" else None
    if sx is not None and sx.size == 1 and xdq.input[0] in shapes:
        nodes, xout = _activation_nodes(model, node, xdq, shapes, spec, pads, new.kernel)
        still_read = any(node.input[0] in n.input for n in nodes) or node.input[0] in {o.name for o in model.graph.output}
        if consumers(model, node.input[0]) == [idx] and not still_read:
            remove.append(xi)  # the old activation DequantizeLinear fed only this Conv
    else:  # float activation: rearrange it as the float fold does
        nodes, xout = space_nodes(model, node, node.input[0], shapes[node.input[0]], spec, pads, new.kernel)
    conv = folded_conv_node(model, node, [xout, wout, *node.input[2:]], new)
    at = idx - sum(1 for r in remove if r < idx)
    return Splice(remove=remove, nodes=nodes + w_nodes + [conv], at=at)


def _activation_nodes(model: onnx.ModelProto, node: onnx.NodeProto, xdq: onnx.NodeProto, shapes: dict, spec,
                      pads: list[int], kernel: tuple[int, ...]) -> tuple[list[onnx.NodeProto], str]:
    """The rearrangement of a quantized activation, ending in the DequantizeLinear that feeds the folded Conv.

    uint8: ``x_q → [Pad(z_x)] [Slice] SpaceToDepth → DQ`` (integer data movement; ORT fuses DQ→Conv→Q).
    int8: ``DQ(x_q) → [Pad(0)] [Slice] SpaceToDepth → Q → DQ``: onnxruntime on x86 turns int8 activations
    into uint8 only on a QuantizeLinear whose single consumer is a DequantizeLinear (``qdq_s8_to_u8.cc``),
    and fuses int8 QDQ Convs only after that; so the Q→DQ pair must sit next to the Conv. Exact because
    ``Q(DQ(v)) = v`` for every integer ``v`` (|v - z| ≤ 255 is recovered by rounding) and ``Q(0) = z``.
    """
    zx = xdq.input[2] if len(xdq.input) > 2 and xdq.input[2] else None
    dtype = np.dtype(const(model, zx).dtype if zx else _elem_dtype(model, xdq.input[0]))
    if dtype not in (np.int8, np.uint8):
        raise FoldError(f"the activation {xdq.input[0]!r} is quantized to {dtype}; fold handles int8 and uint8 "
                        "QDQ activations only")
    if zx is None:  # explicit zero point: Q without one would output uint8
        zx = fresh(model, xdq.name + "_zero")
        model.graph.initializer.append(numpy_helper.from_array(np.array(0, dtype), zx))
    params = [xdq.input[1], zx]
    xout = fresh(model, node.input[0] + "_s2d")
    if dtype == np.uint8:
        nodes, y = space_nodes(model, node, xdq.input[0], shapes[node.input[0]], spec, pads, kernel, pad_value=zx)
        nodes.append(helper.make_node("DequantizeLinear", [y, *params], [xout], name=fresh(model, xdq.name + "_s2d")))
        return nodes, xout
    nodes, y = space_nodes(model, node, node.input[0], shapes[node.input[0]], spec, pads, kernel)
    yq = fresh(model, node.input[0] + "_s2d_q")
    nodes.append(helper.make_node("QuantizeLinear", [y, *params], [yq], name=fresh(model, xdq.name + "_s2d_Q")))
    nodes.append(helper.make_node("DequantizeLinear", [yq, *params], [xout], name=fresh(model, xdq.name + "_s2d")))
    return nodes, xout


def _elem_dtype(model: onnx.ModelProto, name: str) -> type:
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.name == name:
            return helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    raise FoldError(f"the type of {name!r} is unknown; run onnx.shape_inference.infer_shapes first")
