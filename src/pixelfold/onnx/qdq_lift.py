"""Any weight-moving ONNX pattern on an int8 QDQ graph, with the weights kept integer ("lifting").

A pattern's builder reads a float weight initializer and writes new ones. On a QDQ graph the weight is
``DequantizeLinear(w_q, s, z, axis)`` instead. Every pixelfold weight map is a gather with zero taps (a
permutation of the old taps plus structural zeros), so the builder is run twice on copies of the graph:

- on **codes** (tap ``i`` holds ``i + 1``, float32, exact below 2²⁴): the new weight then *is* the gather map
  (0 = a zero tap). A value that is not one of the codes means the builder did arithmetic on the taps: the
  rewrite is refused, never approximated;
- on the **centred values** ``w_q − z`` (and the int32 bias): the builder's value checks see real numbers, and
  its output must equal the gather of the values (checked).

The new integer weight is ``w_q`` gathered, with each zero tap set to the zero point of its new output
channel; per-channel scales and zero points follow the channels (subpixel tiles them r² times), and a new
channel must draw all its taps from one old channel or the rewrite is refused. The int32 bias is gathered the
same way (zero taps 0), its scales with it.

Activations: the pattern's data movement (Slice, Pad, SpaceToDepth, DepthToSpace) runs on dequantized values
between the original DequantizeLinear and QuantizeLinear. A ``QuantizeLinear → DequantizeLinear`` pair with the
activation's own per-tensor scale and zero point is put right before and right after each new Conv, so
onnxruntime's QDQ selector still sees ``DQ x, DQ w, [DQ b], Conv, Q`` (and, for int8, its s8→u8 rule sees a Q
whose single consumer is a DQ). Exact: data movement and zero padding commute with a per-tensor Q/DQ
(``DQ(z) = 0``, ``Q(DQ(v)) = v``).

Verification is the caller's (:mod:`pixelfold.onnx.qdq_verify`, fail closed).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pixelfold.errors import FoldError
from pixelfold.onnx.graph import attrs, const, fresh, static_shapes
from pixelfold.onnx.nodes import consumers, producer
from pixelfold.onnx.patterns import Pattern, Splice
from pixelfold.onnx.qdq_commute import commute, weighted_of

#: nodes whose input 1 is a weight (and input 2 a bias), with the weight axis that indexes output channels
#: (a Gemm only as the patterns write it: ``transB=1``, the weight ``(O, K)``; :func:`lift` refuses another)
WEIGHTED = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0}
#: float32 holds every integer below this exactly: the codes and the centred values must stay below it
EXACT = 2 ** 24


@dataclass
class QTensor:
    """An integer initializer behind a DequantizeLinear: ``dq`` (the node), ``q`` (integers), scale, zero point."""

    dq: onnx.NodeProto
    q: np.ndarray
    scale: np.ndarray
    zp: np.ndarray
    axis: int | None  # None: per tensor

    def centred(self) -> np.ndarray:
        """``q - z`` broadcast on the channel axis (float64, exact)."""
        z = self.zp.astype(np.float64)
        if self.axis is not None:
            z = z.reshape([-1 if i == self.axis else 1 for i in range(self.q.ndim)])
        return self.q.astype(np.float64) - z


def qtensor(model: onnx.ModelProto, name: str) -> QTensor | None:
    """The :class:`QTensor` producing ``name``, or None when ``name`` is not a DequantizeLinear of constants. Identity
    nodes in between are looked through (torch's exporter writes equal biases as one initializer and Identities)."""
    i = producer(model, name)
    while i is not None and model.graph.node[i].op_type == "Identity":
        i = producer(model, model.graph.node[i].input[0])
    if i is None or model.graph.node[i].op_type != "DequantizeLinear":
        return None
    dq = model.graph.node[i]
    q, scale = const(model, dq.input[0]), const(model, dq.input[1])
    has_zp = len(dq.input) > 2 and bool(dq.input[2])
    zp = const(model, dq.input[2]) if has_zp else None
    if q is None or scale is None or (has_zp and zp is None) or q.dtype.kind not in "iu":
        return None
    a = attrs(dq)
    if a.get("block_size", 0):
        raise FoldError(f"the DequantizeLinear {dq.name!r} is block-quantized (block_size {a['block_size']}); "
                        "per-tensor and per-channel quantization only")
    if zp is None:
        zp = np.zeros(scale.shape, q.dtype)
    axis = None
    if scale.size > 1:
        axis = int(a.get("axis", 1)) % q.ndim
    return QTensor(dq, q, scale, zp, axis)


def _substitute(model: onnx.ModelProto, node: onnx.NodeProto, slot: int, array: np.ndarray, tag: str) -> str:
    """Point ``node.input[slot]`` at a fresh float32 initializer holding ``array``; its name."""
    name = fresh(model, node.input[slot] + tag)
    model.graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
    node.input[slot] = name
    return name


def _as_index(codes: np.ndarray, n: int, what: str) -> np.ndarray:
    """A new tensor built from codes as 0-based source indices (-1: zero tap); FoldError if it is not a gather."""
    c = np.asarray(codes, np.float64)
    if not np.array_equal(c, np.round(c)) or c.min() < 0 or c.max() > n:
        raise FoldError(f"the pattern computes its new {what} from the old taps (not a permutation with zero "
                        "taps), so the integer weights cannot be kept; not rewritten")
    return c.astype(np.int64) - 1


def _channel_map(index: np.ndarray, old: QTensor, new_axis: int, what: str,
                 fallback: np.ndarray | None = None) -> np.ndarray:
    """For each new channel (on ``new_axis``) the old channel its taps come from; a channel with no taps (all
    zero taps) takes ``fallback`` (the channel its bias comes from, so the bias scale stays ``s_x·s_w``), else 0."""
    n_new = index.shape[new_axis]
    new_ch = np.broadcast_to(np.arange(n_new).reshape([-1 if i == new_axis else 1 for i in range(index.ndim)]),
                             index.shape)
    taps = index >= 0
    old_ch = np.unravel_index(index[taps], old.q.shape)[old.axis]
    mapping = np.zeros(n_new, np.int64) if fallback is None else np.array(fallback, np.int64)
    seen = np.full(n_new, -1, np.int64)
    for nc, oc in sorted(set(zip(new_ch[taps].tolist(), old_ch.tolist()))):
        if seen[nc] >= 0 and seen[nc] != oc:
            raise FoldError(f"new {what} channel {nc} mixes taps of old channels {seen[nc]} and {oc}, which have "
                            "their own scales (per-channel quantization); not rewritten")
        seen[nc] = mapping[nc] = oc
    return mapping


def _dq_node(model: onnx.ModelProto, q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int | None,
             base: str, out: str) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    names = [fresh(model, base + t) for t in ("_q", "_scale", "_zero")]
    tensors = [numpy_helper.from_array(np.ascontiguousarray(v), n) for v, n in zip((q, scale, zp), names)]
    model.graph.initializer.extend(tensors)
    kw = {} if axis is None else {"axis": axis}
    return helper.make_node("DequantizeLinear", names, [out], name=fresh(model, base + "_DQ"), **kw), tensors


def _lift_weight(model: onnx.ModelProto, node: onnx.NodeProto, old: QTensor, codes: np.ndarray,
                 values: np.ndarray, fallback: np.ndarray | None = None) -> tuple[onnx.NodeProto, np.ndarray | None]:
    """The DequantizeLinear of the new integer weight of ``node``; and the channel map (None per tensor)."""
    index = _as_index(codes, old.q.size, "weight")
    flat = old.centred().reshape(-1)
    if not np.array_equal(np.where(index >= 0, flat[np.maximum(index, 0)], 0.0), np.asarray(values, np.float64)):
        raise FoldError("the pattern's weight is not the gather its code run shows; not rewritten")
    new_axis = WEIGHTED[node.op_type]
    src = old.q.reshape(-1)[np.maximum(index, 0)]
    if old.axis is None:
        mapping, scale, zp, zero = None, old.scale, old.zp, old.zp
    else:
        mapping = _channel_map(index, old, new_axis, "weight", fallback)
        scale, zp = old.scale[mapping], old.zp[mapping]
        zero = zp.reshape([-1 if i == new_axis else 1 for i in range(index.ndim)])
    q = np.where(index >= 0, src, zero).astype(old.q.dtype)
    out = fresh(model, node.input[1] + "_dq")
    dq, _ = _dq_node(model, q, scale, zp, None if mapping is None else new_axis, node.input[1], out)
    node.input[1] = out
    return dq, mapping


def _lift_bias(model: onnx.ModelProto, node: onnx.NodeProto, old: QTensor, codes: np.ndarray,
               values: np.ndarray) -> onnx.NodeProto:
    """The DequantizeLinear of the new int32 bias of ``node`` (scales follow the gathered entries)."""
    index = _as_index(codes, old.q.size, "bias")
    flat = old.q.astype(np.float64).reshape(-1)
    if not np.array_equal(np.where(index >= 0, flat[np.maximum(index, 0)], 0.0), np.asarray(values, np.float64)):
        raise FoldError("the pattern's bias is not the gather its code run shows; not rewritten")
    q = np.where(index >= 0, old.q.reshape(-1)[np.maximum(index, 0)], 0).astype(old.q.dtype)
    scale, zp = old.scale, old.zp
    if old.axis is not None:
        if (index < 0).any():
            raise FoldError("a new bias entry is a zero tap of a per-channel bias (no scale to give it); not rewritten")
        scale, zp = old.scale.reshape(-1)[index], old.zp.reshape(-1)[index]
    out = fresh(model, node.input[2] + "_dq")
    dq, _ = _dq_node(model, q, scale, zp, None if old.axis is None else 0, node.input[2], out)
    node.input[2] = out
    return dq


def _bias_from_values(model: onnx.ModelProto, node: onnx.NodeProto, old: QTensor, values: np.ndarray) -> onnx.NodeProto:
    """The DequantizeLinear of a new int32 bias the builder chose by value (each entry one of the old ones)."""
    v = np.asarray(values, np.float64)
    if not np.array_equal(v, np.round(v)) or not np.isin(v, old.q.astype(np.float64)).all():
        raise FoldError("the pattern's new bias is not made of the old int32 entries; not rewritten")
    if old.axis is not None and np.unique(old.scale).size > 1:
        raise FoldError("the pattern chose its bias by value but the bias has one scale per channel; not rewritten")
    scale = old.scale.reshape(-1)[:1].reshape(()) if old.axis is not None else old.scale
    zp = np.zeros(scale.shape, old.zp.dtype)
    out = fresh(model, node.input[2] + "_dq")
    dq, _ = _dq_node(model, v.astype(old.q.dtype), scale, zp, None, node.input[2], out)
    node.input[2] = out
    return dq


def _activation(model: onnx.ModelProto, name: str) -> tuple[str, str] | None:
    """``(scale, zero point)`` initializer names of a per-tensor DequantizeLinear producing ``name``, else None."""
    i = producer(model, name)
    if i is None or model.graph.node[i].op_type != "DequantizeLinear":
        return None
    dq = model.graph.node[i]
    s = const(model, dq.input[1])
    if s is None or s.size != 1 or len(dq.input) < 3 or not dq.input[2]:
        return None
    return dq.input[1], dq.input[2]


def _output_quant(model: onnx.ModelProto, name: str) -> tuple[str, str] | None:
    """``(scale, zero point)`` of the per-tensor QuantizeLinear(s) reading ``name`` (all alike), else None."""
    readers = [model.graph.node[i] for i in consumers(model, name)]
    if not readers or any(r.op_type != "QuantizeLinear" or len(r.input) < 3 for r in readers):
        return None
    params = {(r.input[1], r.input[2]) for r in readers}
    s = const(model, readers[0].input[1])
    return params.pop() if len(params) == 1 and s is not None and s.size == 1 else None


def _pair(model: onnx.ModelProto, x: str, params: tuple[str, str], base: str) -> tuple[list[onnx.NodeProto], str]:
    q, y = fresh(model, base + "_q"), fresh(model, base + "_dq")
    return [helper.make_node("QuantizeLinear", [x, *params], [q], name=fresh(model, base + "_Q")),
            helper.make_node("DequantizeLinear", [q, *params], [y], name=fresh(model, base + "_DQ"))], y


def _requantize(model: onnx.ModelProto, nodes: list[onnx.NodeProto], x: str, final: str) -> list[onnx.NodeProto]:
    """``nodes`` with a Q→DQ pair before and after each weighted node that data movement separates from the
    DequantizeLinear producing ``x`` / the QuantizeLinear reading ``final``."""
    x_q = _activation(model, x)
    y_q = _output_quant(model, final)
    made = {o for n in nodes for o in n.output}
    out: list[onnx.NodeProto] = []
    for n in nodes:
        if n.op_type in WEIGHTED and n.input[0] in made and x_q is not None:
            pair, y = _pair(model, n.input[0], x_q, n.input[0])
            out.extend(pair)
            n.input[0] = y
        out.append(n)
        if n.op_type in WEIGHTED and n.output[0] != final and y_q is not None:
            pair, y = _pair(model, n.output[0], y_q, n.output[0])
            for later in nodes:
                for j, v in enumerate(later.input):
                    if v == n.output[0]:
                        later.input[j] = y
            out.extend(pair)
    return out


def lift(pattern: Pattern, model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
    """``pattern`` at node ``idx`` of the QDQ graph ``model`` (a copy: initializers are added to it), integer weights
    kept; :class:`FoldError` when the pattern's weight map is not a gather or the quantization cannot follow it."""
    anchor = model.graph.node[idx]
    if anchor.op_type in WEIGHTED:
        key = wkey = anchor.output[0]
    else:  # transposed / merge: move the Q→DQ pair across the rearrangement first (exact)
        names = commute(model, anchor)
        if names is None:
            raise FoldError(f"{pattern.name}: no Conv → Q → DQ → DepthToSpace / SpaceToDepth → Q → DQ → Conv "
                            "(per tensor, single readers) at this node; not rewritten")
        key, wkey = names
        idx, shapes = producer(model, key), static_shapes(model)
    conv = model.graph.node[producer(model, wkey)]
    final = model.graph.node[idx].output[0] if model.graph.node[idx].input[0] == wkey else wkey
    x_in, read = conv.input[0], list(conv.input)  # the names the builders' substitutions replace
    w = qtensor(model, conv.input[1])
    b = qtensor(model, conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    if len(conv.input) > 2 and conv.input[2] and b is None:
        raise FoldError(f"the bias {conv.input[2]!r} of a QDQ {conv.op_type} is not a DequantizeLinear of an "
                        "int32 initializer; not rewritten")
    if w.q.size >= EXACT or (b is not None and (b.q.size >= EXACT or np.abs(b.q).max(initial=0) >= EXACT)):
        raise FoldError(f"the weight ({w.q.size:,} taps) or the bias is beyond float32's exact integers (2^24): "
                        "the builder could not carry it exactly; not rewritten")
    build = pattern.qdq_build or pattern.build
    probe = copy.deepcopy(model)
    slots = [(1, w)] + ([(2, b)] if b is not None else [])
    bias_codes = True
    for m, fill in ((probe, "codes"), (model, "values")):
        node = m.graph.node[producer(m, wkey)]
        for slot, t in slots:
            data = (np.arange(1, t.q.size + 1, dtype=np.float64).reshape(t.q.shape) if fill == "codes"
                    else (t.centred() if slot == 1 else t.q.astype(np.float64)))
            _substitute(m, node, slot, data, "_lifted")
    try:
        coded = build(probe, idx, shapes)
    except FoldError:
        if b is None:
            raise
        # the builder checks the bias's values (transposed: one bias per channel, equal across its phases), which
        # distinct codes fail: retry on a copy of the value model (its bias holds the values, not yet built on)
        # with the weight's codes; the bias's scale must then be per tensor (no map needed)
        probe, bias_codes = copy.deepcopy(model), False
        node = probe.graph.node[producer(probe, wkey)]
        _substitute(probe, node, 1, np.arange(1, w.q.size + 1, dtype=np.float64).reshape(w.q.shape), "_codes")
        coded = build(probe, idx, shapes)
    splice = build(model, idx, shapes)
    weighted = [(n, c) for n, c in zip(splice.nodes, coded.nodes) if n.op_type in WEIGHTED]
    if not weighted or [n.op_type for n in splice.nodes] != [n.op_type for n in coded.nodes]:
        raise FoldError(f"{pattern.name}: the code and value runs built different graphs; not rewritten")
    if any(n.op_type == "Gemm" and (attrs(n).get("transA", 0) or not attrs(n).get("transB", 0)) for n, _ in weighted):
        raise FoldError(f"{pattern.name}: a new Gemm without transB=1 (weight not (O, K)); not rewritten")
    dqs: list[onnx.NodeProto] = []
    for n, c in weighted:
        wc, wv = const(probe, c.input[1]), const(model, n.input[1])
        if wc is None or wv is None:
            raise FoldError(f"{pattern.name}: the new {n.op_type}'s weight is not an initializer; not rewritten")
        fallback = None
        if len(n.input) > 2 and n.input[2]:
            if b is None:
                raise FoldError(f"{pattern.name}: the new {n.op_type} has a bias the original had not; not rewritten")
            if not bias_codes:
                dqs.append(_bias_from_values(model, n, b, const(model, n.input[2])))
                dq, _ = _lift_weight(model, n, w, wc, wv)
                dqs.insert(0, dq)
                continue
            bc = const(probe, c.input[2])
            dqs.append(_lift_bias(model, n, b, bc, const(model, n.input[2])))
            if WEIGHTED[n.op_type] == 0 and w.axis is not None:  # bias entry j is output channel j
                fallback = np.maximum(_as_index(bc, b.q.size, "bias"), 0)
        dq, mapping = _lift_weight(model, n, w, wc, wv, fallback)
        if fallback is not None and mapping is not None and not np.array_equal(mapping, fallback):
            j = int(np.flatnonzero(mapping != fallback)[0])
            raise FoldError(f"{pattern.name}: new channel {j} takes its taps from old channel {mapping[j]} but its "
                            f"bias from {fallback[j]}; the bias scale would not be s_x·s_w; not rewritten")
        dqs.insert(0, dq)
    nodes = _requantize(model, list(splice.nodes), x_in, final)
    first = next(i for i, n in enumerate(nodes) if n.op_type in WEIGHTED)
    drop = [t.dq.output[0] for _, t in slots] + [read[s] for s, _ in slots]  # the DQs, and Identities
    return Splice(remove=splice.remove, nodes=nodes[:first] + dqs + nodes[first:], at=splice.at,
                  drop_if_dead=drop)


def liftable(model: onnx.ModelProto, idx: int) -> bool:
    """Whether node ``idx`` is (or a Q→DQ pair separates it from) a Conv/ConvTranspose whose weight is a
    DequantizeLinear of an integer initializer."""
    node = model.graph.node[idx]
    conv = node if node.op_type in WEIGHTED else weighted_of(model, node)
    return conv is not None and len(conv.input) > 1 and qtensor(model, conv.input[1]) is not None
