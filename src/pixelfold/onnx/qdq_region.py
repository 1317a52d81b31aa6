"""The exact integer check of a rewrite of a QDQ graph, for any pattern: the region's accumulators, compared.

The region of a rewritten node runs from its quantized input ``x_q`` (a DequantizeLinear's input) to the
tensor its QuantizeLinear reads. Before and after a rewrite both graphs hold these two tensors (the rewrite
keeps the names), so the two regions are cut out (``onnx.utils.Extractor``) and evaluated by ONNX's own
reference implementation (``onnx.reference``, NumPy, float64; or onnxruntime in float32 where a bound on
every partial sum, Σ|w|·max|x| + |b| < 2²⁴, makes float32 exact in any order) in the *centred integer* domain:

- the input is ``x_q − z_x``, integers; every DequantizeLinear of an initializer becomes the constant
  ``q − z`` (weights: integers; an int32 bias: itself); a DequantizeLinear of a tensor, a QuantizeLinear, and
  a Pad's integer constant (the zero point, which is 0 here) become the identity / 0;
- so the region computes the Conv's integer accumulators ``Σ (x_q − z_x)(w_q − z_w) + b_q``, exact in float64
  (integers below 2⁵³), in the units ``s_x·s_w`` of each output channel (a rewrite keeps every channel's scale).

Equal accumulators (``max |Δ| = 0``) mean the rewrite computes the same integers before the same rounding:
the int8 outputs can then differ only where a runtime's float arithmetic rounds differently (measured in LSBs
by :mod:`pixelfold.onnx.qdq_verify`). A wrong tap, a wrong zero point or a misplaced phase shows as
``|Δ| ≥ 1``: this check has no tolerance.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.utils
from onnx import helper, numpy_helper

from pixelfold.errors import FoldError
from pixelfold.onnx.graph import attrs, const
from pixelfold.onnx.nodes import consumers, producer
from pixelfold.onnx.qdq_lift import qtensor


def _zero(model: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray | None:
    """The per-tensor zero point of a Q/DQ node (None if absent or per channel)."""
    z = const(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return z if z is not None and z.size == 1 else None


def region_ends(model: onnx.ModelProto, anchor: onnx.NodeProto) -> tuple[str, str, np.ndarray, np.ndarray] | None:
    """``(start, end, z_x, int range)`` of the region a rewrite at ``anchor`` replaces, or None:

    - a QDQ Conv/ConvTranspose: from its DequantizeLinear's input ``x_q`` to its output (read by QuantizeLinear);
    - a DepthToSpace after ``Conv → Q → DQ`` (``transposed``): from the Conv's ``x_q`` to the DepthToSpace output;
    - a SpaceToDepth before ``Q → DQ → Conv`` (``merge``): from the SpaceToDepth input (the values the Q reads) to
      the Conv's output."""
    from pixelfold.onnx.qdq_commute import weighted_of

    conv = anchor if anchor.op_type in ("Conv", "ConvTranspose") else weighted_of(model, anchor)
    if conv is None:
        return None
    end = anchor.output[0] if anchor.op_type == "DepthToSpace" else conv.output[0]
    if anchor.op_type == "SpaceToDepth":
        start, zx = anchor.input[0], _zero(model, model.graph.node[consumers(model, anchor.output[0])[0]])
    else:
        i = producer(model, conv.input[0])
        dq = model.graph.node[i] if i is not None else None
        if dq is None or dq.op_type != "DequantizeLinear" or const(model, dq.input[0]) is not None:
            return None
        start, zx = dq.input[0], _zero(model, dq)
    readers = [model.graph.node[j] for j in consumers(model, conv.output[0])]
    if zx is None or not readers or any(r.op_type != "QuantizeLinear" for r in readers):
        return None
    info = np.iinfo(zx.dtype)
    return start, end, zx, np.array([info.min, info.max])


