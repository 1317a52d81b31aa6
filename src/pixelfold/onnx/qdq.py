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
  accumulation of QLinearConv sees the same non-zero products, so its int32 sums and outputs are identical.

Verification: :func:`lsb_error` runs both graphs in onnxruntime with graph optimisations on (QLinearConv)
and off (float DQ → Conv → Q) and measures max |Δ| in LSBs of each output's DequantizeLinear scale.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from pixelfold.errors import FoldError
from pixelfold.onnx.fold import fold_plan, folded_conv_node, space_nodes
from pixelfold.onnx.graph import attrs, const, fresh
from pixelfold.onnx.patterns import Splice
from pixelfold.transforms import to_depth_weight

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: per-rewrite tolerance, in LSBs of each output's scale, with ORT optimisations on and off alike
TOLERANCE_LSB = 0.0


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
    """
    z = np.zeros(w_q.shape[0], np.int64) if zp is None else np.asarray(zp, np.int64)
    if z.ndim == 0 or z.size == 1:
        z = np.full(w_q.shape[0], int(z.reshape(-1)[0]), np.int64)
    elif axis not in (0, -4) or z.shape != (w_q.shape[0],):
        raise FoldError(f"the weight zero point has shape {list(z.shape)} on axis {axis}; fold keeps "
                        f"per-output-channel (axis 0, {w_q.shape[0]} values) or per-tensor quantization only")
    centred = torch.from_numpy(w_q.astype(np.int64) - z.reshape(-1, 1, 1, 1)).double()
    tw, new = to_depth_weight(centred, spec, block, order="dcr")
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


# ---------------------------------------------------------------------------- verification in LSBs
def output_units(model: onnx.ModelProto) -> list[float | None]:
    """Per graph output: the scale of the DequantizeLinear producing it (one LSB), None if there is none."""
    out: list[float | None] = []
    for o in model.graph.output:
        i = producer(model, o.name)
        s = None
        if i is not None and model.graph.node[i].op_type == "DequantizeLinear":
            v = const(model, model.graph.node[i].input[1])
            s = float(np.abs(v).reshape(-1)[0]) if v is not None and v.size == 1 else None
        out.append(s)
    return out


def session(model: onnx.ModelProto, optimise: bool):
    """An onnxruntime CPU session, graph optimisations all on (QLinearConv fusion) or all off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def lsb_error(before: onnx.ModelProto, after: onnx.ModelProto, seed: int = 0, batches: int = 2) -> dict[str, float]:
    """Max |Δ| of the outputs in LSBs of their DequantizeLinear scale, optimisations ``"on"`` and ``"off"``
    (and ``"max_ref"``: the largest |output| of ``before``).

    Outputs not produced by a DequantizeLinear are measured in units of the float tolerance
    (:func:`pixelfold.onnx.verify.tolerance` of their largest value). Inputs: standard normal, ``batches`` draws.
    """
    from pixelfold.onnx import verify

    onnx.checker.check_model(after, full_check=True)
    units = output_units(before)
    rng = np.random.default_rng(seed)
    feeds = [verify._inputs(before, rng, 8) for _ in range(batches)]
    err = {"on": 0.0, "off": 0.0}
    ref = 0.0
    for mode in err:
        sa, sb = session(before, mode == "on"), session(after, mode == "on")
        for f in feeds:
            for a, b, u in zip(sa.run(None, f), sb.run(None, f), units):
                if a.shape != b.shape:
                    err[mode] = float("inf")
                    continue
                if not a.size:
                    continue
                d = float(np.max(np.abs(a.astype(np.float64) - b)))
                ref = max(ref, float(np.max(np.abs(a))))
                unit = u if u else verify.tolerance(float(np.max(np.abs(a))))
                err[mode] = max(err[mode], d / unit)
    return {**err, "max_ref": ref}


def compare(before: onnx.ModelProto, after: onnx.ModelProto, seed: int = 0) -> tuple[float, float, str, float]:
    """``(max LSB, tolerance in LSB, note, max |y|)``: the worse of optimisations on and off, and each measured."""
    e = lsb_error(before, after, seed)
    note = f"int8 QDQ: max |Δ| {e['on']:.3g} LSB (ORT optimisations on), {e['off']:.3g} LSB (off)"
    return max(e["on"], e["off"]), TOLERANCE_LSB, note, e["max_ref"]


def fused_ops(model: onnx.ModelProto) -> list[str]:
    """Op types of the graph onnxruntime (CPU, ORT_ENABLE_ALL) actually runs: shows QLinearConv fusion."""
    import os
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def quantize(model: onnx.ModelProto, per_channel: bool = True, activation: str = "int8", symmetric: bool = False,
             batches: int = 3, seed: int = 0, weight_symmetric: bool = True) -> onnx.ModelProto:
    """``model`` quantized by ``onnxruntime.quantization.quantize_static`` (QDQ, int8 weights), calibrated on
    ``batches`` standard-normal inputs; ``activation`` is ``"int8"`` or ``"uint8"``, ``symmetric`` the
    activations' ``ActivationSymmetric``. For tests and the sweep."""
    import logging
    import os
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from pixelfold.onnx import verify

    rng = np.random.default_rng(seed)
    data = [verify._inputs(model, rng, 8) for _ in range(batches)]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)

    act = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[activation]
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static warns about pre-processing on every call
    try:
        with tempfile.TemporaryDirectory() as d:
            src, dst = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
            onnx.save(model, src)
            quantize_static(src, dst, _Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=act, weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": symmetric,
                                           "WeightSymmetric": weight_symmetric})
            return onnx.load(dst)
    finally:
        logging.getLogger().setLevel(level)
