"""Weight-moving ONNX patterns on int8 QDQ graphs (pixelfold.onnx.qdq_lift): integer weights kept, integer
accumulators identical (pixelfold.onnx.qdq_region, ONNX's reference implementation), onnxruntime in LSBs."""

from __future__ import annotations

import collections

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pixelfold.errors import FoldError  # noqa: E402
from pixelfold.onnx import qdq_lift  # noqa: E402
from pixelfold.onnx import qdq_verify as qv  # noqa: E402
from pixelfold.onnx.api import rewrite_onnx  # noqa: E402
from pixelfold.onnx.nodes import producer  # noqa: E402
from pixelfold.onnx.patterns import PATTERNS, Pattern, Splice  # noqa: E402


def _model(op, wshape, cin, bias=True, hw=(12, 13), **a):
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal(wshape).astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        o = wshape[1] * a.get("group", 1) if op == "ConvTranspose" else wshape[0]
        inits.append(numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "b"))
        ins.append("b")
    g = helper.make_graph([helper.make_node(op, ins, ["y"], name="n", **a)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, cin, *hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _qlc(model) -> int:
    return collections.Counter(n.op_type for n in qv.fused_ops(model))["QLinearConv"]


def _check(q, pattern, anchor="n", fused_after=True):
    before = q.SerializeToString()
    new, rep = rewrite_onnx(q, (pattern,))
    assert q.SerializeToString() == before  # the user's model is not mutated
    e = rep.entries[0]
    assert e.status == "changed", (e.status, e.reason)
    m = qv.measure(q, new, [anchor], seed=5, batches=3)
    assert m["checked"] == 1 and m["integer"] == 0.0, m  # the region's integer accumulators are identical
    if m["fused"]:  # ORT fuses the original into QLinearConv: the rewrite is bit-identical
        assert m["on"] == 0.0, m
    assert m["local_off"] <= qv.LOCAL_OFF_LSB, m
    inits = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    for conv in (n for n in new.graph.node if n.op_type in ("Conv", "ConvTranspose")):  # weights stay integer
        dq = new.graph.node[producer(new, conv.input[1])]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype.kind in "iu"
        if len(conv.input) > 2:
            bq = new.graph.node[producer(new, conv.input[2])]
            assert bq.op_type == "DequantizeLinear" and inits[bq.input[0]].dtype == np.int32
    assert not any(v.dtype.kind == "f" and v.ndim == 4 for v in inits.values())
    if fused_after:
        assert _qlc(new) >= 1  # the new Conv is fused into QLinearConv (integer arithmetic)
    return new, m


CONVT = [dict(strides=[2, 2], pads=[1, 1, 1, 1], w=(8, 6, 4, 4)), dict(strides=[3, 3], w=(8, 4, 3, 3)),
         dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1], w=(8, 4, 3, 3)),
         dict(strides=[2, 2], dilations=[2, 2], w=(8, 4, 3, 3)), dict(strides=[2, 2], auto_pad="SAME_UPPER", w=(8, 4, 3, 3)),
         dict(strides=[2, 2], output_shape=[25, 26], w=(8, 4, 4, 4)), dict(strides=[2, 2], w=(8, 4, 2, 2), bias=False)]
CONV = [dict(pads=[1, 1, 1, 1], w=(8, 8, 3, 3)), dict(strides=[2, 2], pads=[1, 1, 1, 1], w=(8, 8, 3, 3)),
        dict(strides=[2, 2], auto_pad="SAME_LOWER", w=(8, 8, 5, 5)), dict(w=(6, 8, 3, 3), bias=False, dilations=[2, 2])]


def _quantized(op, case, per_channel, activation):
    c = dict(case)
    w, bias = c.pop("w"), c.pop("bias", True)
    return qv.quantize(_model(op, w, w[0] if op == "ConvTranspose" else w[1], bias, **c), per_channel, activation)


def _ids(cases):
    return [",".join(f"{k}={v}" for k, v in c.items()) for c in cases]


@pytest.mark.parametrize("activation, per_channel", [("int8", True), ("uint8", False), ("uint8", True)])
@pytest.mark.parametrize("pattern", ["subpixel", "subpixel_crd"])
@pytest.mark.parametrize("case", CONVT, ids=_ids(CONVT))
def test_qdq_subpixel_keeps_integers(case, pattern, activation, per_channel):
    """ConvTranspose (which onnxruntime runs in float) → Conv + DepthToSpace, fused into QLinearConv."""
    q = _quantized("ConvTranspose", case, per_channel, activation)
    assert _qlc(q) == 0
    new, _ = _check(q, pattern)
    assert "DepthToSpace" in [n.op_type for n in new.graph.node]


