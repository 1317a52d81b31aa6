"""pixelfold.onnx for a named target: node -> Op mapping, the rank-4 lowering, the solver, the CLI, RKNN (slow)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pixelfold import targets  # noqa: E402
from pixelfold.errors import FoldError  # noqa: E402
from pixelfold.onnx import graph, verify  # noqa: E402
from pixelfold.onnx.lower import lower_nodes  # noqa: E402
from pixelfold.onnx.ops import onnx_ops  # noqa: E402
from pixelfold.onnx.solve import rewrite_onnx_for_target  # noqa: E402

RK = targets.get("rk3588")


def _model(nodes, x_shape, y_shape, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _w(name, *shape, seed=0):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 0.1, name)


def _all_ops(model):
    shapes = graph.static_shapes(model)
    return [op for n in model.graph.node for op in onnx_ops(model, n, shapes)]


def _mixed():
    """k33 s4 Conv (kernel > 31), k7 s4 Conv (runs), ConvTranspose s3, Conv + DepthToSpace 3 CRD, k35 s1 Conv."""
    inits = [_w("w0", 8, 3, 33, 33), _w("b0", 8), _w("w1", 8, 8, 7, 7), _w("w2", 8, 4, 3, 3), _w("w3", 18, 4, 3, 3),
             _w("w4", 2, 2, 35, 35)]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="big", strides=[4, 4], pads=[16, 16, 16, 16]),
        helper.make_node("Conv", ["a", "w1"], ["b"], name="k7s4", strides=[4, 4], pads=[3, 3, 3, 3]),
        helper.make_node("Relu", ["b"], ["c"], name="relu"),
        helper.make_node("ConvTranspose", ["c", "w2"], ["d"], name="up3", strides=[3, 3]),
        helper.make_node("Conv", ["d", "w3"], ["e"], name="pre", pads=[1, 1, 1, 1]),
        helper.make_node("DepthToSpace", ["e"], ["f"], name="ps3", blocksize=3, mode="CRD"),
        helper.make_node("Conv", ["f", "w4"], ["y"], name="k35", pads=[17, 17, 17, 17]),
    ]
    return _model(nodes, [1, 3, 32, 32], [1, 2, 18, 18], inits)


# ---------------------------------------------------------------------------- node -> Op
def test_onnx_ops_conv_and_convtranspose_specs_from_attributes():
    m = _mixed()
    shapes = graph.static_shapes(m)
    by = {n.name: n for n in m.graph.node}
    (big,) = onnx_ops(m, by["big"], shapes)
    assert big.kind == "conv" and big.spec.kernel == (33, 33) and big.spec.stride == (4, 4)
    assert big.spec.padding == ((16, 16), (16, 16)) and big.spec.in_channels == 3 and big.spec.bias
    (up,) = onnx_ops(m, by["up3"], shapes)
    assert up.kind == "conv_transpose" and up.spec.stride == (3, 3) and (up.spec.in_channels, up.spec.out_channels) == (8, 4)
    (d2s,) = onnx_ops(m, by["ps3"], shapes)
    assert (d2s.kind, d2s.block, d2s.order, d2s.channels) == ("depth_to_space", (3, 3), "crd", 2)
    assert onnx_ops(m, by["relu"], shapes) == []
    # auto_pad SAME_UPPER resolved with the input size; group and dilations kept
    n = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2], group=2, dilations=[2, 2])
    (op,) = onnx_ops(None, n, {"x": [1, 4, 9, 9], "w": [6, 2, 3, 3]})
    assert op.spec.padding == ((2, 2), (2, 2)) and op.spec.groups == 2 and op.spec.dilation == (2, 2)
    assert op.spec.in_channels == 4
    s2d = helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2)
    assert [str(o) for o in onnx_ops(None, s2d, {"x": [1, 3, 8, 8]})] == ["space_to_depth 2×2 dcr"]
    t = helper.make_node("Transpose", ["x"], ["y"], perm=[0, 1, 3, 5, 2, 4])
    assert onnx_ops(None, t, {})[0].rank == 6
    with pytest.raises(FoldError, match="shape of its weight"):
        onnx_ops(None, helper.make_node("Conv", ["x", "w"], ["y"]), {})


# ---------------------------------------------------------------------------- lower4
@pytest.mark.parametrize("block", [2, 3, 4])
@pytest.mark.parametrize("op,mode", [("DepthToSpace", "DCR"), ("DepthToSpace", "CRD"), ("SpaceToDepth", None)])
def test_lower4_is_bit_identical_to_onnxruntime_native_op(op, mode, block):
    N, C, H, W = 2, 3, 5, 7  # odd sizes, H != W (the block is square: ONNX has one blocksize)
    x_shape = [N, C * block * block, H, W] if op == "DepthToSpace" else [N, C, H * block, W * block]
    kw = {"mode": mode} if mode else {}
    y_shape = [N, C, H * block, W * block] if op == "DepthToSpace" else [N, C * block * block, H, W]
    m = _model([helper.make_node(op, ["x"], ["y"], name="r", blocksize=block, **kw)], x_shape, y_shape)
    low = onnx.ModelProto()
    low.CopyFrom(m)
    nodes = lower_nodes(low, low.graph.node[0], graph.static_shapes(m))
    del low.graph.node[:]
    low.graph.node.extend(nodes)
    onnx.checker.check_model(low, full_check=True)
    assert max(len(s) for s in graph.static_shapes(low).values()) <= 4
    x = np.random.default_rng(block).standard_normal(x_shape).astype(np.float32)
    (a,), (b,) = verify.run(m, {"x": x}), verify.run(low, {"x": x})
    assert a.shape == b.shape and np.array_equal(a, b)
    ops = _all_ops(low)
    assert [o.kind for o in ops] == ["reshape", "transpose", "reshape", "transpose", "reshape"]
    assert {o.order for o in ops} == {"dcr" if op == "SpaceToDepth" else mode.lower()} and {o.rank for o in ops} == {4}


def test_lower4_refuses_a_dynamic_shape_with_the_reason():
    m = _model([helper.make_node("DepthToSpace", ["x"], ["y"], name="r", blocksize=2)], [1, "C", 4, 4], [1, "C2", 8, 8])
    with pytest.raises(FoldError, match="not static"):
        lower_nodes(m, m.graph.node[0], graph.static_shapes(m))


# ---------------------------------------------------------------------------- the solver
def test_rk3588_every_rewritten_op_is_accepted_exact_and_the_rest_untouched():
    m = _mixed()
    before = {n.name: n.SerializeToString() for n in m.graph.node}
    new, rep = rewrite_onnx_for_target(m, "rk3588")
    status = {e.path: (e.status, e.transform) for e in rep.entries}
    assert status["big"] == ("changed", "fold+lower4")  # kernel 33 > 31: fold, then its SpaceToDepth lowered
    assert status["up3"] == ("changed", "subpixel+lower4")  # ConvTranspose s3 -> Conv + DepthToSpace 3, lowered
    assert status["ps3"] == ("changed", "dcr_flip+lower4")  # CRD block 3: DCR (conv permuted), then lowered
    assert status["k7s4"] == ("kept", "")
    # kernel 35 > 31 at stride 1: polyphase (block 2) gives an 18x18 stride-1 conv on 2x2 phases; its
    # SpaceToDepth(2) is lowered, its DepthToSpace(2) runs on rk3588 as it is (before polyphase2: skipped)
    assert status["k35"] == ("changed", "polyphase2+lower4")
    # what rk3588 is left with: only what it accepts
    assert [str(v.op) for v in RK.rejects(_all_ops(new))] == []
    assert not any(n.op_type in ("SpaceToDepth", "ConvTranspose") for n in new.graph.node)
    assert [n.op_type for n in new.graph.node if n.op_type == "DepthToSpace"] == ["DepthToSpace"]
    after = {n.name: n.SerializeToString() for n in new.graph.node}
    for name in ("k7s4", "relu"):
        assert after[name] == before[name]
    err, scale = verify.max_error(m, new, seed=3)
    assert err <= verify.tolerance(scale) and rep.ok
    assert "ConvTranspose stride 3 → exConvTransposePad on the CPU" in str(rep)  # the target's words, in the notes


def test_a_node_no_form_helps_is_skipped_with_the_targets_words():
    # a depthwise k35 s1 conv: kernel > 31, stride 1 (no fold), groups (no polyphase, no patch_matmul)
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="dw35", pads=[17, 17, 17, 17], group=2)],
               [1, 2, 18, 18], [1, 2, 18, 18], [_w("w", 2, 1, 35, 35)])
    new, rep = rewrite_onnx_for_target(m, "rk3588")
    assert [e.status for e in rep.entries] == ["skipped"]
    assert "Conv: kernel size 1~31" in rep.entries[0].reason and "no exact form runs on it" in rep.entries[0].reason
    assert new.graph.node[0].SerializeToString() == m.graph.node[0].SerializeToString()


def test_a_grouped_fold_is_judged_as_the_crd_space_to_depth_it_is():
    """A grouped fold's Reshape/Transpose/Reshape says what it is (crd space-to-depth, rank 6), so rk3588, which
    leaves crd rearrangements' Reshapes on the CPU, does not take it for a plain Transpose it runs."""
    from pixelfold.onnx.api import rewrite_onnx

    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="g2", strides=[4, 4], pads=[16, 16, 16, 16], group=2)],
               [1, 4, 32, 32], [1, 4, 8, 8], [_w("w", 4, 2, 33, 33)])
    folded, _ = rewrite_onnx(m)
    moved = [o for o in _all_ops(folded) if o.kind in ("reshape", "transpose")]
    assert len(moved) == 3 and {(o.order, o.rank, o.block, o.channels, o.grid) for o in moved} == {
        ("crd", 6, (4, 4), 4, (1, 16, 16))}  # 32 + 2·16 = 64 rows and columns, block 4
    assert any("crd rearrangements leave a Reshape on the CPU" in v.message for v in RK.rejects(moved))
    new, rep = rewrite_onnx_for_target(m, "rk3588")
    assert [e.status for e in rep.entries] == ["skipped"] and "no exact form runs on it" in rep.entries[0].reason
    assert new.graph.node[0].SerializeToString() == m.graph.node[0].SerializeToString()


