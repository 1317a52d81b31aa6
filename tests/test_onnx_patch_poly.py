"""pixelfold.onnx ``patch_matmul`` and ``polyphase2``/``polyphase4`` (issue 11), checked in onnxruntime.

Each rewrite must be reported ``changed``, give the expected ops, pass ``onnx.checker`` (full_check), leave
the input model untouched and match the original graph to 1e-5·max(|y|, 1); each pattern has a negative
test in which a deliberately wrong weight order must be caught (status failed, error > 0.1) and reverted.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pixelfold.onnx import patch, polyphase, verify  # noqa: E402
from pixelfold.onnx.api import rewrite_onnx  # noqa: E402
from pixelfold.onnx.graph import attrs  # noqa: E402

TOL = 1e-5
PATCH_OPS = ["Reshape", "Transpose", "Reshape", "MatMul", "Add", "Reshape", "Transpose"]


def _conv(x_shape, w_shape, bias=True, seed=0, **conv):
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(w_shape[0]).astype(np.float32), "b"))
        ins.append("b")
    g = helper.make_graph([helper.make_node("Conv", ins, ["y"], name="conv", **conv)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(m, strict_mode=True)


def _rewrite(m, transform, ops=None):
    before = m.SerializeToString()
    new, rep = rewrite_onnx(m, (transform,))
    assert m.SerializeToString() == before  # the input model is not mutated
    assert [e.status for e in rep.entries] == ["changed"], rep.entries
    if ops is not None:
        assert [n.op_type for n in new.graph.node] == ops
    onnx.checker.check_model(new, full_check=True)
    err, scale = verify.max_error(m, new, seed=7)
    assert err <= TOL * max(scale, 1.0), (err, scale)
    return new


# ---------------------------------------------------------------------------- patch_matmul
@pytest.mark.parametrize("x_shape, w_shape, bias", [
    ([1, 3, 16, 16], [8, 3, 4, 4], True),     # ViT-style patch embedding
    ([2, 3, 16, 16], [8, 3, 4, 4], False),
    ([1, 5, 12, 10], [6, 5, 2, 2], True),
    ([1, 3, 12, 10], [7, 3, 3, 2], True),     # non-square patches
    ([2, 1, 8, 8], [4, 1, 8, 8], True),       # one patch per item
])
def test_patch_matmul_is_exact(x_shape, w_shape, bias):
    m = _conv(x_shape, w_shape, bias, strides=list(w_shape[2:]))
    _rewrite(m, "patch_matmul", PATCH_OPS if bias else [op for op in PATCH_OPS if op != "Add"])


def test_patch_matmul_odd_sizes_are_cut_first_and_valid_auto_pad():
    new = _rewrite(_conv([1, 3, 17, 15], [8, 3, 4, 4], strides=[4, 4], auto_pad="VALID"), "patch_matmul",
                   ["Slice"] + PATCH_OPS)
    assert new.graph.node[0].op_type == "Slice"


def test_patch_matmul_dynamic_batch():
    _rewrite(_conv(["N", 3, 16, 8], [8, 3, 4, 4], strides=[4, 4]), "patch_matmul", PATCH_OPS)


@pytest.mark.parametrize("kw, reason", [
    (dict(strides=[2, 2]), "kernel [4, 4] != strides [2, 2]"),
    (dict(strides=[4, 4], pads=[1, 1, 1, 1]), "pads [1, 1, 1, 1]"),
    (dict(strides=[4, 4], dilations=[2, 2]), "dilations [2, 2]"),
])
def test_patch_matmul_skipped_with_reason(kw, reason):
    _, rep = rewrite_onnx(_conv([1, 3, 16, 16], [8, 3, 4, 4], **kw), ("patch_matmul",))
    assert rep.entries[0].status == "skipped" and reason in rep.entries[0].reason, rep.entries


def test_patch_matmul_needs_static_spatial_size_and_one_group():
    _, rep = rewrite_onnx(_conv([1, 3, "H", 16], [8, 3, 4, 4], strides=[4, 4]), ("patch_matmul",))
    assert rep.entries[0].status == "skipped" and "dim H" in rep.entries[0].reason, rep.entries
    _, rep = rewrite_onnx(_conv([1, 4, 16, 16], [8, 2, 4, 4], strides=[4, 4], group=2), ("patch_matmul",))
    assert rep.entries[0].status == "skipped" and "group 2" in rep.entries[0].reason, rep.entries


def test_patch_matmul_wrong_patch_order_is_caught(monkeypatch):
    monkeypatch.setattr(patch, "PATCH_ORDER", "dcr")  # (kh, kw, C) rows against the (C, kh, kw) Transpose
    m = _conv([1, 3, 16, 16], [8, 3, 4, 4], strides=[4, 4])
    new, rep = rewrite_onnx(m, ("patch_matmul",))
    e = rep.entries[0]
    assert e.status == "failed" and e.max_error > 0.1, e
    assert [n.op_type for n in new.graph.node] == ["Conv"]  # reverted


# ---------------------------------------------------------------------------- polyphase
@pytest.mark.parametrize("transform, x_shape, w_shape, bias, conv", [
    ("polyphase2", [1, 3, 16, 16], [5, 3, 3, 3], True, dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    ("polyphase2", [1, 3, 15, 17], [5, 3, 3, 3], False, dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    ("polyphase2", [2, 3, 13, 11], [4, 3, 7, 7], True, dict(strides=[2, 2], pads=[3, 2, 1, 3])),
    ("polyphase2", [1, 3, 15, 17], [5, 3, 7, 7], True, dict(auto_pad="SAME_UPPER")),  # stride 1
    ("polyphase2", [1, 3, 14, 12], [5, 3, 4, 4], True, dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    ("polyphase2", [1, 2, 20, 20], [3, 2, 3, 3], True, dict(strides=[3, 3], dilations=[2, 1])),
    ("polyphase2", [1, 4, 9, 9], [6, 4, 1, 1], True, dict(strides=[2, 2])),  # kernel smaller than the stride
    ("polyphase2", [1, 3, 12, 12], [4, 3, 2, 2], True, dict(strides=[2, 2], pads=[1, 1, 0, 0])),  # pad + crop
    ("polyphase4", [1, 3, 20, 13], [5, 3, 4, 4], True, dict(strides=[2, 2], dilations=[2, 1])),
    ("polyphase4", [1, 1, 24, 24], [2, 1, 12, 12], False, dict()),  # big kernel, stride 1
])
def test_polyphase_is_exact(transform, x_shape, w_shape, bias, conv):
    new = _rewrite(_conv(x_shape, w_shape, bias, **conv), transform)
    ops = [n.op_type for n in new.graph.node]
    core = ["SpaceToDepth", "Conv", "DepthToSpace"]
    assert ops[-3:] == core or ops[-4:] == core + ["Slice"], ops
    s = conv.get("strides", [1, 1])[0]
    b = int(transform[len("polyphase"):])
    nodes = {n.op_type: n for n in new.graph.node}
    assert attrs(nodes["SpaceToDepth"])["blocksize"] == s * b
    assert attrs(nodes["DepthToSpace"])["blocksize"] == b and attrs(nodes["DepthToSpace"])["mode"] == b"DCR"
    assert attrs(nodes["Conv"]).get("strides", [1, 1]) == [1, 1] and "pads" not in attrs(nodes["Conv"])


def test_polyphase_crops_what_the_inner_conv_does_not_read_then_pads():
    new = _rewrite(_conv([1, 3, 12, 12], [4, 3, 2, 2], strides=[2, 2], pads=[1, 1, 0, 0]), "polyphase2",
                   ["Slice", "Pad", "SpaceToDepth", "Conv", "DepthToSpace"])
    assert attrs(new.graph.node[2])["blocksize"] == 4


def test_polyphase_random_geometries():
    """Seeded sweep: sizes, kernels, strides 1-3, dilations, asymmetric pads (some needing a crop), both blocks."""
    rng = np.random.default_rng(11)
    for i in range(16):
        k, s, d = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
        E = d * (k - 1) + 1
        pads = [int(v) for v in rng.integers(0, E, 4)]
        hw = [int(v) for v in rng.integers(max(E, 2), 14, 2)]
        conv = dict(strides=[s, s], dilations=[d, d], pads=pads)
        _rewrite(_conv([1, 2, *hw], [3, 2, k, k], bool(i % 2), seed=i, **conv), ("polyphase2", "polyphase4")[i % 2])


@pytest.mark.parametrize("kw, x_shape, reason", [
    (dict(strides=[2, 1]), [1, 3, 16, 16], "strides [2, 1]"),
    (dict(strides=[2, 2], group=3), [1, 3, 16, 16], "group 3"),
    (dict(strides=[2, 2]), [1, 3, "H", 16], "dim H"),
])
def test_polyphase_skipped_with_reason(kw, x_shape, reason):
    w = [6, 1, 3, 3] if kw.get("group") else [6, 3, 3, 3]
    _, rep = rewrite_onnx(_conv(x_shape, w, **kw), ("polyphase2",))
    assert rep.entries[0].status == "skipped" and reason in rep.entries[0].reason, rep.entries


def test_polyphase_wrong_d2s_mode_is_caught(monkeypatch):
    monkeypatch.setattr(polyphase, "D2S_MODE", {"dcr": "CRD", "crd": "DCR"})  # DCR weight read as CRD
    m = _conv([1, 3, 16, 16], [5, 3, 3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    new, rep = rewrite_onnx(m, ("polyphase2",))
    e = rep.entries[0]
    assert e.status == "failed" and e.max_error > 0.1, e
    assert [n.op_type for n in new.graph.node] == ["Conv"]  # reverted


def test_polyphase_wrong_weight_order_is_caught(monkeypatch):
    monkeypatch.setattr(polyphase, "ORDER", "crd")  # CRD-ordered weight behind a DCR SpaceToDepth...
    monkeypatch.setattr(polyphase, "D2S_MODE", {"crd": "CRD"})  # ...even with the D2S mode that matches its output
    m = _conv([1, 3, 16, 16], [5, 3, 3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    new, rep = rewrite_onnx(m, ("polyphase2",))
    e = rep.entries[0]
    assert e.status == "failed" and e.max_error > 0.1, e
    assert [n.op_type for n in new.graph.node] == ["Conv"]
