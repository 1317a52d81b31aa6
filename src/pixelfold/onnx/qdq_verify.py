"""Verification of rewrites of int8 QDQ graphs: exact integer accumulators, and onnxruntime in LSBs.

Three measurements per rewritten Conv (``anchors``), on standard-normal inputs:

1. **integer**: the quantized input of the Conv is read from both graphs and both convolutions are computed
   exactly (float64 on integers < 2⁵³): ``Σ (x_q − z_x)(w_q − z_w)`` must be *equal* (tolerance 0). This is the
   check of the rewrite itself, free of any kernel's rounding.
2. **ORT optimisations on** (``ORT_ENABLE_ALL``): the graph outputs, in LSBs of the scale of the
   DequantizeLinear producing each. Where onnxruntime fuses the *original* Conv into QLinearConv (integer
   accumulation), the tolerance is 0: equal accumulators give equal outputs. Where it leaves the original a
   float Conv, this only measures the original's float rounding (reported, not gated).
3. **ORT optimisations off**: the Conv runs in float32 between DQ and Q and the fold reorders its sum, so the
   conv's own QuantizeLinear output may differ by one LSB where the float sum lies within its rounding error of a
   rounding boundary: gated at ``LOCAL_OFF_LSB`` = 1 LSB there (one rewrite at a time; across several rewrites a
   flip propagates into the next folded conv, so the end-to-end check reports it only); graph outputs reported.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import torch
from onnx import helper

from pixelfold.onnx.graph import attrs, const, static_shapes
from pixelfold.onnx.qdq_region import accumulator_error, region_ends
from pixelfold.onnx.qdq import consumers, producer, weight_dq

#: ops onnxruntime runs in float when it does not fuse them into an integer kernel (QLinearConv, ...)
FLOAT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: gate on the folded conv's own quantized output with ORT optimisations off (float Conv, reordered sum)
LOCAL_OFF_LSB = 1.0


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


def session(model: onnx.ModelProto, optimise: bool, save: str | None = None):
    """An onnxruntime CPU session, graph optimisations all on (QLinearConv fusion) or all off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    if save:
        so.optimized_model_filepath = save
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def fused_ops(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes of the graph onnxruntime (CPU, ORT_ENABLE_ALL) actually runs (shows QLinearConv fusion)."""
    with tempfile.TemporaryDirectory() as d:
        session(model, True, os.path.join(d, "opt.onnx"))
        return list(onnx.load(os.path.join(d, "opt.onnx")).graph.node)


def _lsb(pairs, units) -> float:
    from pixelfold.onnx import verify

    err = 0.0
    for a, b, u in zip(*pairs, units):
        if a.shape != b.shape:
            return float("inf")
        if a.size:
            d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            err = max(err, d / (u if u else verify.tolerance(float(np.max(np.abs(a))))))
    return err


def _operands(model: onnx.ModelProto, conv: onnx.NodeProto):
    """``(x_q name, z_x, w_q - z_w (float64), conv attrs)`` of a QDQ Conv, or None if it is not one."""
    xi, wi = producer(model, conv.input[0]), weight_dq(model, conv)
    if xi is None or wi is None or model.graph.node[xi].op_type != "DequantizeLinear":
        return None
    xdq, wdq = model.graph.node[xi], model.graph.node[wi]
    w = const(model, wdq.input[0])
    sx = const(model, xdq.input[1])
    if w is None or sx is None or sx.size != 1:
        return None
    zx = const(model, xdq.input[2]) if len(xdq.input) > 2 and xdq.input[2] else np.zeros((), np.int64)
    zw = const(model, wdq.input[2]) if len(wdq.input) > 2 and wdq.input[2] else np.zeros((), np.int64)
    zw = np.asarray(zw, np.float64).reshape(-1, 1, 1, 1) if np.size(zw) > 1 else float(np.asarray(zw).reshape(-1)[0])
    return xdq.input[0], float(np.asarray(zx).reshape(-1)[0]), w.astype(np.float64) - zw, conv


def _accumulators(x_q: np.ndarray, zx: float, w: np.ndarray, conv: onnx.NodeProto) -> np.ndarray:
    """``Σ (x_q − z_x)(w_q − z_w)`` of a Conv, exactly (float64 holds these integer sums)."""
    from pixelfold.onnx.fold import conv_pads

    a = attrs(conv)
    s, d = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    p = conv_pads(conv, list(x_q.shape[2:]), list(w.shape[2:]), s, d)
    x = torch.nn.functional.pad(torch.from_numpy(x_q.astype(np.float64) - zx), (p[1], p[3], p[0], p[2]))
    return torch.nn.functional.conv2d(x, torch.from_numpy(w), stride=s, dilation=d, groups=int(a.get("group", 1))).numpy()


def _compute_names(model: onnx.ModelProto, anchors: list[str]) -> list[str]:
    """The anchors, a DepthToSpace/SpaceToDepth anchor (transposed, merge) replaced by the Conv it rewrites."""
    from pixelfold.onnx.qdq_commute import weighted_of

    out = []
    for node in model.graph.node:
        if node.name in anchors:
            conv = weighted_of(model, node)
            out.append(conv.name if conv is not None else node.name)
    return out


def _dims(model: onnx.ModelProto, name: str) -> list[int | None]:
    inferred = onnx.shape_inference.infer_shapes(model).graph
    vi = next(v for v in [*inferred.input, *inferred.value_info] if v.name == name)
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.graph.value_info, *inferred.graph.input]}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_tensor_value_info(n, types[n], None))
    return m


def measure(before: onnx.ModelProto, after: onnx.ModelProto, anchors: list[str], seed: int = 0,
            batches: int = 2) -> dict[str, float]:
    """The three measurements (module docstring) for the Convs named ``anchors``; keys: ``integer``
    (max |Δ| of the accumulators), ``on``/``off`` (graph outputs, LSB), ``local_off`` (the anchors' Q outputs, LSB),
    ``fused`` (1.0 when onnxruntime fuses every anchor of ``before`` and runs no more float compute ops after), ``max_ref`` (largest |output|),
    ``checked`` (how many anchors had the integer check: QDQ convs on both sides)."""
    from pixelfold.onnx import verify

    onnx.checker.check_model(after, full_check=True)
    rng = np.random.default_rng(seed)
    feeds = [verify._inputs(before, rng, 8) for _ in range(batches)]
    units = output_units(before)
    n_out = len(before.graph.output)
    res = {"integer": 0.0, "on": 0.0, "off": 0.0, "local_off": 0.0, "fused": 1.0, "max_ref": 0.0, "checked": 0.0}
    with tempfile.TemporaryDirectory() as d:
        s_before = session(before, True, os.path.join(d, "opt.onnx"))
        kept_float = {n.name for n in onnx.load(os.path.join(d, "opt.onnx")).graph.node if n.op_type in FLOAT_OPS}
        s_after = session(after, True, os.path.join(d, "opt_after.onnx"))
        float_after = sum(n.op_type in FLOAT_OPS for n in onnx.load(os.path.join(d, "opt_after.onnx")).graph.node)
    # gate 0 only where ORT runs integer kernels on both sides: the original fused, and no float compute op more
    # after the rewrite (a transposed Conv + DepthToSpace becomes a ConvTranspose, which ORT runs in float)
    res["fused"] = float(not kept_float & set(_compute_names(before, anchors)) and float_after <= len(kept_float))
    for f in feeds:
        ref = s_before.run(None, f)
        res["on"] = max(res["on"], _lsb((ref, s_after.run(None, f)), units))
        res["max_ref"] = max([res["max_ref"]] + [float(np.max(np.abs(r))) for r in ref if r.size])
    # optimisations off, with the anchors' quantized inputs and outputs exposed
    convs = {"b": {n.name: n for n in before.graph.node if n.op_type == "Conv"},
             "a": {n.name: n for n in after.graph.node if n.op_type == "Conv"}}
    ops, local = [], []
    for name in (a for a in anchors if a in convs["b"] and a in convs["a"]):
        ob, oa = _operands(before, convs["b"][name]), _operands(after, convs["a"][name])
        if ob is not None and oa is not None:
            ops.append((ob, oa))
    after_values = {o for n in after.graph.node for o in n.output}
    for node in (n for n in before.graph.node if n.name in anchors):  # any op: a subpixel ConvTranspose too
        qs = [before.graph.node[i] for i in consumers(before, node.output[0])]
        if len(qs) == 1 and qs[0].op_type == "QuantizeLinear" and qs[0].output[0] in after_values:
            local.append(qs[0].output[0])
    # both convolutions' integer inputs are read from one run of ``after`` (the original conv's quantized input
    # is still there: the new rearrangement reads it), so upstream differences cannot enter the comparison
    have = {o for n in after.graph.node for o in n.output} | {i.name for i in after.graph.input}
    ops = [(ob, oa) for ob, oa in ops if ob[0] in have]
    res["checked"] = float(len(ops))
    # the other rewritten nodes (a subpixel ConvTranspose, a polyphase Conv, ...): their whole region's
    # accumulators, exactly, by ONNX's reference implementation (pixelfold.onnx.qdq_region)
    done = {oa[3].name for _, oa in ops}
    shapes = static_shapes(before)
    for node in (n for n in before.graph.node if n.name in anchors and n.name not in done):
        ends = region_ends(before, node)
        if ends is None:
            continue
        shape = shapes.get(ends[0]) or [8 if d is None else d for d in _dims(before, ends[0])]
        err = accumulator_error(before, after, node, shape, seed)
        if err is not None:
            res["integer"] = max(res["integer"], err)
            res["checked"] += 1
    sb = session(_with_outputs(before, local), False)
    sa = session(_with_outputs(after, [o[0][0] for o in ops] + [o[1][0] for o in ops] + local), False)
    k = n_out + 2 * len(ops)
    for f in feeds:
        rb, ra = sb.run(None, f), sa.run(None, f)
        res["off"] = max(res["off"], _lsb((rb[:n_out], ra[:n_out]), units))
        res["local_off"] = max(res["local_off"], _lsb((rb[n_out:], ra[k:]), [1.0] * len(local)))
        for j, (ob, oa) in enumerate(ops):
            acc_b = _accumulators(ra[n_out + j], *ob[1:])
            acc_a = _accumulators(ra[n_out + len(ops) + j], *oa[1:])
            res["integer"] = max(res["integer"], float("inf") if acc_a.shape != acc_b.shape
                                 else float(np.max(np.abs(acc_a - acc_b))))
    return res


def compare(before: onnx.ModelProto, after: onnx.ModelProto, seed: int = 0,
            anchors: list[str] | None = None) -> tuple[float, float, str, float]:
    """``(error, tolerance, note, max |y|)`` for :mod:`pixelfold.onnx.api`: error 0 when every gate holds
    (exact integer accumulators; ORT-on outputs 0 LSB where the original Conv is fused; ORT-off local ≤ 1 LSB),
    else the largest excess over its gate; the note has all measurements."""
    if anchors is None:
        anchors = [n.name for n in after.graph.node if n.op_type == "Conv"
                   and n.name in {m.name for m in before.graph.node if m.op_type == "Conv"}]
    e = measure(before, after, anchors, seed)
    # several anchors (the end-to-end check): a flip at one folded conv propagates into the next one's
    # quantized output, so the 1-LSB bound holds per rewrite only; it is then reported, not gated
    local = e["local_off"] - LOCAL_OFF_LSB if len(anchors) == 1 else 0.0
    excess = max(e["integer"], e["on"] if e["fused"] else 0.0, local)
    note = (f"int8 QDQ: integer accumulators max |Δ| {e['integer']:g} ({e['checked']:g} checked); ORT optimisations on: {e['on']:g} LSB "
            f"(original conv {'fused, gate 0' if e['fused'] else 'or its rewrite run in float by ORT: not gated'}); "
            f"off: {e['off']:g} LSB at the outputs, {e['local_off']:g} LSB at the conv"
            f"{f' (gate {LOCAL_OFF_LSB:g})' if len(anchors) == 1 else 's (with propagated differences, not gated)'}")
    return max(excess, 0.0), 0.0, note, e["max_ref"]


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
