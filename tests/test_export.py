"""ONNX export of pixelfold modules: onnxruntime round trips, native SpaceToDepth/DepthToSpace, dcr vs crd.

Every ``to_onnx`` call below also checks the file against PyTorch inside
``to_onnx`` (``check=True``); the tests compare once more on a *fresh*
input, so a graph that only reproduces the example would fail.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import pixelfold
from pixelfold import FoldError, rearrange
from pixelfold.export import check_onnx, count_ops, onnx_native_ops, to_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

NATIVE = {"SpaceToDepth", "DepthToSpace"}
SHUFFLE = {"Reshape", "Transpose"}


def run_ort(path, *inputs: torch.Tensor) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: np.ascontiguousarray(t.detach().numpy()) for i, t in zip(sess.get_inputs(), inputs)}
    return sess.run(None, feed)


def assert_matches(model: nn.Module, path, x: torch.Tensor, rtol: float = 1e-5) -> None:
    """onnxruntime on a fresh input equals PyTorch within ``rtol`` of the output's scale."""
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    (got,) = run_ort(path, x)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= rtol * np.abs(ref).max()


def mode_of(path, op_type: str) -> list[str]:
    model = onnx.load(str(path))
    return [a.s.decode() for n in model.graph.node if n.op_type == op_type for a in n.attribute if a.name == "mode"]


# ---------------------------------------------------------------------------- module zoo
def _fold2d(order: str) -> nn.Module:
    return pixelfold.fold(nn.Conv2d(3, 8, 3, stride=2, padding=1), 2, order=order)


def _poly2d(order: str) -> nn.Module:
    return pixelfold.polyphase(nn.Conv2d(3, 4, 5, padding=2), 2, order=order)


def _sub2d(order: str) -> nn.Module:
    return pixelfold.subpixel(nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1), order=order)


# (id, factory, input shape, ops that must appear (op -> count), ops that must not)
CASES: list[tuple[str, Callable[[], nn.Module], tuple[int, ...], dict[str, int], set[str]]] = [
    ("fold2d-dcr", lambda: _fold2d("dcr"), (1, 3, 15, 16), {"SpaceToDepth": 1, "Conv": 1}, SHUFFLE | {"GatherND"}),
    ("fold2d-crd", lambda: _fold2d("crd"), (1, 3, 15, 16), {"Transpose": 1, "Conv": 1}, NATIVE),
    ("poly2d-dcr", lambda: _poly2d("dcr"), (1, 3, 12, 12), {"SpaceToDepth": 1, "DepthToSpace": 1}, SHUFFLE),
    ("poly2d-crd", lambda: _poly2d("crd"), (1, 3, 12, 12), {"DepthToSpace": 1, "Transpose": 1}, {"SpaceToDepth"}),
    ("sub2d-dcr", lambda: _sub2d("dcr"), (1, 4, 6, 5), {"DepthToSpace": 1, "Conv": 1}, SHUFFLE),
    ("sub2d-crd", lambda: _sub2d("crd"), (1, 4, 6, 5), {"DepthToSpace": 1, "Conv": 1}, SHUFFLE),
    ("sub2d-phases", lambda: pixelfold.subpixel(nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1), "phases"),
     (1, 4, 5, 6), {"Conv": 4, "DepthToSpace": 1}, {"ConvTranspose", "Transpose"}),
    ("sub1d-phases", lambda: pixelfold.subpixel(nn.ConvTranspose1d(4, 3, 5, stride=3, padding=1), "phases"),
     (1, 4, 7), {"Conv": 3}, NATIVE | {"ConvTranspose"}),
    ("fold1d-reflect", lambda: pixelfold.fold(nn.Conv1d(3, 4, 3, stride=2, padding=1, padding_mode="reflect"), 2),
     (2, 3, 17), {"Conv": 1, "Pad": 2}, NATIVE),
    ("fold3d-dcr", lambda: pixelfold.fold(nn.Conv3d(2, 4, 3, stride=2, padding=1), 2, order="dcr"),
     (1, 2, 6, 7, 8), {"Conv": 1, "Transpose": 1}, NATIVE),
    ("sub3d", lambda: pixelfold.subpixel(nn.ConvTranspose3d(2, 2, 4, stride=2, padding=1)),
     (1, 2, 3, 3, 3), {"Conv": 1, "Transpose": 1}, NATIVE),
]


