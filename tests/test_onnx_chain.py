"""pixelfold.onnx: rewrites chain within one pass of ``rewrite_onnx`` (the nodes a rewrite makes are offered to the
other transforms of the list), each chained rewrite verified and reported on its own, never applied to its own
output, never undoing an earlier rewrite of its chain, and bounded."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pixelfold.onnx import api, verify  # noqa: E402
from pixelfold.onnx.api import rewrite_onnx  # noqa: E402
from pixelfold.onnx.patterns import PATTERNS  # noqa: E402


def _model(op, w_shape, x_shape, name="n", **kw):
    """x -> one ``op`` (Conv / ConvTranspose, random weight and bias ``w_shape[1 if ConvTranspose else 0]``) -> y."""
    rng = np.random.default_rng(0)
    o = w_shape[1] * kw.get("group", 1) if op == "ConvTranspose" else w_shape[0]
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "b")]
    gr = helper.make_graph([helper.make_node(op, ["x", "w", "b"], ["y"], name=name, **kw)], "g",
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(m, strict_mode=True)


def _convt(**kw):
    return _model("ConvTranspose", [4, 3, 4, 4], [1, 4, 5, 7], name="up", strides=[2, 2], pads=[1, 1, 1, 1], **kw)


def _conv(**kw):
    return _model("Conv", [4, 3, 3, 3], [1, 3, 8, 10], name="c", strides=[2, 2], pads=[1, 1, 1, 1], **kw)


def _ops(m):
    return [n.op_type for n in m.graph.node]


def _exact(before, after):
    onnx.checker.check_model(after, full_check=True)
    err, scale = verify.max_error(before, after, seed=5)
    assert err <= 1e-5 * max(scale, 1.0), (err, scale)


def test_subpixel_then_lower4_leaves_no_depth_to_space():
    m = _convt()
    new, rep = rewrite_onnx(m, ("subpixel", "lower4"))
    assert "DepthToSpace" not in _ops(new) and "ConvTranspose" not in _ops(new), _ops(new)
    assert [(e.status, e.transform) for e in rep.entries] == [("changed", "subpixel"), ("changed", "lower4")]
    d2s = rep.entries[1]
    assert d2s.type == "DepthToSpace" and d2s.path.startswith("up_D2S")  # the made node's own name
    assert d2s.note == "created by subpixel of up" and d2s.max_error <= d2s.tolerance
    assert rep.end_to_end_error <= rep.end_to_end_tolerance
    _exact(m, new)


def test_fold_then_lower4_leaves_no_space_to_depth():
    m = _conv()
    new, rep = rewrite_onnx(m, ("fold", "lower4"))
    assert "SpaceToDepth" not in _ops(new), _ops(new)
    assert _ops(new) == ["Pad", "Reshape", "Transpose", "Reshape", "Transpose", "Reshape", "Conv"]
    assert [(e.status, e.transform, e.note) for e in rep.entries] == [
        ("changed", "fold", ""), ("changed", "lower4", "created by fold of c")]
    _exact(m, new)


def test_three_rewrites_chain_through_combined_profiles():
    """--profile no_transposed_crd+dcr_only+rank4: subpixel_crd, then dcr_flip on its CRD DepthToSpace (taking its
    Conv too), then lower4 on the DCR one (the solver's dcr_flip+lower4, here asked for by name)."""
    from pixelfold.onnx.cli import transforms_for

    m = _convt()
    new, rep = rewrite_onnx(m, transforms_for("no_transposed_crd+dcr_only+rank4"))
    assert [(e.type, e.status, e.transform) for e in rep.entries] == [
        ("ConvTranspose", "changed", "subpixel_crd"), ("DepthToSpace", "changed", "dcr_flip"),
        ("DepthToSpace", "changed", "lower4")]
    assert rep.entries[2].note.startswith("created by dcr_flip of up_D2S_pf0 (created by subpixel_crd of up)")
    assert _ops(new) == ["Conv", "Reshape", "Transpose", "Reshape", "Transpose", "Reshape"]
    _exact(m, new)


def test_the_order_of_the_list_stays_the_priority():
    """A made SpaceToDepth is offered to the other transforms in list order: onehot_s2d before lower4 would make
    a strided Conv that fold rewrites (an undo: vetoed), so lower4 takes it."""
    new, rep = rewrite_onnx(_conv(), ("fold", "onehot_s2d", "lower4"))
    assert [e.transform for e in rep.changed] == ["fold", "lower4"]
    assert "SpaceToDepth" not in _ops(new)


def test_a_transform_is_never_applied_to_its_own_output():
    """polyphase2 makes a stride-1 Conv that polyphase2 applies to: it is not offered again (lower4 lowers the
    SpaceToDepth and DepthToSpace around it); polyphase4 would polyphase it, making a Conv polyphase2 rewrites."""
    m = _model("Conv", [4, 3, 3, 3], [1, 3, 8, 8], name="c", pads=[1, 1, 1, 1])
    new, rep = rewrite_onnx(m, ("polyphase2", "lower4"))
    assert _ops(new).count("Conv") == 1 and not {"SpaceToDepth", "DepthToSpace"} & set(_ops(new)), _ops(new)
    assert [(e.type, e.transform) for e in rep.entries] == [
        ("Conv", "polyphase2"), ("SpaceToDepth", "lower4"), ("DepthToSpace", "lower4")]
    _exact(m, new)
    new, rep = rewrite_onnx(m, ("polyphase2",))
    assert _ops(new) == ["Pad", "SpaceToDepth", "Conv", "DepthToSpace"] and len(rep.entries) == 1
    new, rep = rewrite_onnx(m, ("polyphase2", "polyphase4"))
    assert _ops(new) == ["Pad", "SpaceToDepth", "Conv", "DepthToSpace"]
    assert [e.status for e in rep.entries] == ["changed", "skipped"]
    assert "polyphase4 would make a Conv" in rep.entries[1].reason and "polyphase2" in rep.entries[1].reason


def test_no_round_trip():
    """subpixel's DepthToSpace is not turned back into a ConvTranspose by transposed (nor onehot_d2s): said."""
    new, rep = rewrite_onnx(_convt(), ("subpixel", "transposed", "onehot_d2s"))
    assert _ops(new) == ["Conv", "DepthToSpace"]
    assert [e.status for e in rep.entries] == ["changed", "skipped"]
    assert "that subpixel, earlier in this chain, rewrites (a round trip" in rep.entries[1].reason
    assert rep.entries[1].note == "created by subpixel of up"


def _bad(monkeypatch, name, build):
    monkeypatch.setitem(PATTERNS, name, dataclasses.replace(PATTERNS[name], build=build))


def test_a_wrong_chained_rewrite_is_reverted_the_first_stays(monkeypatch):
    """lower4 fed the DepthToSpace with its mode swapped (DCR lowered as CRD): caught, reverted, subpixel kept."""
    good = PATTERNS["lower4"].build

    def swapped(model, idx, shapes):
        node = model.graph.node[idx]
        mode = next(a for a in node.attribute if a.name == "mode")
        mode.s = b"CRD" if mode.s == b"DCR" else b"DCR"
        return good(model, idx, shapes)

    _bad(monkeypatch, "lower4", swapped)
    m = _convt()
    new, rep = rewrite_onnx(m, ("subpixel", "lower4"))
    assert [(e.status, e.transform) for e in rep.entries] == [("changed", "subpixel"), ("failed", "lower4")]
    assert rep.entries[1].max_error > 0.1 and "reverted" in rep.entries[1].reason
    assert _ops(new) == ["Conv", "DepthToSpace"]
    assert rep.end_to_end_error <= rep.end_to_end_tolerance and not rep.ok  # a failed entry: not ok
    _exact(m, new)


def test_a_chained_builder_that_raises_is_reverted(monkeypatch):
    def boom(model, idx, shapes):
        raise RuntimeError("builder crashed")

    _bad(monkeypatch, "lower4", boom)
    new, rep = rewrite_onnx(_conv(), ("fold", "lower4"))
    assert [(e.status, e.transform) for e in rep.changed] == [("changed", "fold")]
    assert rep.failed[0].reason == "lower4: RuntimeError: builder crashed"
    assert _ops(new) == ["Pad", "SpaceToDepth", "Conv"]


def test_the_work_list_is_bounded(monkeypatch):
    monkeypatch.setattr(api, "CHAIN_LIMIT", 1)
    new, rep = rewrite_onnx(_model("Conv", [4, 3, 3, 3], [1, 3, 8, 8], name="c"), ("polyphase2", "lower4"))
    assert [(e.type, e.status) for e in rep.entries] == [
        ("Conv", "changed"), ("SpaceToDepth", "changed"), ("DepthToSpace", "skipped")]
    assert rep.entries[2].reason == "not chained: 1 chained rewrites of c were tried (the bound)"
    assert _ops(new)[-1] == "DepthToSpace"


def test_unnamed_nodes_are_each_rewritten():
    """An unnamed node was found by its index, which shifts with each splice: the second Conv was missed."""
    rng = np.random.default_rng(1)
    w = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), f"w{i}")
         for i, s in enumerate([(4, 3, 3, 3), (2, 4, 3, 3)])]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["t", "w1"], ["y"], strides=[2, 2])]
    gr = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], w)
    m = onnx.shape_inference.infer_shapes(helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)]))
    new, rep = rewrite_onnx(m, ("fold",))
    assert [(e.path, e.status) for e in rep.entries] == [("node0", "changed"), ("node1", "changed")]
    assert _ops(new).count("SpaceToDepth") == 2, _ops(new)
    _exact(m, new)


def test_cli_profiles_chain(tmp_path, capsys):
    from pixelfold import cli

    src, out = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(_convt(), src)
    assert cli.main(["rewrite", str(src), "--profile", "no_transposed+rank4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "created by subpixel of up" in printed and "2 changed" in printed
    assert not {"ConvTranspose", "DepthToSpace"} & set(_ops(onnx.load(out)))
