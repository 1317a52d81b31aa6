"""pixelfold modules stay exact under converters at sizes other than the example (issue 9 item 7).

TorchScript tracing, the TorchScript ONNX exporter, the dynamo ONNX exporter with dynamic shapes and
OpenVINO's ``convert_model`` all record the size arithmetic of ``forward``; each is run at several
sizes and compared with the original layer.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import pixelfold as pf
from pixelfold.samepad import SamePadPhaseConv


def _same_ref(conv: nn.Conv2d):
    """timm's Conv2dSame computed directly (pad_same, then the padding-free conv)."""
    from pixelfold.hidden import tf_same_padding

    def f(x):
        pads = tf_same_padding(x.shape[2:], conv.kernel_size, conv.stride, conv.dilation)
        x = nn.functional.pad(x, [v for lo, hi in reversed(pads) for v in (lo, hi)])
        return nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
    return f


def _cases():
    torch.manual_seed(0)
    c1 = nn.Conv1d(1, 1, 1)
    c2 = nn.Conv2d(3, 8, 3, padding=1)
    c3 = nn.Conv2d(3, 8, 4, stride=2, padding=2)
    c4 = nn.Conv2d(3, 8, 3, stride=2, padding=1, padding_mode="reflect")
    c5 = nn.Conv2d(3, 8, 3, stride=2, bias=False)
    c6 = nn.Conv2d(3, 8, 1, stride=3, bias=False)
    ct = nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1)
    pl = nn.Conv2d(3, 8, 4, stride=4)
    sizes2 = [(15, 13), (8, 8), (9, 11), (16, 17)]
    return {
        "polyphase-1d": (pf.polyphase(c1, 2), c1, (1, 1, 5), [(1, 1, n) for n in (5, 4, 7, 8, 11)]),
        "polyphase": (pf.polyphase(c2, 2), c2, (1, 3, 15, 13), [(1, 3, *s) for s in sizes2]),
        "fold-k4s2p2": (pf.fold(c3, 2), c3, (1, 3, 15, 13), [(1, 3, *s) for s in sizes2]),
        "fold-reflect": (pf.fold(c4, 2), c4, (1, 3, 15, 13), [(1, 3, *s) for s in sizes2]),
        "samepad": (SamePadPhaseConv(c5, 2), _same_ref(c5), (1, 3, 9, 10), [(1, 3, *s) for s in sizes2]),
        "samepad-k1s3": (SamePadPhaseConv(c6, 3), _same_ref(c6), (1, 3, 9, 10), [(1, 3, *s) for s in sizes2]),
        "subpixel-shared": (pf.subpixel(ct), ct, (1, 3, 5, 6), [(1, 3, *s) for s in ((5, 6), (4, 4), (7, 9))]),
        "subpixel-phases": (pf.subpixel(ct, "phases"), ct, (1, 3, 5, 6), [(1, 3, *s) for s in ((5, 6), (4, 4), (7, 9))]),
        "patch-linear": (pf.PatchLinear(pl), pl, (1, 3, 16, 18), [(1, 3, *s) for s in ((16, 18), (9, 13), (20, 8))]),
        "space-to-depth": (pf.SpaceToDepth(2), nn.PixelUnshuffle(2), (1, 3, 8, 6), [(1, 3, *s) for s in ((8, 6), (4, 10))]),
    }


CASES = _cases()


def _check(name, run):
    module, ref, _, sizes = CASES[name]
    for shape in sizes:
        x = torch.randn(shape)
        with torch.no_grad():
            want = ref(x)
            got = run(x)
        assert tuple(got.shape) == tuple(want.shape), (name, shape)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{name} at {shape}")


@pytest.mark.parametrize("name", list(CASES))
def test_torchscript_trace_is_exact_at_other_sizes(name):
    module, _, example, _ = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.eval(), torch.randn(example))
    _check(name, traced)


@pytest.mark.parametrize("name", list(CASES))
def test_torch_export_dynamic_hw_at_other_sizes(name):
    module, _, example, _ = CASES[name]
    dims = {i: torch.export.Dim(f"d{i}", min=4, max=64) for i in range(2, len(example))}
    if name == "space-to-depth":  # the rearrangement itself needs sizes divisible by the block
        dims = {i: 2 * torch.export.Dim(f"d{i}", min=2, max=32) for i in range(2, len(example))}
    if name == "patch-linear":  # as for the original conv: torch.export refuses an output of size 1 in the range
        dims = {i: torch.export.Dim(f"d{i}", min=8, max=64) for i in range(2, len(example))}
    program = torch.export.export(module.eval(), (torch.randn(example),), dynamic_shapes=(dims,))
    _check(name, program.module())


@pytest.mark.parametrize("name", list(CASES))
def test_torchscript_onnx_dynamic_axes_at_other_sizes(tmp_path, name):
    ort = pytest.importorskip("onnxruntime")
    module, _, example, _ = CASES[name]
    axes = {i: f"d{i}" for i in range(2, len(example))}
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(example),), path, dynamo=False, opset_version=13,
                          input_names=["x"], dynamic_axes={"x": axes})
    sess = ort.InferenceSession(path)
    _check(name, lambda x: torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]))