@pytest.mark.parametrize("name,factory,shape,present,absent", CASES, ids=[c[0] for c in CASES])
def test_roundtrip_and_ops(tmp_path, name, factory, shape, present, absent):
    torch.manual_seed(0)
    model = factory()
    path = to_onnx(model, torch.randn(shape), tmp_path / f"{name}.onnx")
    assert path.exists() and onnx.load(str(path)).opset_import[0].version == 18
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # self-contained: no external .data file
    ops = count_ops(path)
    for op, count in present.items():
        assert ops.get(op, 0) == count, (op, ops)
    assert not absent & set(ops), ops
    assert not any(op.startswith("pixelfold::") for op in ops)
    if "DepthToSpace" in ops:  # the mode follows the module's channel order
        assert mode_of(path, "DepthToSpace") == ["CRD" if name.endswith(("crd", "phases")) else "DCR"]
    assert_matches(model, path, torch.randn(shape))


class Rearrangements(nn.Module):
    """Several inputs and outputs: the rearrangements ONNX has no single op for, and one it has."""

    def __init__(self) -> None:
        super().__init__()
        self.s2d3d = pixelfold.SpaceToDepth(2)
        self.d2s1d = pixelfold.DepthToSpace(3, "dcr")
        self.rect = pixelfold.SpaceToDepth((1, 2), "dcr")
        self.focus = pixelfold.FocusSlice()
        self.d2s2d = pixelfold.DepthToSpace(2, "crd")

    def forward(self, a, b, c, d):
        return self.s2d3d(a), self.d2s1d(b), self.rect(c), self.focus(d), self.d2s2d(d)


def test_rearrangements_without_native_op(tmp_path):
    model = Rearrangements()
    shapes = [(1, 2, 4, 6, 4), (1, 6, 5), (1, 3, 4, 6), (1, 12, 8, 8)]
    path = to_onnx(model, tuple(torch.randn(s) for s in shapes), tmp_path / "r.onnx")
    # 1-D, 3-D, a rectangular block and the focus order: Reshape/Transpose/Reshape each; crd 2-D: DepthToSpace
    assert count_ops(path) == {"DepthToSpace": 1, "Reshape": 8, "Transpose": 4}
    inputs = [torch.randn(s) for s in shapes]
    for got, ref in zip(run_ort(path, *inputs), model(*inputs)):
        assert np.array_equal(got, ref.numpy())


