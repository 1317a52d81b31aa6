"""``patch_matmul`` and the one-hot patterns on int8 QDQ graphs (issue 11): integer weights, onnxruntime's integer
kernels (QGemm, QLinearConv) on the rewritten graph, integer accumulators identical, int8 outputs bit-identical."""

from __future__ import annotations

import collections

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pixelfold.onnx import qdq_lift  # noqa: E402
from pixelfold.onnx import qdq_verify as qv  # noqa: E402
from pixelfold.onnx.api import rewrite_onnx  # noqa: E402
from pixelfold.onnx.nodes import producer  # noqa: E402


def _fused(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in qv.fused_ops(model))


def _graph(nodes, x_shape, inits, y_shape=None, opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _rewrite(q, pattern):
    before = q.SerializeToString()
    new, rep = rewrite_onnx(q, (pattern,))
    assert q.SerializeToString() == before  # the user's model is not mutated
    changed = [e for e in rep.entries if e.status == "changed"]
    assert changed, [(e.path, e.status, e.reason) for e in rep.entries]
    return new, changed[0]


def _measure(q, new, anchor):
    m = qv.measure(q, new, [anchor], seed=7, batches=3)
    assert m["checked"] >= 1 and m["integer"] == 0.0, m  # the region's integer accumulators are identical
    assert m["fused"] == 1.0 and m["on"] == 0.0, m  # integer kernels on both sides: bit-identical int8 outputs
    assert m["local_off"] <= qv.LOCAL_OFF_LSB, m
    return m


# ----------------------------------------------------------------------------------------------- patch_matmul
def _patchify(x_shape, w_shape, bias=True, **a):
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(w_shape[0]).astype(np.float32), "b"))
    k = list(w_shape[2:])
    conv = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], name="c", kernel_shape=k,
                            strides=a.pop("strides", k), **a)
    return _graph([conv], x_shape, inits)


PATCH = [dict(x=[2, 3, 16, 16], w=[16, 3, 4, 4]), dict(x=[1, 3, 17, 15], w=[8, 3, 4, 4]),  # odd: cut by a Slice
         dict(x=[2, 4, 12, 8], w=[6, 4, 3, 2]), dict(x=[1, 3, 16, 16], w=[8, 3, 8, 8], bias=False)]