def test_a_native_space_to_depth_is_lowered_and_a_node_the_target_runs_is_left_alone():
    m = _model([helper.make_node("SpaceToDepth", ["x"], ["s"], name="s2d", blocksize=2),
                helper.make_node("DepthToSpace", ["s"], ["y"], name="d2s", blocksize=2)], [1, 3, 8, 8], [1, 3, 8, 8])
    new, rep = rewrite_onnx_for_target(m, "rk3588")
    assert [(e.path, e.status, e.transform) for e in rep.entries] == [("s2d", "changed", "lower4"), ("d2s", "kept", "")]
    assert [n.op_type for n in new.graph.node][-1] == "DepthToSpace"  # block 2 runs on rk3588 as it is
    assert not RK.rejects(_all_ops(new))


def test_unknown_target_lists_the_targets():
    with pytest.raises(FoldError, match="unknown target 'nope'; built-in targets: .*rk3588"):
        rewrite_onnx_for_target(_mixed(), "nope")


# ---------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("name", ["ethos-u55-128", "ethos-u85-256"])
def test_ethos_u_refuses_onnx_input_with_the_way_out(name):
    """Vela compiles TFLite: a data-level ONNX answer picked PAD + stride-4 CONV_2D, the pair Vela 5.2 crashes on."""
    with pytest.raises(FoldError) as e:
        rewrite_onnx_for_target(_mixed(), name)
    assert str(e.value).startswith(f"{name} compiles int8 TFLite (Arm Vela), not ONNX")
    assert f"pixelfold rewrite MODEL --target {name}" in str(e.value) and str(e.value).endswith("nothing was run")