def integer_region(model: onnx.ModelProto, x_q: str, y: str, dtype: type = np.float64) -> onnx.ModelProto:
    """The centred-integer model (float64, or ``dtype``) of the nodes between ``x_q`` and ``y`` (module docstring)."""
    sub = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model)).extract_model([x_q], [y])
    nodes, inits = [], []
    for n in sub.graph.node:
        if n.op_type == "DequantizeLinear" and const(sub, n.input[0]) is not None:
            inits.append(numpy_helper.from_array(qtensor(sub, n.output[0]).centred().astype(dtype), n.output[0]))
        elif n.op_type in ("DequantizeLinear", "QuantizeLinear"):
            nodes.append(helper.make_node("Identity", [n.input[0]], list(n.output), name=n.name))
        elif n.op_type == "Pad" and len(n.input) > 2 and n.input[2]:
            zero = n.input[2] + "_centred_zero"
            inits.append(numpy_helper.from_array(np.zeros((), dtype), zero))
            nodes.append(helper.make_node("Pad", [n.input[0], n.input[1], zero, *n.input[3:]], list(n.output),
                                          name=n.name, **{a.name: helper.get_attribute_value(a) for a in n.attribute}))
        else:
            nodes.append(n)
    produced = {o for n in nodes for o in n.output} | {t.name for t in inits}
    for t in sub.graph.initializer:
        if t.name in produced:
            continue
        v = numpy_helper.to_array(t)
        inits.append(numpy_helper.from_array(v.astype(dtype) if v.dtype.kind == "f" else v, t.name))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    g = helper.make_graph(nodes, "integer_region", [helper.make_tensor_value_info(x_q, elem, None)],
                          [helper.make_tensor_value_info(y, elem, None)], inits)
    return helper.make_model(g, opset_imports=sub.opset_import)


def bound(region: onnx.ModelProto, x_max: float) -> float:
    """An upper bound of every partial sum in ``region``: per output channel Σ|w| · max|x| + max|b|."""
    values = {t.name: numpy_helper.to_array(t) for t in region.graph.initializer}
    for n in region.graph.node:  # an Identity of a constant (torch's exporter shares equal biases so) is that constant
        if n.op_type == "Identity" and n.input[0] in values:
            values[n.output[0]] = values[n.input[0]]
    worst = 0.0
    for n in (n for n in region.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")):
        w = np.abs(values[n.input[1]].astype(np.float64))
        out_axis = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1}.get(n.op_type, 0 if attrs(n).get("transB", 0) else 1)
        per_out = w.sum(axis=tuple(i for i in range(w.ndim) if i != out_axis))
        b = np.abs(values[n.input[2]]).max(initial=0) if len(n.input) > 2 and n.input[2] else 0.0
        worst = max(worst, float(per_out.max(initial=0)) * x_max + float(b))
    return worst


def _runner(model: onnx.ModelProto, x_q: str, y: str, x_max: float):
    """A function ``x -> accumulators`` for the region: onnxruntime in float32 where every partial sum is an
    integer below 2²⁴ (so float32 is exact in any order), else ONNX's reference implementation in float64."""
    exact = integer_region(model, x_q, y)
    if bound(exact, x_max) < 2 ** 24:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(integer_region(model, x_q, y, np.float32).SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {x_q: x.astype(np.float32)})[0].astype(np.float64)
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(exact)
    return lambda x: ref.run(None, {x_q: x})[0]


def accumulator_error(before: onnx.ModelProto, after: onnx.ModelProto, anchor: onnx.NodeProto, shape: list[int],
                      seed: int = 0, batches: int = 2) -> float | None:
    """max |Δ| of the integer accumulators of ``anchor``'s region in ``before`` and ``after`` (``inf`` on a shape
    mismatch) on random integers of ``x_q``'s range; None when the node has no region (not QDQ on both sides).
    :class:`FoldError` when neither exact evaluator can run the region (the rewrite is then not verified)."""
    ends = region_ends(before, anchor)
    have = {o for n in after.graph.node for o in n.output}
    if ends is None or ends[1] not in have or ends[0] not in have | {i.name for i in after.graph.input}:
        return None
    x_q, y, zx, (lo, hi) = ends
    z = int(zx.reshape(-1)[0])
    x_max = float(max(abs(int(lo) - z), abs(int(hi) - z)))
    rng = np.random.default_rng(seed)
    xs = [(rng.integers(int(lo), int(hi) + 1, size=shape) - z).astype(np.float64) for _ in range(batches)]
    try:
        runs = [_runner(m, x_q, y, x_max) for m in (before, after)]
        outs = [[r(x) for x in xs] for r in runs]
    except Exception as e:  # noqa: BLE001 - an evaluator's limit: refuse, never pass unverified
        raise FoldError(f"the exact integer check of {anchor.name!r} could not run ({type(e).__name__}: "
                        f"{str(e)[:160]}); not rewritten") from e
    err = 0.0
    for a, b in zip(*outs):
        if a.shape != b.shape:
            return float("inf")
        err = max(err, float(np.max(np.abs(a - b))) if a.size else 0.0)
    return err