@pytest.mark.parametrize("activation, per_channel", [("int8", True), ("uint8", False), ("uint8", True), ("int8", False)])
@pytest.mark.parametrize("case", PATCH, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_qdq_patch_matmul_is_one_integer_gemm(case, activation, per_channel):
    q = qv.quantize(_patchify(case["x"], case["w"], case.get("bias", True)), per_channel, activation)
    assert _fused(q)["QLinearConv"] == 1
    new, e = _rewrite(q, "patch_matmul")
    assert "integer accumulators max |Δ| 0" in e.note
    gemm = next(n for n in new.graph.node if n.op_type == "Gemm")
    inits = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    wdq = new.graph.node[producer(new, gemm.input[1])]
    assert wdq.op_type == "DequantizeLinear" and inits[wdq.input[0]].dtype == np.int8  # the weight stays integer
    O = case["w"][0]
    assert inits[wdq.input[0]].shape == (O, int(np.prod(case["w"][1:])))  # (O, K): the conv's own flattening
    assert inits[wdq.input[1]].size == (O if per_channel else 1)
    if case.get("bias", True):
        bdq = new.graph.node[producer(new, gemm.input[2])]
        assert bdq.op_type == "DequantizeLinear" and inits[bdq.input[0]].dtype == np.int32
    assert not any(v.dtype.kind == "f" and v.ndim == 2 for v in inits.values())
    ops = _fused(new)
    assert ops["QGemm"] == 1 and ops["QLinearConv"] == 0 and not set(ops) & set(qv.FLOAT_OPS), ops
    _measure(q, new, "c")


def test_qdq_patch_matmul_wrong_tap_is_caught(monkeypatch):
    """One weight tap of the new Gemm one integer step off: the accumulators differ and the rewrite is reverted."""
    q = qv.quantize(_patchify([1, 3, 16, 16], [8, 3, 4, 4]), True, "uint8")
    right = qdq_lift._dq_node

    def one_off(model, q_, *args):
        if q_.ndim == 2:
            q_ = q_.copy()
            q_[3, 5] += 1 if q_[3, 5] < 100 else -1
        return right(model, q_, *args)

    monkeypatch.setattr(qdq_lift, "_dq_node", one_off)
    new, rep = rewrite_onnx(q, ("patch_matmul",))
    e = rep.entries[0]
    assert e.status == "failed" and e.max_error >= 1 and "integer accumulators max |Δ|" in e.note, (e.status, e.note)
    assert [n.op_type for n in new.graph.node] == [n.op_type for n in q.graph.node]


def test_qdq_lift_refuses_a_gemm_without_trans_b(monkeypatch):
    from pixelfold.onnx import patch

    q = qv.quantize(_patchify([1, 3, 16, 16], [8, 3, 4, 4]), True, "int8")
    right = patch.patch_nodes

    def no_trans(model, node, gemm=False):
        nodes = right(model, node, gemm)
        for n in nodes:
            if n.op_type == "Gemm":
                del n.attribute[:]
        return nodes

    monkeypatch.setattr(patch, "patch_nodes", no_trans)
    _, rep = rewrite_onnx(q, ("patch_matmul",))
    e = rep.entries[0]
    assert e.status == "skipped" and e.reason == ("patch_matmul: a new Gemm without transB=1 (weight not (O, K)); "
                                                  "not rewritten")


# ----------------------------------------------------------------------------------------------- one-hot
def _around(kind, mode="DCR", r=2):
    """Conv → SpaceToDepth → Conv, or Conv → DepthToSpace (→ Conv): the rearrangement between quantized convs."""
    rng = np.random.default_rng(4)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    if kind == "s2d":
        rearr = helper.make_node("SpaceToDepth", ["a"], ["b"], name="n", blocksize=r)
        w2 = numpy_helper.from_array(rng.standard_normal((4, 8 * r * r, 1, 1)).astype(np.float32), "w2")
    else:
        rearr = helper.make_node("DepthToSpace", ["a"], ["b"], name="n", blocksize=r, mode=mode)
        w2 = numpy_helper.from_array(rng.standard_normal((4, 8 // (r * r), 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]), rearr,
             helper.make_node("Conv", ["b", "w2"], ["y"], name="c2",
                              pads=[0, 0, 0, 0] if kind == "s2d" else [1, 1, 1, 1])]
    y = [2, 4, 4, 6] if kind == "s2d" else [2, 4, 4 * r * r, 6 * r * r]
    return _graph(nodes, [2, 3, 4 * r, 6 * r], [w1, w2], y)


@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_qdq_onehot_s2d_is_an_integer_conv(activation):
    """DQ → SpaceToDepth → Q becomes DQ → Conv(int8 one-hot, scale 1) → Q: a QLinearConv, bit-identical."""
    q = qv.quantize(_around("s2d"), True, activation)
    new, e = _rewrite(q, "onehot_s2d")
    conv = next(n for n in new.graph.node if n.name.startswith("n_onehot") and n.op_type == "Conv")
    dq = new.graph.node[producer(new, conv.input[1])]
    inits = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int8
    assert set(np.unique(inits[dq.input[0]])) == {0, 1} and inits[dq.input[1]] == 1.0 and inits[dq.input[2]] == 0
    before, after = _fused(q), _fused(new)
    assert after["QLinearConv"] == before["QLinearConv"] + 1 and "SpaceToDepth" not in after, after
    _measure(q, new, "n")


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_qdq_onehot_d2s_keeps_the_weight_integer(mode):
    """DepthToSpace → one-hot ConvTranspose with an int8 weight (onnxruntime 1.32 runs a QDQ ConvTranspose in float,
    so the ORT-on check only measures it); the integer region and ORT with optimisations off are exact."""
    q = qv.quantize(_around("d2s", mode), True, "uint8")
    new, e = _rewrite(q, "onehot_d2s")
    convt = next(n for n in new.graph.node if n.op_type == "ConvTranspose")
    dq = new.graph.node[producer(new, convt.input[1])]
    inits = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int8
    m = qv.measure(q, new, ["n"], seed=7, batches=3)
    assert m["integer"] == 0.0 and m["off"] == 0.0 and m["on"] == 0.0, m


def test_onehot_float_graph_keeps_a_float_weight():
    new, _ = _rewrite(_around("s2d"), "onehot_s2d")
    conv = next(n for n in new.graph.node if n.name.startswith("n_onehot"))
    assert producer(new, conv.input[1]) is None  # an initializer, not a DequantizeLinear


def test_region_bound_counts_gemm_weights():
    """The float32-exact bound (Σ|w|·max|x| + |b| < 2²⁴) must see a Gemm's weight, or a large Gemm region would be
    evaluated in float32 without the guarantee."""
    from pixelfold.onnx.qdq_region import bound

    w = numpy_helper.from_array(np.full((3, 5), -2.0), "w")  # (O, K), transB=1: each output sums 5 taps
    b = numpy_helper.from_array(np.array([1.0, -7.0, 0.0]), "b")
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "r", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, None)],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)], [w, b])
    assert bound(helper.make_model(g), 100.0) == 10 * 100.0 + 7.0
    nodes = [helper.make_node("MatMul", ["x", "wt"], ["y"])]
    wt = numpy_helper.from_array(np.full((5, 3), 3.0), "wt")  # (K, O)
    g = helper.make_graph(nodes, "r", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, None)],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)], [wt])
    assert bound(helper.make_model(g), 2.0) == 15 * 2.0


def test_qdq_lift_looks_through_a_shared_bias_identity():
    """torch's exporter writes equal biases as one initializer read through Identity nodes; quantize_static then gives
    ``DQ(b_q) → Identity → Conv``. The lift follows the Identity (it skipped: 'not a DequantizeLinear of an int32
    initializer'), the region check reads the constant through it (it could not run), and no dead node is left."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 4, 4)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 2, 2)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b"], ["a"], name="c1", kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Identity", ["b"], ["b2"], name="same_bias"),
             helper.make_node("Conv", ["a", "w2", "b2"], ["y"], name="c2", kernel_shape=[2, 2], strides=[2, 2])]
    q = qv.quantize(_graph(nodes, [1, 3, 32, 32], inits), True, "uint8")
    assert "Identity" in [n.op_type for n in q.graph.node]
    new, rep = rewrite_onnx(q, ("patch_matmul",))
    assert [e.status for e in rep.entries] == ["changed", "changed"], [(e.path, e.reason) for e in rep.entries]
    ops = [n.op_type for n in new.graph.node]
    assert "Conv" not in ops and ops.count("Gemm") == 2
    read = {i for n in new.graph.node for i in n.input} | {o.name for o in new.graph.output}
    assert all(o in read for n in new.graph.node for o in n.output), "a dead node was left"
    m = qv.measure(q, new, ["c1", "c2"], seed=3, batches=2)
    assert m["integer"] == 0.0 and m["checked"] == 2 and m["on"] == 0.0, m
