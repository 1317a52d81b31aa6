"""pixelfold.onnx on int8 QDQ graphs (quantize_static): fold keeps weights integer and outputs bit-identical."""

from __future__ import annotations

import collections

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pixelfold.onnx import qdq  # noqa: E402
from pixelfold.onnx import qdq_verify as qv  # noqa: E402
from pixelfold.onnx.api import rewrite_onnx  # noqa: E402


def _float_model(c=3, o=4, k=3, hw=(9, 8), group=1, **conv_attrs):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((o, c // group, k, k)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "b")]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=group, **conv_attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, *hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _qlinearconvs(model) -> int:
    return collections.Counter(n.op_type for n in qv.fused_ops(model))["QLinearConv"]


def _check(q, n_changed=1):
    before = q.SerializeToString()
    new, rep = rewrite_onnx(q)
    assert q.SerializeToString() == before  # the user's model is not mutated
    assert len(rep.changed) == n_changed, [(e.path, e.status, e.reason) for e in rep.entries]
    assert rep.end_to_end_error == 0.0 and rep.end_to_end_tolerance == 0.0
    e = qv.measure(q, new, [c.path for c in rep.changed], seed=11, batches=3)
    assert e["checked"] == n_changed and e["integer"] == 0.0, e  # exact integer accumulators
    assert e["on"] == 0.0 and e["off"] == 0.0 and e["local_off"] == 0.0, e  # bit-identical, ORT on and off
    # weights stay integer: every Conv weight comes from a DequantizeLinear of an integer initializer
    inits = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    for conv in (n for n in new.graph.node if n.op_type == "Conv"):
        dq = new.graph.node[qdq.producer(new, conv.input[1])]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype.kind in "iu"
    assert not any(v.dtype.kind == "f" and v.ndim == 4 for v in inits.values())  # no float weight introduced
    fused = (_qlinearconvs(q), _qlinearconvs(new))
    assert fused[1] >= max(fused[0], 1), fused  # ORT still fuses DQ → Conv → Q into QLinearConv
    return new, rep, fused


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("activation", ["int8", "uint8"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_qdq_fold_bit_identical(per_channel, activation, symmetric):
    q = qv.quantize(_float_model(strides=[2, 2], pads=[1, 1, 1, 1]), per_channel, activation, symmetric)
    new, _, fused = _check(q)
    assert fused == (1, 1)
    ops = [n.op_type for n in new.graph.node]
    assert "SpaceToDepth" in ops and ops.count("Conv") == 1


CASES = [
    dict(strides=[2, 2]),
    dict(strides=[2, 2], pads=[0, 1, 2, 0]),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(strides=[2, 2], auto_pad="VALID"),
    dict(strides=[3, 3], pads=[1, 1, 1, 1]),
    dict(strides=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2]),
]


@pytest.mark.parametrize("activation", ["int8", "uint8"])
@pytest.mark.parametrize("attrs", CASES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_qdq_fold_pads_and_strides(attrs, activation):
    _check(qv.quantize(_float_model(hw=(11, 8), **attrs), True, activation))


def test_qdq_where_the_nodes_go():
    """uint8: data movement on the quantized tensor; int8: between DQ and a Q→DQ pair next to the Conv."""
    m = _float_model(strides=[2, 2], pads=[1, 1, 1, 1])
    u8, _ = rewrite_onnx(qv.quantize(m, activation="uint8"))
    s8, _ = rewrite_onnx(qv.quantize(m, activation="int8"))

    def chain(model):  # op types from the activation's QuantizeLinear to the Conv's QuantizeLinear
        ops, name = [], next(n for n in model.graph.node if n.op_type == "QuantizeLinear").output[0]
        while True:
            i = next(i for i in qdq.consumers(model, name))
            ops.append(model.graph.node[i].op_type)
            if ops[-1] == "Conv":
                return ops
            name = model.graph.node[i].output[0]

    assert chain(u8) == ["Pad", "SpaceToDepth", "DequantizeLinear", "Conv"]
    pad = next(n for n in u8.graph.node if n.op_type == "Pad")
    assert numpy_helper.to_array(next(t for t in u8.graph.initializer if t.name == pad.input[2])).dtype == np.uint8
    assert chain(s8) == ["DequantizeLinear", "Pad", "SpaceToDepth", "QuantizeLinear", "DequantizeLinear", "Conv"]


def test_qdq_weight_zero_point_taps():
    """Non-zero int8 weight zero points (set by hand: quantize_static makes int8 weights symmetric): the
    folded weight's new taps hold each output channel's zero point."""
    q = qv.quantize(_float_model(o=5, strides=[2, 2], pads=[1, 1, 1, 1]), True, "uint8")
    zw = np.array([3, -7, 0, 11, -1], np.int8)
    for i, t in enumerate(q.graph.initializer):
        if t.name.endswith("w_zero_point"):
            q.graph.initializer[i].CopyFrom(numpy_helper.from_array(zw, t.name))
        if t.name.endswith("w_quantized"):
            w = np.clip(numpy_helper.to_array(t), -110, 110)
            q.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, t.name))
    new, _, _ = _check(q)
    conv = next(n for n in new.graph.node if n.op_type == "Conv")
    dq = new.graph.node[qdq.producer(new, conv.input[1])]
    w = numpy_helper.to_array(next(t for t in new.graph.initializer if t.name == dq.input[0]))
    assert w.shape == (5, 12, 2, 2)
    for o in range(5):  # 3x3 taps kept, 16 - 9 = 7 new taps per input channel hold the zero point
        assert (w[o] == zw[o]).sum() >= 3 * 7


def test_qdq_shared_activation_two_strided_branches():
    """Two strided convs reading one quantized activation (a ResNet downsample): both fold, one DQ stays shared."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("wa", (4, 3, 3, 3)), ("wb", (4, 3, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="ca", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="cb", strides=[2, 2]),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    for act in ("int8", "uint8"):
        new, _, fused = _check(qv.quantize(m, activation=act), n_changed=2)
        # int8: the shared Q→DQ has 2 consumers, so ORT fuses neither conv before; after, each has its own pair
        assert fused == ((0, 2) if act == "int8" else (2, 2))
        used = {i for n in new.graph.node for i in n.input}
        assert all(t.name in used for t in new.graph.initializer)  # old weights removed


@pytest.mark.parametrize("activation", ["int8", "uint8"])
@pytest.mark.parametrize("c,o,group,attrs", [
    (8, 8, 8, dict(strides=[2, 2], pads=[1, 1, 1, 1])),  # MobileNet's depthwise 3x3/2
    (4, 8, 4, dict(strides=[2, 2], auto_pad="SAME_UPPER")),  # depthwise, channel multiplier 2
    (4, 6, 2, dict(strides=[2, 2], pads=[0, 1, 2, 0])),
    (8, 8, 4, dict(strides=[3, 3], auto_pad="SAME_LOWER")),
], ids=["dw", "dw_x2", "g2", "g4_s3"])
def test_qdq_grouped_fold_bit_identical(c, o, group, attrs, activation):
    """group > 1: the CRD Reshape/Transpose/Reshape moves data as SpaceToDepth does (on the uint8 tensor;
    int8 between DQ and a Q→DQ pair), so the integer accumulators and ORT's outputs are identical."""
    q = qv.quantize(_float_model(c=c, o=o, group=group, hw=(11, 8), **attrs), True, activation)
    new, _, fused = _check(q)
    assert fused == (1, 1)
    conv = next(n for n in new.graph.node if n.op_type == "Conv")
    assert next(a.i for a in conv.attribute if a.name == "group") == group
    movement = ["Reshape", "Transpose", "Reshape"]
    ops = [n.op_type for n in new.graph.node]
    want = movement + (["QuantizeLinear", "DequantizeLinear"] if activation == "int8" else ["DequantizeLinear"])
    assert any(ops[i:i + len(want)] == want for i in range(len(ops))) and "SpaceToDepth" not in ops, ops


def test_qdq_lsb_mismatch_is_reverted(monkeypatch):
    """Fail closed: one LSB off with ORT optimisations on (here faked) and the QDQ rewrite is reverted."""
    q = qv.quantize(_float_model(strides=[2, 2], pads=[1, 1, 1, 1]))
    fake = {"integer": 0.0, "on": 1.0, "off": 0.0, "local_off": 0.0, "fused": 1.0, "max_ref": 1.0, "checked": 1.0}
    monkeypatch.setattr(qv, "measure", lambda *a, **k: fake)
    new, rep = rewrite_onnx(q)
    assert rep.entries[0].status == "failed" and "> tolerance 0" in rep.entries[0].reason
    assert [n.op_type for n in new.graph.node] == [n.op_type for n in q.graph.node]


def test_qdq_wrong_weight_is_caught_and_reverted(monkeypatch):
    """A real mismatch (the folded integer weight off by a few steps) is measured in LSBs and reverted."""
    q = qv.quantize(_float_model(strides=[2, 2], pads=[1, 1, 1, 1]), True, "uint8")
    right = qdq.fold_weight_q

    def off_by_some(*args):
        w, new = right(*args)
        return np.clip(w.astype(np.int16) + 9, -128, 127).astype(w.dtype), new

    monkeypatch.setattr(qdq, "fold_weight_q", off_by_some)
    new, rep = rewrite_onnx(q)
    assert rep.entries[0].status == "failed", rep.entries[0]
    assert rep.entries[0].max_error >= 1 and "integer accumulators max |Δ|" in rep.entries[0].note
    assert [n.op_type for n in new.graph.node] == [n.op_type for n in q.graph.node]


def test_cli_rewrite_qdq_file(tmp_path, capsys):
    from pixelfold import cli

    src, out = tmp_path / "q.onnx", tmp_path / "f.onnx"
    onnx.save(qv.quantize(_float_model(strides=[2, 2], pads=[1, 1, 1, 1])), src)
    assert cli.main(["rewrite", str(src), "--profile", "no_stride", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "int8 QDQ: integer accumulators max |Δ| 0 (1 checked); ORT optimisations on: 0 LSB (original conv fused" in text
    assert "SpaceToDepth" in [n.op_type for n in onnx.load(out).graph.node]


# ---------------------------------------------------------------------------- the target solver on QDQ graphs
def _big_kernel_qdq(activation="uint8"):
    """A k33 s4 Conv: rk3588 rejects kernels > 31, so the solver folds it (fold+lower4)."""
    return qv.quantize(_float_model(k=33, hw=(32, 32), strides=[4, 4], pads=[16, 16, 16, 16]), True, activation)


@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_solver_checks_qdq_candidates_with_the_lsb_gates(activation):
    """rewrite_onnx_for_target verifies a QDQ candidate as rewrite_onnx does (one shared step): integer
    accumulators and ORT in LSBs, tolerance 0, the measurements in the note (it used the float check)."""
    from pixelfold.onnx.solve import rewrite_onnx_for_target

    q = _big_kernel_qdq(activation)
    new, rep = rewrite_onnx_for_target(q, "rk3588")
    (e,) = rep.entries
    assert (e.status, e.transform, e.max_error, e.tolerance) == ("changed", "fold+lower4", 0.0, 0.0), e
    assert "runs on it; int8 QDQ: integer accumulators max |Δ| 0 (1 checked)" in e.note
    assert rep.end_to_end_tolerance == 0.0 and rep.end_to_end_error == 0.0
    assert rep.end_to_end_checked_on.startswith("onnxruntime CPU; int8 QDQ: integer accumulators")
    e2 = qv.measure(q, new, ["conv"], seed=5)
    assert e2["integer"] == 0.0 and e2["on"] == 0.0 and e2["local_off"] == 0.0, e2


def test_solver_reverts_a_qdq_candidate_on_an_lsb_gate(monkeypatch):
    """One LSB off with ORT optimisations on (faked): rewrite_onnx and the solver both revert it."""
    from pixelfold.onnx.solve import rewrite_onnx_for_target

    q = _big_kernel_qdq()
    fake = {"integer": 0.0, "on": 1.0, "off": 0.0, "local_off": 0.0, "fused": 1.0, "max_ref": 1.0, "checked": 1.0}
    monkeypatch.setattr(qv, "measure", lambda *a, **k: fake)
    for new, rep in (rewrite_onnx(q), rewrite_onnx_for_target(q, "rk3588")):
        (e,) = rep.entries
        assert e.status == "failed" and "max |Δ| 1 > tolerance 0; reverted" in e.reason, e
        assert [n.op_type for n in new.graph.node] == [n.op_type for n in q.graph.node]