def test_cli_rewrite_onnx_for_a_target(tmp_path: Path, capsys):
    from pixelfold.cli import main

    src, out = tmp_path / "m.onnx", tmp_path / "new.onnx"
    onnx.save(_mixed(), str(src))
    assert main(["rewrite", str(src), "--target", "rk3588", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "pixelfold rewrite [rk3588]: 4 changed, 0 failed, 0 skipped" in text and "subpixel+lower4" in text
    assert not RK.rejects([o for o in _all_ops(onnx.load(str(out))) if o.spec is None or o.spec.kernel != (35, 35)])
    assert main(["rewrite", str(src), "--target", "nope", "--out", str(out), "--quiet"]) == 2
    assert "unknown target 'nope'; built-in targets:" in capsys.readouterr().err
    assert main(["rewrite", str(src), "--target", "rk3588", "--profile", "no_stride", "--out", str(out)]) == 2
    assert "give --profile or --target, not both" in capsys.readouterr().err
    assert main(["rewrite", str(src), "--profile", "rank4", "--out", str(out), "--quiet"]) == 0  # --profile still works
    assert "changed  ps3" in capsys.readouterr().out


# ---------------------------------------------------------------------------- RKNN (real compiler)
def _rknn() -> bool:
    from pixelfold.judges import env_available

    return env_available("rknn")


@pytest.mark.slow  # a minute: the RKNN env starts slowly; run by `make npu-test`
@pytest.mark.skipif(not _rknn(), reason="the RKNN env is not built (make npu-env)")
def test_rknn_places_the_rewritten_graph_on_the_npu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from pixelfold.judges import judge_file

    monkeypatch.setenv("PIXELFOLD_JUDGE_CACHE", str(tmp_path / "cache"))
    inits = [_w("w0", 8, 1, 5, 5), _w("w1", 8, 4, 9, 9), _w("w2", 9, 4, 3, 3)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c0", pads=[2, 2, 2, 2]),
             helper.make_node("ConvTranspose", ["a", "w1"], ["b"], name="up3", strides=[3, 3], pads=[3, 3, 3, 3]),
             helper.make_node("Conv", ["b", "w2"], ["c"], name="pre", pads=[1, 1, 1, 1]),
             helper.make_node("DepthToSpace", ["c"], ["y"], name="ps3", blocksize=3, mode="CRD")]
    m = _model(nodes, [1, 1, 32, 32], [1, 1, 288, 288], inits)
    new, rep = rewrite_onnx_for_target(m, "rk3588")
    assert {e.path: e.transform for e in rep.changed} == {"up3": "subpixel+lower4", "ps3": "dcr_flip+lower4"}
    onnx.save(m, str(tmp_path / "m.onnx"))
    onnx.save(new, str(tmp_path / "m.rk3588.onnx"))
    before, after = judge_file(tmp_path / "m.onnx", "rk3588"), judge_file(tmp_path / "m.rk3588.onnx", "rk3588")
    assert not before.crashed and not after.crashed, (before.message, after.message)
    assert set(before.cpu_ops) == {"exConvTransposePad", "DepthToSpace"}, before.summary()
    assert after.all_on_npu, after.summary()