class PlainConvs(nn.Module):
    """The plain convs that to_space / to_depth / merge / transposed return, side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.space = pixelfold.to_space(nn.Conv2d(16, 2, 3, padding=1), 4)
        self.depth = pixelfold.to_depth(nn.Conv2d(1, 2, 8, stride=4, padding=4), 4)
        self.merged = pixelfold.merge(nn.Sequential(pixelfold.FocusSlice(), nn.Conv2d(12, 8, 3, padding=1)))
        self.up = pixelfold.transposed(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.PixelShuffle(2)))

    def forward(self, a, b, c, d):
        return self.space(a), self.depth(b), self.merged(c), self.up(d)


def test_plain_convs(tmp_path):
    torch.manual_seed(0)
    model = PlainConvs()
    shapes = [(1, 1, 16, 12), (1, 16, 4, 5), (1, 3, 8, 10), (1, 8, 5, 5)]
    path = to_onnx(model, tuple(torch.randn(s) for s in shapes), tmp_path / "c.onnx")
    assert count_ops(path) == {"Conv": 3, "ConvTranspose": 1}
    inputs = [torch.randn(s) for s in shapes]
    with torch.no_grad():
        for got, ref in zip(run_ort(path, *inputs), model(*inputs)):
            assert np.abs(got - ref.numpy()).max() <= 1e-5 * np.abs(ref.numpy()).max()


def test_native_rearrange_off_keeps_reshape_transpose(tmp_path):
    model = _poly2d("dcr")
    path = to_onnx(model, torch.randn(1, 3, 12, 12), tmp_path / "m.onnx", native_rearrange=False)
    ops = count_ops(path)
    assert not NATIVE & set(ops)
    assert ops["Transpose"] == 2 and ops["Reshape"] == 4
    assert_matches(model, path, torch.randn(1, 3, 12, 12))


def test_unfrozen_module_is_exported_frozen_and_restored(tmp_path):
    model = _fold2d("dcr").train()
    weight = model.weight
    path = to_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx")
    assert "GatherND" not in count_ops(path)
    # the module is as it was: training, unfrozen, no baked buffers, same Parameter
    assert model.training and not model.frozen and model.weight is weight
    assert "frozen_weight" not in dict(model.named_buffers())
    # freeze=False keeps the runtime gather of the original weight
    path = to_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "g.onnx", freeze=False)
    assert count_ops(path).get("GatherND", 0) >= 1
    assert_matches(model, path, torch.randn(1, 3, 16, 16))


def test_eval_mode_for_export_train_mode_restored(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(_fold2d("dcr"), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                          pixelfold.subpixel(nn.ConvTranspose2d(8, 3, 4, stride=2, padding=1), order="dcr").freeze())
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "exporting in training mode" warning
        path = to_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx")
    assert all(m.training for m in model.modules())
    assert not model[0].frozen and model[4].frozen and "frozen_weight" in dict(model[4].named_buffers())
    ops = count_ops(path)
    assert ops["SpaceToDepth"] == 1 and ops["DepthToSpace"] == 1 and ops["Conv"] == 2
    assert_matches(model, path, torch.randn(1, 3, 16, 16))


# ---------------------------------------------------------------------------- channels_last
def test_channels_last_input(tmp_path):
    model = _fold2d("dcr")
    x = torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last)
    path = to_onnx(model, x, tmp_path / "m.onnx")
    assert count_ops(path) == {"Conv": 1, "Pad": 1, "SpaceToDepth": 1}
    assert_matches(model, path, torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last))


@pytest.mark.parametrize("opset", [18, 17])
def test_channels_last_model(tmp_path, opset):
    """Inside a channels_last model the rearrangements see channels_last tensors (a movedim path)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), pixelfold.SpaceToDepth(2), nn.Conv2d(16, 4, 1),
                          pixelfold.DepthToSpace(2, "dcr"))
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 8, 8)
    # (opset 17 goes through the TorchScript exporter, which mis-writes a negative movedim as Transpose perm=[0,-1,1,2];
    # the rearrangements use non-negative dims so that both exporters see a valid permutation)
    path = to_onnx(model, x, tmp_path / "m.onnx", opset=opset)
    assert "DepthToSpace" in count_ops(path)
    assert_matches(model, path, torch.randn(1, 3, 8, 8))


# ---------------------------------------------------------------------------- exporters and opsets
@pytest.mark.parametrize("opset", [13, 17])
def test_torchscript_exporter_for_old_opsets(tmp_path, opset):
    model = _poly2d("dcr")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = to_onnx(model, torch.randn(1, 3, 12, 12), tmp_path / "m.onnx", opset=opset)
    # the exporter's deprecation notice and tracer warnings are expected (static shapes) and filtered
    assert not [w for w in caught if "TorchScript" in str(w.message) or issubclass(w.category, torch.jit.TracerWarning)]
    assert onnx.load(str(path)).opset_import[0].version == opset
    ops = count_ops(path)
    # native rearrangements; the traced size arithmetic (exact at every size, see test_converters) adds
    # Shape/Gather/Pad nodes, and each Pad with computed amounts reorders them with one Transpose
    assert ops["SpaceToDepth"] == 1 and ops["DepthToSpace"] == 1 and ops.get("Transpose", 0) <= ops.get("Pad", 0)
    assert_matches(model, path, torch.randn(1, 3, 12, 12))


