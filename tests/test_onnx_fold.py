"""pixelfold.onnx: Conv fold on ONNX graphs, checked against onnxruntime (issue 11)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pixelfold.errors import FoldError  # noqa: E402
from pixelfold.onnx import graph, verify  # noqa: E402
from pixelfold.onnx.api import rewrite_onnx, rewrite_onnx_file  # noqa: E402


def _conv_model(c=3, o=4, k=3, hw=(8, 8), opset=17, bias=True, batch=1, **conv_attrs):
    rng = np.random.default_rng(0)
    g = conv_attrs.get("group", 1)
    inits = [numpy_helper.from_array(rng.standard_normal((o, c // g, k, k)).astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "b"))
        ins.append("b")
    node = helper.make_node("Conv", ins, ["y"], name="conv", **conv_attrs)
    gr = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, *hw])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(m, strict_mode=True)


CASES = [
    dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(strides=[2, 2]),
    dict(strides=[2, 2], pads=[0, 1, 2, 0]),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(strides=[2, 2], auto_pad="VALID"),
    dict(strides=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2]),
]


@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
@pytest.mark.parametrize("attrs", CASES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_fold_is_exact_in_onnxruntime(attrs, hw):
    c, o = (3, 6) if attrs.get("group") else (3, 4)
    m = _conv_model(c=c, o=o, hw=hw, **attrs)
    before = m.SerializeToString()
    new, rep = rewrite_onnx(m)
    assert m.SerializeToString() == before  # the user's model is not mutated
    assert [e.status for e in rep.entries] == ["changed"], rep.entries
    assert "SpaceToDepth" in [n.op_type for n in new.graph.node]
    err, scale = verify.max_error(m, new, seed=5)
    assert err <= 1e-5 * max(scale, 1.0)


#: (in channels, out channels, group): depthwise, depthwise ×2 multiplier, groups 2 and 4
GROUPED = [(8, 8, 8), (4, 8, 4), (4, 6, 2), (8, 8, 4)]


def _folded(new):
    """The folded Conv of a one-conv graph and its weight."""
    conv = next(n for n in new.graph.node if n.op_type == "Conv")
    return conv, graph.const(new, conv.input[1])


@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
@pytest.mark.parametrize("attrs", CASES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("c,o,g", GROUPED, ids=lambda v: str(v))
def test_grouped_fold_is_exact_in_onnxruntime(c, o, g, attrs, hw):
    """group > 1 (MobileNet's depthwise stride 2): the CRD Reshape/Transpose/Reshape keeps each group's
    channels together, so the folded Conv keeps the group count with C·s² input channels."""
    m = _conv_model(c=c, o=o, hw=hw, group=g, **attrs)
    new, rep = rewrite_onnx(m)
    assert [e.status for e in rep.entries] == ["changed"], rep.entries
    ops = [n.op_type for n in new.graph.node]
    assert ops[-4:] == ["Reshape", "Transpose", "Reshape", "Conv"] and "SpaceToDepth" not in ops, ops
    s = attrs["strides"][0]
    conv, w = _folded(new)
    assert graph.attrs(conv)["group"] == g and w.shape[:2] == (o, c // g * s * s)
    assert graph.attrs(conv).get("strides", [1, 1]) == [1, 1] and len(conv.input) == 3  # bias kept
    err, scale = verify.max_error(m, new, seed=5)
    assert err <= 1e-5 * max(scale, 1.0)


@pytest.mark.parametrize("opset", [13, 28])
def test_grouped_fold_batch_two_non_square_no_bias(opset):
    m = _conv_model(c=6, o=6, hw=(11, 6), bias=False, opset=opset, batch=2, group=3, strides=[2, 2], auto_pad="SAME_UPPER")
    new, rep = rewrite_onnx(m)
    assert [e.status for e in rep.entries] == ["changed"], rep.entries
    conv, w = _folded(new)
    assert len(conv.input) == 2 and w.shape == (6, 8, 2, 2) and graph.attrs(conv)["group"] == 3
    err, scale = verify.max_error(m, new, seed=6)
    assert err <= 1e-5 * max(scale, 1.0)


def test_grouped_fold_rearranges_in_crd_order():
    """The Reshape/Transpose/Reshape is torch's pixel_unshuffle (CRD: channel c·s² + bh·s + bw) of the padded
    input, checked on the data alone (a wrong order with a matching weight would pass the end-to-end check)."""
    import torch

    m = _conv_model(c=4, o=4, hw=(7, 9), group=2, strides=[2, 2], pads=[1, 1, 1, 1])
    new, _ = rewrite_onnx(m)
    conv, _ = _folded(new)
    assert [n.op_type for n in new.graph.node] == ["Pad", "Reshape", "Transpose", "Reshape", "Conv"]
    assert new.graph.node[3].output[0] == conv.input[0]
    new.graph.output.append(helper.make_tensor_value_info(conv.input[0], TensorProto.FLOAT, None))
    x = np.random.default_rng(2).standard_normal((1, 4, 7, 9)).astype(np.float32)
    _, got = verify.run(new, {"x": x})
    # out 4x5, folded kernel 2x2: it reads 2·(4-1+2) x 2·(5-1+2) = 10x12, i.e. pads (1, 1) + 1 more at the far ends
    want = torch.nn.functional.pixel_unshuffle(torch.nn.functional.pad(torch.from_numpy(x), (1, 2, 1, 2)), 2).numpy()
    assert got.shape == want.shape and np.array_equal(got, want)


def test_grouped_fold_then_merge_is_one_strided_grouped_conv_again():
    m = _conv_model(c=8, o=8, hw=(9, 9), group=8, strides=[2, 2], pads=[1, 1, 1, 1])
    new, _ = rewrite_onnx(m)
    back, rep = rewrite_onnx(new, ("merge",))
    assert [e.status for e in rep.entries] == ["changed"], rep.entries
    conv, _ = _folded(back)
    assert graph.attrs(conv)["group"] == 8 and graph.attrs(conv)["strides"] == [2, 2]
    err, scale = verify.max_error(m, back, seed=2)
    assert err <= 1e-5 * max(scale, 1.0)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_fold_even_and_unit_kernels(k):
    m = _conv_model(k=k, hw=(9, 8), strides=[2, 2])
    new, rep = rewrite_onnx(m)
    assert rep.entries[0].status == "changed", rep.entries[0]


def test_stride_one_is_kept_and_unequal_strides_skipped():
    _, rep = rewrite_onnx(_conv_model(pads=[1, 1, 1, 1]))
    assert rep.entries[0].status == "kept"
    _, rep = rewrite_onnx(_conv_model(strides=[2, 1]))
    assert rep.entries[0].status == "skipped"
    assert rep.entries[0].reason == "strides [2, 1]: fold needs equal strides > 1"


@pytest.mark.parametrize("opset", [13, 28])
def test_opset_range_accepted(opset):
    _, rep = rewrite_onnx(_conv_model(strides=[2, 2], opset=opset))
    assert rep.entries[0].status == "changed", rep.entries[0]


def test_opset_out_of_range_message():
    m = _conv_model(strides=[2, 2], opset=12)
    with pytest.raises(FoldError) as e:
        rewrite_onnx(m)
    assert str(e.value) == (
        "the model uses opset 12; pixelfold.onnx handles opsets 13-28; "
        "convert it with onnx.version_converter.convert_version"
    )


def test_mismatch_is_reverted(monkeypatch):
    """Fail closed: if verification reports an error, the original node stays."""
    m = _conv_model(strides=[2, 2])
    monkeypatch.setattr(verify, "max_error", lambda a, b, seed=0: (1.0, 1.0))
    new, rep = rewrite_onnx(m)
    assert rep.entries[0].status == "failed"
    assert [n.op_type for n in new.graph.node] == ["Conv"]


def test_file_roundtrip(tmp_path):
    src, out = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(_conv_model(strides=[2, 2], pads=[1, 1, 1, 1]), src)
    rep = rewrite_onnx_file(str(src), str(out))
    assert len(rep.changed) == 1 and rep.end_to_end_error is not None
    assert rep.end_to_end_error <= rep.end_to_end_tolerance
    onnx.checker.check_model(graph.load(str(out)), full_check=True)


def test_cli_rewrite_onnx(tmp_path, capsys):
    from pixelfold import cli

    src, out, js = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "r.json"
    onnx.save(_conv_model(strides=[2, 2], pads=[1, 1, 1, 1]), src)
    rc = cli.main(["rewrite", str(src), "--profile", "no_stride", "--out", str(out), "--json", str(js)])
    assert rc == 0
    assert "fold" in capsys.readouterr().out
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Pad", "SpaceToDepth", "Conv"]
    assert js.exists()


def test_cli_rewrite_onnx_refuses_unknown_profile(tmp_path, capsys):
    from pixelfold import cli

    src = tmp_path / "a.onnx"
    onnx.save(_conv_model(strides=[2, 2]), src)
    rc = cli.main(["rewrite", str(src), "--profile", "patch_linear", "--out", str(tmp_path / "b.onnx")])
    assert rc != 0
    assert "profile 'patch_linear' is not available for .onnx input yet; available: no_stride, " in capsys.readouterr().err