@pytest.mark.parametrize("name", list(CASES))
def test_dynamo_onnx_dynamic_shapes_at_other_sizes(tmp_path, name):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    module, _, example, _ = CASES[name]
    dims = {i: torch.export.Dim(f"d{i}", min=4, max=64) for i in range(2, len(example))}
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(example),), path, dynamo=True, dynamic_shapes=(dims,),
                          verbose=False)
    sess = ort.InferenceSession(path)
    name_in = sess.get_inputs()[0].name
    _check(name, lambda x: torch.from_numpy(sess.run(None, {name_in: x.numpy()})[0]))


#: OpenVINO's CPU plugin runs in bf16 by default on CPUs with AVX512-BF16/AMX (errors ~3e-3): ask for f32
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


@pytest.mark.parametrize("name", list(CASES))
def test_openvino_convert_model_at_other_sizes(name):
    ov = pytest.importorskip("openvino")
    module, _, example, _ = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = ov.compile_model(ov.convert_model(module.eval(), example_input=torch.randn(example)), "CPU", F32)
    _check(name, lambda x: torch.from_numpy(compiled(x.numpy())[0]))


def test_openvino_issue_reproducer_keeps_the_size():
    ov = pytest.importorskip("openvino")
    m = pf.polyphase(nn.Conv2d(3, 8, 3, padding=1), 2).eval()
    x = torch.randn(1, 3, 15, 13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = ov.compile_model(ov.convert_model(m, example_input=x), "CPU", F32)
    assert tuple(compiled(x.numpy())[0].shape) == (1, 8, 15, 13)


def test_torchscript_export_output_dims_do_not_alias(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from pixelfold.export import to_onnx

    for module, shape in ((pf.fold(nn.Conv2d(3, 8, 3, stride=2, padding=1), 2), (1, 3, 16, 16)),
                          (pf.polyphase(nn.Conv2d(3, 8, 3, padding=1), 2), (1, 3, 15, 13))):
        path = to_onnx(module, torch.randn(shape), tmp_path / "m.onnx", opset=13, input_names=["x"],
                       dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
        (out,) = onnx.load(str(path)).graph.output
        params = [d.dim_param for d in out.type.tensor_type.shape.dim if d.dim_param]
        assert len(params) == len(set(params)) and len(params) >= 3, params


# ---------------------------------------------------------------------------- target-aware export (issue 10 item 4)
def _max_rank(path) -> int:
    onnx = pytest.importorskip("onnx")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    ranks = [len(v.type.tensor_type.shape.dim) for v in [*g.value_info, *g.input, *g.output]]
    return max(ranks)


@pytest.mark.parametrize("target, style", [(None, None), ("onnxruntime", "native"), ("ethos-u55-128", "rank4"),
                                           ("rk3588", "rank4_nchw")])
@pytest.mark.parametrize("order", ["dcr", "crd"])
def test_to_onnx_target_lowering(tmp_path, target, style, order):
    pytest.importorskip("onnxruntime")
    from pixelfold import targets
    from pixelfold.export import count_ops, to_onnx

    if target is not None:
        assert targets.get(target).lowering == style
    model = nn.Sequential(pf.fold(nn.Conv2d(3, 8, 3, stride=2, padding=1), 2, order=order),
                          nn.Conv2d(8, 16, 1), pf.DepthToSpace(2, order))
    path = to_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", target=target)  # checked exact in ORT
    ops = count_ops(path)
    if style in (None, "native"):
        assert ops.get("DepthToSpace") == 1
        assert ops.get("SpaceToDepth", 0) == (1 if order == "dcr" else 0)
    else:
        assert "SpaceToDepth" not in ops and "DepthToSpace" not in ops
        assert ops["Transpose"] >= 2 and _max_rank(path) <= 4


def test_to_onnx_target_reshape6_and_object(tmp_path):
    pytest.importorskip("onnxruntime")
    from pixelfold.export import count_ops, to_onnx

    class Target:
        lowering = "reshape6"

    model = pf.fold(nn.Conv2d(3, 8, 3, stride=2, padding=1), 2, order="dcr")
    path = to_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", target=Target())
    assert "SpaceToDepth" not in count_ops(path) and _max_rank(path) == 6
    with pytest.raises(pf.FoldError, match="target must be a target name or a pixelfold.targets target, got int"):
        to_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", target=3)


# ---------------------------------------------------------------------------- opset 28: SpaceToDepth(mode="CRD")
@pytest.mark.parametrize("opset, native", [(18, False), (28, True)])
def test_crd_space_to_depth_is_native_from_opset_28(tmp_path, opset, native):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    from pixelfold.export import count_ops, to_onnx

    model = pf.fold(nn.Conv2d(3, 8, 3, stride=2, padding=1), 2)  # crd, the default
    x = torch.randn(1, 3, 16, 14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = to_onnx(model, x, tmp_path / "m.onnx", opset=opset)  # checked exact in onnxruntime
    ops = count_ops(path)
    assert ("SpaceToDepth" in ops) == native and ("Transpose" in ops) != native
    if native:
        (node,) = [n for n in onnx.load(str(path)).graph.node if n.op_type == "SpaceToDepth"]
        assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["mode"] == b"CRD"
        name = onnx.load(str(path)).graph.input[0].name
        (got,) = ReferenceEvaluator(str(path)).run(None, {name: x.numpy()})  # ONNX's own semantics of the op
        torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), rtol=1e-5, atol=1e-5)