def test_torchscript_exporter_without_native_ops(tmp_path):
    model = _sub2d("crd")
    path = to_onnx(model, torch.randn(1, 4, 5, 5), tmp_path / "m.onnx", opset=17, native_rearrange=False)
    assert not NATIVE & set(count_ops(path))
    assert_matches(model, path, torch.randn(1, 4, 5, 5))


def test_newer_opset(tmp_path):
    model = _fold2d("dcr")
    path = to_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", opset=20)
    assert onnx.load(str(path)).opset_import[0].version == 20
    assert count_ops(path)["SpaceToDepth"] == 1


def test_dynamo_below_18_refuses_to_hand_back_another_opset(tmp_path):
    with pytest.warns(UserWarning, match="down-converts"), pytest.raises(FoldError, match="opset 18, not 17"):
        to_onnx(_fold2d("dcr"), torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", opset=17, dynamo=True)
    assert not (tmp_path / "m.onnx").exists()


def test_dynamic_shapes(tmp_path):
    model = _fold2d("dcr")
    dims = torch.export.Dim("batch"), torch.export.Dim("h", min=2, max=256), torch.export.Dim("w", min=2, max=256)
    path = to_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx",
                   dynamic_shapes=({0: dims[0], 2: 2 * dims[1], 3: 2 * dims[2]},))
    assert count_ops(path) == {"Conv": 1, "Pad": 1, "SpaceToDepth": 1}
    assert_matches(model, path, torch.randn(3, 3, 12, 20))