@pytest.mark.parametrize("activation, per_channel", [("int8", True), ("uint8", False)])
@pytest.mark.parametrize("pattern", ["polyphase2", "polyphase4"])
@pytest.mark.parametrize("case", CONV, ids=_ids(CONV))
def test_qdq_polyphase_is_bit_identical(case, pattern, activation, per_channel):
    q = _quantized("Conv", case, per_channel, activation)
    _, m = _check(q, pattern)
    assert m["fused"] == 1.0 and m["on"] == 0.0  # ORT fuses both: identical int8 outputs


def test_qdq_grouped_subpixel_crd_per_tensor():
    """Grouped ConvTranspose: CRD keeps the groups (DCR is refused with the reason). Per tensor only:
    onnxruntime's quantize_static itself fails on a per-channel grouped ConvTranspose (bias scales of O/g)."""
    q = qv.quantize(_model("ConvTranspose", (8, 3, 4, 4), 8, True, strides=[2, 2], pads=[1, 1, 1, 1], group=2),
                    False, "uint8")
    _check(q, "subpixel_crd")
    _, rep = rewrite_onnx(q, ("subpixel",))
    assert rep.entries[0].status == "skipped" and "use order='crd'" in rep.entries[0].reason


def _one_tap_off(monkeypatch, tap: int) -> None:
    """Make the lift write one weight tap (flat index ``tap``) one integer step off."""
    right = qdq_lift._dq_node

    def one_off(model, q_, *args):
        if q_.ndim == 4:
            q_ = q_.copy()
            q_.reshape(-1)[tap] += 1 if q_.reshape(-1)[tap] < 100 else -1
        return right(model, q_, *args)

    monkeypatch.setattr(qdq_lift, "_dq_node", one_off)


def test_qdq_lift_wrong_tap_is_caught_by_the_integer_check(monkeypatch):
    """One weight tap one step off: the region's accumulators differ (no tolerance) and the rewrite is reverted."""
    q = qv.quantize(_model("ConvTranspose", (8, 4, 4, 4), 8, True, strides=[2, 2], pads=[1, 1, 1, 1]), True, "uint8")
    _one_tap_off(monkeypatch, 17)
    new, rep = rewrite_onnx(q, ("subpixel",))
    e = rep.entries[0]
    assert e.status == "failed" and e.max_error >= 1, (e.status, e.reason, e.note)
    assert "integer accumulators max |Δ|" in e.note
    assert [n.op_type for n in new.graph.node] == [n.op_type for n in q.graph.node]


def _fake(build_weight):
    """A pattern replacing a QDQ Conv by a 1x1-kernel Conv whose weight ``build_weight(old)`` computes."""
    def build(model, idx, shapes):
        from pixelfold.onnx.graph import const
        from pixelfold.onnx.nodes import init

        node = model.graph.node[idx]
        w = build_weight(const(model, node.input[1]))
        conv = helper.make_node("Conv", [node.input[0], init(model, w, "w_fake")], list(node.output), name="fake")
        return Splice(remove=[idx], nodes=[conv])
    return Pattern("fake", ("Conv",), build, lift_qdq=True)


def test_qdq_lift_refuses_arithmetic_on_taps():
    q = qv.quantize(_model("Conv", (4, 3, 3, 3), 3, False), True, "uint8")
    idx = next(i for i, n in enumerate(q.graph.node) if n.op_type == "Conv")
    summed = _fake(lambda w: w.sum(axis=(2, 3), keepdims=True))
    with pytest.raises(FoldError, match=r"computes its new weight from the old taps \(not a permutation with zero"):
        summed.splice(q, idx, {})


def test_qdq_lift_refuses_a_channel_mixing_per_channel_scales():
    q = qv.quantize(_model("Conv", (4, 3, 1, 1), 3, False), True, "uint8")
    idx = next(i for i, n in enumerate(q.graph.node) if n.op_type == "Conv")
    swap = _fake(lambda w: np.concatenate([w[:1, :1], w[1:2, 1:]], axis=1).repeat(4, axis=0))  # taps of 2 channels
    with pytest.raises(FoldError, match=r"new weight channel 0 mixes taps of old channels 0 and 1, which have"):
        swap.splice(q, idx, {})


def test_lifted_patterns_are_registered():
    assert {n for n, p in PATTERNS.items() if p.lift_qdq} >= {"subpixel", "subpixel_crd", "polyphase2", "polyphase4",
                                                              "transposed", "merge", "dcr_flip", "patch_matmul"}