# ---------------------------------------------------------------------------- errors and checks
@pytest.mark.parametrize("opset", [12, 18.0, True])
def test_bad_opset(tmp_path, opset):
    with pytest.raises(FoldError, match="opset"):
        to_onnx(_fold2d("dcr"), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", opset=opset)


def test_not_a_module(tmp_path):
    with pytest.raises(FoldError, match="nn.Module"):
        to_onnx(lambda x: x, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")  # type: ignore[arg-type]


_CALLS = [0]


class Drifting(nn.Module):
    """Returns a different result on every call: what the trace saw is not what eager computes later.

    (The counter lives outside the module: torch.export restores module attributes after tracing.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _CALLS[0] += 1
        return pixelfold.space_to_depth(x, 2, "dcr") * float(_CALLS[0] + 1)


def test_mismatch_raises_and_removes_file(tmp_path):
    for opset in (18, 17):
        with pytest.raises(FoldError, match="differs from PyTorch"):
            to_onnx(Drifting(), torch.randn(1, 1, 4, 4), tmp_path / "m.onnx", opset=opset)
        assert not (tmp_path / "m.onnx").exists()
    path = to_onnx(Drifting(), torch.randn(1, 1, 4, 4), tmp_path / "m.onnx", opset=17, check=False)
    assert {"Mul", "SpaceToDepth"} <= set(count_ops(path))


def test_check_onnx_tolerance_and_outputs(tmp_path):
    model = nn.Conv2d(2, 3, 3)
    x = torch.randn(1, 2, 6, 6)
    path = to_onnx(model, x, tmp_path / "m.onnx", opset=17)
    assert check_onnx(model, x, path) < 1e-5
    with torch.no_grad():
        model.bias.add_(1e-3)
    with pytest.raises(FoldError, match="differs"):
        check_onnx(model, x, path)
    assert check_onnx(model, x, path, rtol=0, atol=2e-3) < 1e-2
    with pytest.raises(FoldError, match="inputs"):
        check_onnx(model, (x, x), path)


# ---------------------------------------------------------------------------- the pieces
def test_onnx_native_ops_routes_and_restores():
    originals = (rearrange.space_to_depth, rearrange.depth_to_space, pixelfold.space_to_depth)
    x = torch.randn(2, 3, 4, 6)
    cases = [(x, 2, "dcr"), (x, 2, "crd"), (x, 2, "focus"), (x, (1, 2), "dcr"), (torch.randn(1, 2, 6), 3, "dcr")]
    expected = [(rearrange.space_to_depth(*c), rearrange.depth_to_space(rearrange.space_to_depth(*c), *c[1:]))
                for c in cases]
    with onnx_native_ops():
        assert rearrange.space_to_depth is not originals[0] and pixelfold.space_to_depth is not originals[2]
        got = [(pixelfold.space_to_depth(*c), pixelfold.depth_to_space(pixelfold.space_to_depth(*c), *c[1:]))
               for c in cases]
        with pytest.raises(FoldError, match="divisible"):
            pixelfold.space_to_depth(torch.randn(1, 1, 5, 5), 2, "dcr")
    assert (rearrange.space_to_depth, rearrange.depth_to_space, pixelfold.space_to_depth) == originals
    for (e1, e2), (g1, g2) in zip(expected, got, strict=True):
        assert torch.equal(e1, g1) and torch.equal(e2, g2)
    with pytest.raises(RuntimeError), onnx_native_ops():
        raise RuntimeError
    assert (rearrange.space_to_depth, rearrange.depth_to_space, pixelfold.space_to_depth) == originals


def test_custom_ops_gradients():
    with onnx_native_ops():
        pass  # registers the ops
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: torch.ops.pixelfold.space_to_depth(t, 2), (x,))
    y = torch.randn(1, 8, 2, 3, dtype=torch.float64, requires_grad=True)
    for mode in ("DCR", "CRD"):
        assert torch.autograd.gradcheck(lambda t, mode=mode: torch.ops.pixelfold.depth_to_space(t, 2, mode), (y,))
        assert torch.equal(torch.ops.pixelfold.depth_to_space(y, 2, mode), rearrange.depth_to_space(y, 2, mode.lower()))


def test_count_ops_subgraphs_and_domains():
    h = onnx.helper
    branch = h.make_graph([h.make_node("Neg", ["x"], ["z"]), h.make_node("Abs", ["z"], ["y"])], "b", [],
                          [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    nodes = [h.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch),
             h.make_node("Gelu", ["y"], ["w"], domain="com.microsoft")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
                                      h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                         [h.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [1])])
    assert count_ops(h.make_model(graph)) == {"Abs": 2, "If": 1, "Neg": 2, "com.microsoft::Gelu": 1}
    with pytest.raises(FoldError):
        count_ops(42)


# ---------------------------------------------------------------------------- dynamic shapes, atomic writes
class _SizeBranch(nn.Module):
    """A Python branch on the input size: an export with dynamic shapes bakes in the example's branch."""

    def forward(self, x):
        return x * 2 if x.shape[2] > 8 else x


def test_dynamic_shapes_are_checked_at_other_sizes(tmp_path):
    h = torch.export.Dim("h", min=2, max=64)
    with pytest.raises(FoldError, match=r"right at the example but not at input shapes \[\(1, 3, 8, 8\)\]"):
        to_onnx(_SizeBranch(), torch.randn(1, 3, 9, 8), tmp_path / "m.onnx", dynamic_shapes=({2: h},))
    assert not (tmp_path / "m.onnx").exists()


def test_dynamic_axes_torchscript_are_checked_at_other_sizes(tmp_path):
    with pytest.raises(FoldError, match="not at input shapes"):
        to_onnx(_SizeBranch(), torch.randn(1, 3, 9, 8), tmp_path / "m.onnx", opset=13, input_names=["x"],
                dynamic_axes={"x": {2: "h"}})


def test_dynamic_polyphase_export_is_exact_at_other_sizes(tmp_path):
    model = pixelfold.polyphase(nn.Conv2d(3, 8, 3, padding=1), 2)
    h, w = torch.export.Dim("h", min=4, max=64), torch.export.Dim("w", min=4, max=64)
    path = to_onnx(model, torch.randn(1, 3, 15, 13), tmp_path / "m.onnx", dynamic_shapes=({2: h, 3: w},))
    assert_matches(model, path, torch.randn(1, 3, 8, 11))


def test_failing_export_keeps_an_existing_file(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous model")
    with pytest.raises(FoldError):
        to_onnx(_SizeBranch(), torch.randn(1, 3, 9, 8), target, dynamic_shapes=({2: torch.export.Dim("h")},))
    assert target.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary left behind