def _pair_model(kind, mode="DCR", relu=False, tied=True, o=2, r=2):
    """Conv → DepthToSpace (``transposed``) or SpaceToDepth → Conv (``merge``), float, for quantize_static."""
    rng = np.random.default_rng(3)
    if kind == "transposed":
        b = rng.standard_normal(o).astype(np.float32)
        b = (np.repeat(b, r * r) if mode == "CRD" else np.tile(b, r * r)) if tied else \
            rng.standard_normal(o * r * r).astype(np.float32)
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["t"], name="c", pads=[1, 1, 1, 1]),
                 helper.make_node("DepthToSpace", ["t"], ["u" if relu else "y"], name="n", blocksize=r, mode=mode)]
        w, cin = (o * r * r, 3, 3, 3), 3
    else:
        nodes = [helper.make_node("SpaceToDepth", ["x"], ["t"], name="n", blocksize=r),
                 helper.make_node("Conv", ["t", "w", "b"], ["u" if relu else "y"], name="c", pads=[1, 1, 1, 1])]
        w, cin, b = (4, 3 * r * r, 3, 3), 3, rng.standard_normal(4).astype(np.float32)
    if relu:
        nodes.append(helper.make_node("Relu", ["u"], ["y"], name="relu"))
    inits = [numpy_helper.from_array(rng.standard_normal(w).astype(np.float32), "w"), numpy_helper.from_array(b, "b")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, cin, 4 * r, 5 * r])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("activation", ["int8", "uint8"])
@pytest.mark.parametrize("mode, relu, r", [("DCR", False, 2), ("CRD", False, 2), ("CRD", True, 3)])
def test_qdq_transposed_moves_the_pair_and_keeps_integers(mode, relu, r, activation):
    """Conv → Q → DQ → DepthToSpace (as quantize_static writes it): the pair commutes with the DepthToSpace, the
    pattern sees Conv → DepthToSpace, the ConvTranspose keeps integer weights; per-tensor weights only."""
    q = qv.quantize(_pair_model("transposed", mode, relu, r=r), False, activation)
    new, m = _check(q, "transposed", fused_after=False)  # ORT 1.32 runs a QDQ ConvTranspose in float
    assert [n.op_type for n in new.graph.node].count("DepthToSpace") == 0
    assert m["fused"] == 0.0  # the original conv is fused but the ConvTranspose is not: ORT-on is not gated


def test_qdq_transposed_per_channel_is_refused_with_the_reason():
    """Per-channel weights give each phase its own int32 bias and scale: one ConvTranspose bias cannot hold them."""
    _, rep = rewrite_onnx(qv.quantize(_pair_model("transposed", "DCR"), True, "uint8"), ("transposed",))
    assert rep.entries[0].status == "skipped"
    assert "bias differs between the phases of one output channel" in rep.entries[0].reason


@pytest.mark.parametrize("activation, per_channel", [("int8", True), ("uint8", False), ("uint8", True)])
@pytest.mark.parametrize("r, relu", [(2, False), (2, True), (3, False)])
def test_qdq_merge_is_bit_identical(r, relu, activation, per_channel):
    """SpaceToDepth → Q → DQ → Conv becomes one strided Conv on Q → DQ of the input: fused by ORT on both sides."""
    q = qv.quantize(_pair_model("merge", relu=relu, r=r), per_channel, activation)
    new, m = _check(q, "merge")
    assert "SpaceToDepth" not in [n.op_type for n in new.graph.node]
    assert m["fused"] == 1.0 and m["on"] == 0.0


def test_qdq_merge_wrong_tap_is_caught_by_the_integer_check(monkeypatch):
    q = qv.quantize(_pair_model("merge"), True, "uint8")
    _one_tap_off(monkeypatch, 5)
    new, rep = rewrite_onnx(q, ("merge",))
    e = rep.entries[0]
    assert e.status == "failed" and e.max_error >= 1 and "(1 checked)" in e.note, (e.status, e.reason, e.note)
    assert [n.op_type for n in new.graph.node] == [n.op_type for n in q.graph.node]


@pytest.mark.parametrize("activation, per_channel", [("int8", True), ("uint8", False), ("uint8", True)])
@pytest.mark.parametrize("relu", [False, True])
def test_qdq_dcr_flip_is_bit_identical(relu, activation, per_channel):
    """Conv → Q → DQ → DepthToSpace(CRD): the pair moves, the Conv's output channels (and their per-channel scales
    and int32 biases) are permuted, DepthToSpace becomes DCR; ORT fuses the Conv on both sides."""
    q = qv.quantize(_pair_model("transposed", "CRD", relu, tied=False), per_channel, activation)
    new, m = _check(q, "dcr_flip")
    d2s = [n for n in new.graph.node if n.op_type == "DepthToSpace"]
    assert len(d2s) == 1 and helper.get_attribute_value(next(a for a in d2s[0].attribute if a.name == "mode")) == b"DCR"
    assert m["fused"] == 1.0 and m["on"] == 0.0


def test_sweep_lift_row_on_a_zoo_model():
    """The sweep's row for DCGAN (4 ConvTransposes, ORT runs them in float): 4 rewritten, accumulators exact."""
    from pixelfold.onnx.sweep_lift import sweep_one

    row = sweep_one("dcgan_generator", "subpixel", True, "uint8").split(" | ")
    assert row[3] == "4 changed, 0 skipped, 0 failed" and row[4] == "0.0 (4)" and row[7] == "0 → 4", row
