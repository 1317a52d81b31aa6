"""Layers that hide their function in forward (pixelfold.hidden) and merge by behaviour (pixelfold.probe).

Every form is checked against the original layer itself (timm's own StdConv2d, ScaledStdConv2d,
BlurPool2d, SpaceToDepth; PyTorch's convs) in float64, forward and backward (gradients w.r.t. the
input and the original parameters), over random specs with hypothesis.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import pixelfold
import pixelfold.hidden as H
from pixelfold import FoldError, merge, rewrite
from pixelfold import verify as V
from pixelfold.probe import focus_map, is_step, step_map

timm_layers = pytest.importorskip("timm.layers")

REL = 1e-9  # float64, relative to max(1, max |reference|)


def close(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= rel * scale, f"max |Δ| {err:.3g} > {rel * scale:.3g}"


def forward_backward(module: nn.Module, x: torch.Tensor, params: list[torch.Tensor], seed: int = 1):
    """Output and gradients w.r.t. the input and ``params`` for a fixed random output gradient."""
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    grads = torch.autograd.grad(y, [x, *params], g, allow_unused=True)
    return y.detach(), grads


def assert_same_function(orig: nn.Module, new: nn.Module, x: torch.Tensor) -> None:
    """Forward and backward (input and every trainable Parameter of the original) agree in float64."""
    params = [p for p in orig.parameters() if p.requires_grad]
    y0, g0 = forward_backward(orig, x, params)
    y1, g1 = forward_backward(new, x, params)
    close(y1, y0)
    for a, b in zip(g1, g0):
        assert (a is None) == (b is None)
        if a is not None:
            close(a, b)


# ---------------------------------------------------------------------------- the registry
def test_registry_matches_by_qualified_name_not_by_bare_name_or_subclass() -> None:
    assert H.lookup(timm_layers.StdConv2d(3, 8, 3)).qualname == "timm.layers.std_conv.StdConv2d"
    assert H.lookup(timm_layers.BlurPool2d(8)).shown == "timm.layers.BlurPool2d"
    assert H.lookup(nn.Conv2d(3, 8, 3)) is None

    class StdConv2d(nn.Conv2d):  # same bare name, not timm's
        pass

    class MyStd(timm_layers.StdConv2d):  # a subclass may change forward again
        pass

    assert H.lookup(StdConv2d(3, 8, 3)) is None and H.lookup(MyStd(3, 8, 3)) is None
    # the same class under another timm module path (older timm: timm.models.layers.std_conv) matches
    Old = type("StdConv2d", (timm_layers.StdConv2d,), {"__module__": "timm.models.layers.std_conv"})
    assert H.lookup(Old).qualname == "timm.layers.std_conv.StdConv2d"
    # every entry is importable by its qualified name where the package is installed (no stale keys)
    import importlib

    for name, entry in H.REGISTRY.items():
        module, _, cls = name.rpartition(".")
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        assert hasattr(mod, cls), name
        assert entry.build is None or name.startswith("timm."), name


# ---------------------------------------------------------------------------- StdConv2d / ScaledStdConv2d
@st.composite
def std_cases(draw):
    kind = draw(st.sampled_from(["StdConv2d", "ScaledStdConv2d", "StdConv2dSame", "ScaledStdConv2dSame"]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    k = draw(st.integers(1 if cin > groups else 2, 5))  # timm's own layer needs a fan-in > 1
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = draw(st.integers(1, 2))
    kw = dict(stride=s, dilation=d, groups=groups, bias=draw(st.booleans()), eps=draw(st.sampled_from([1e-6, 1e-8, 1e-3])))
    if kind.endswith("Same"):
        kw["padding"] = draw(st.sampled_from(["same", "valid", "SAME"]))
    else:
        kw["padding"] = draw(st.integers(0, 3))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    conv = getattr(timm_layers, kind)(cin, cout, k, **kw).double()
    if hasattr(conv, "gain"):
        with torch.no_grad():
            conv.gain.uniform_(0.3, 2.0)
    span = d * (k - 1) + 1
    # outputs of at least 5 (3 blocks of 2): the float64 backward of a size-1 conv output fails in PyTorch
    # ("slow_conv2d: grad_weight must be contiguous"), in pixelfold.fold of a plain conv too (a known issue)
    size = tuple(span + 4 * si + draw(st.integers(0, 5)) for si in s)
    x = torch.randn(2, cin, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    transform = draw(st.sampled_from(["fold", "polyphase"]))
    block = (s if transform == "fold" else (draw(st.integers(1, 2)), draw(st.integers(1, 2))))
    if transform == "fold" and draw(st.booleans()):  # a block dividing the stride, not always the stride
        block = tuple(draw(st.sampled_from([b for b in range(1, v + 1) if v % b == 0])) for v in s)
    return conv, x, transform, block


@given(std_cases())
def test_std_convs_fold_and_polyphase_exactly_forward_and_backward(case) -> None:
    conv, x, transform, block = case
    new = H.fold(conv, block) if transform == "fold" else H.polyphase(conv, block)
    assert isinstance(new, H.StdPhaseConv)
    assert_same_function(conv, new, x)
    # the original's Parameters (the same objects), the original's state_dict keys
    assert new.weight is conv.weight and new.bias is conv.bias
    if hasattr(conv, "gain"):
        assert new.gain is conv.gain
    assert list(new.state_dict()) == list(conv.state_dict())
    frozen = copy.deepcopy(new).freeze()
    with torch.no_grad():
        close(frozen(x), conv(x))


def test_std_conv_fold_trains_like_the_original() -> None:
    torch.manual_seed(0)
    conv = timm_layers.ScaledStdConv2d(4, 6, 3, stride=2, padding=1).double()
    twin = copy.deepcopy(conv)
    new = H.fold(twin, 2)
    x = torch.randn(2, 4, 11, 12, dtype=torch.float64)
    for module in (conv, new):
        opt = torch.optim.SGD(module.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            module(x).square().mean().backward()
            opt.step()
    for a, b in zip(conv.parameters(), twin.parameters()):
        close(b, a)
    with torch.no_grad():
        close(new(x), conv(x))
    # a checkpoint of the original loads into the folded layer (strict) and is used
    state = {k: v + 0.5 for k, v in conv.state_dict().items()}
    conv.load_state_dict(state)
    new.load_state_dict(state)
    with torch.no_grad():
        close(new(x), conv(x))


# ---------------------------------------------------------------------------- BlurPool2d
@st.composite
def blur_cases(draw):
    channels = draw(st.integers(1, 5))
    k = draw(st.integers(2, 5))
    s = draw(st.integers(1, 3))
    mode = draw(st.sampled_from(["reflect", "constant", "replicate", "circular"]))
    blur = timm_layers.BlurPool2d(channels, filt_size=k, stride=s, pad_mode=mode).double()
    pad = blur.padding[0]
    size = tuple(max(k, pad + 1) + 4 * s + draw(st.integers(0, 5)) for _ in range(2))  # outputs ≥ 5 (see above)
    x = torch.randn(2, channels, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    transform = draw(st.sampled_from(["fold", "polyphase"]))
    return blur, x, transform, draw(st.integers(1, 2))


@given(blur_cases())
def test_blurpool_folds_exactly_with_its_filter_kept_as_a_buffer(case) -> None:
    blur, x, transform, r = case
    new = H.fold(blur) if transform == "fold" else H.polyphase(blur, r)
    assert isinstance(new, H.BlurPhaseConv)
    assert_same_function(blur, new, x)
    assert new.filt is blur.filt and new.weight is blur.filt and "filt" in dict(new.named_buffers())
    assert list(new.state_dict()) == list(blur.state_dict()) == []
    assert not list(new.parameters())
    moved = copy.deepcopy(new).float()
    assert moved.filt.dtype == torch.float32
    close(moved(x.float()).double(), blur(x), rel=1e-5)


def test_blurpool_without_channels_is_refused_with_the_reason() -> None:
    blur = timm_layers.BlurPool2d(None, stride=2)
    with pytest.raises(FoldError) as info:
        H.fold(blur)
    assert str(info.value) == (
        "timm.layers.BlurPool2d is a fixed strided depthwise blur computed in forward (reflect padding), not an "
        "nn.ConvNd: not rewritten, it has channels=None (its filter is expanded to the input's channel count at run "
        "time); build it with channels=C, as timm's create_aa does")


# ---------------------------------------------------------------------------- rewrite
class HiddenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = timm_layers.StdConv2d(3, 8, 7, stride=2, padding=3, eps=1e-8)
        self.blur = timm_layers.BlurPool2d(8, stride=2)
        self.down = timm_layers.ScaledStdConv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.same = timm_layers.StdConv2dSame(16, 16, 3, stride=2)  # dynamic TF-"same"
        self.keep = timm_layers.StdConv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.keep(F.relu(self.same(F.relu(self.down(self.blur(F.relu(self.stem(x))))))))


def test_rewrite_no_stride_folds_the_hidden_layers_exactly() -> None:
    torch.manual_seed(0)
    net = HiddenNet().eval()
    x = torch.randn(2, 3, 45, 38)
    new, report = rewrite(net, "no_stride", example_inputs=x)
    st_ = [(e.path, e.status, e.transform) for e in report.entries]
    assert st_ == [("stem", "changed", "fold"), ("blur", "changed", "fold"), ("down", "changed", "fold"),
                   ("same", "skipped", "fold"), ("keep", "kept", "")], st_
    assert report.entries[3].reason == (
        "timm.layers.StdConv2dSame standardises its weight and pads TF-'same' in forward: not rewritten from "
        "attributes; add 'same_pad' to the profile (e.g. 'no_stride+same_pad') to fold it with per-input padding")
    assert report.ok
    assert set(new.state_dict()) == set(net.state_dict())
    for size in ((45, 38), (32, 32), (17, 23)):
        xs = torch.randn(1, 3, *size, dtype=torch.float64)
        assert V.compare_modules(net, new, xs) <= REL * 10
    new2, report2 = rewrite(net, "no_stride+same_pad", example_inputs=x)
    assert [e.status for e in report2.entries] == ["changed"] * 4 + ["kept"]
    assert isinstance(new2.same, H.StdPhaseConv) and new2.same.same_geometry is not None
    for size in ((45, 38), (32, 32), (17, 23)):
        assert V.compare_modules(net, new2, torch.randn(1, 3, *size)) <= 1e-8
    # without example inputs: checked on random inputs from the real (hidden) spec, BlurPool2d included
    _, report3 = rewrite(net, "no_stride")
    assert report3.ok and [e.checked_on.split(" ")[:2] for e in report3.changed] == [["float64:", "random"]] * 3


def test_rewrite_other_transforms_hooks_and_unfoldable_instances_get_reasons() -> None:
    conv = timm_layers.StdConv2d(4, 8, 3, stride=2, padding=2)
    _, report = rewrite(nn.Sequential(conv), pixelfold.Rule("to_depth"))
    assert report.entries[0].status == "skipped"
    assert report.entries[0].reason == (
        "timm.layers.StdConv2d standardises its weight in forward: 'to_depth' has no exact form for it; 'fold' and "
        "'polyphase' do (they compute it in forward from the original parameters)")
    hooked = timm_layers.StdConv2d(4, 8, 3, stride=2, padding=1)
    hooked.register_forward_hook(lambda m, a, out: out * 2)
    _, report = rewrite(nn.Sequential(hooked), "no_stride")
    assert report.entries[0].status == "skipped" and "forward hooks" in report.entries[0].reason
    _, report = rewrite(nn.Sequential(timm_layers.BlurPool2d(None, stride=2)), "no_stride")
    assert report.entries[0].status == "skipped" and "channels=None" in report.entries[0].reason
    _, report = rewrite(nn.Sequential(timm_layers.StdConv2d(4, 8, 3, stride=2), nn.PixelShuffle(1)),
                        "no_stride+no_transposed")
    assert report.entries[0].status == "changed"


def test_quantized_lazy_and_qat_convs_are_reported_with_what_they_are() -> None:
    import torch.ao.nn.qat as nnqat
    import torch.ao.nn.quantized as nnq

    qconv = nnq.Conv2d(3, 8, 3, stride=2)
    lazy = nn.LazyConv2d(8, 3, stride=2)
    qat = nnqat.Conv2d(3, 8, 3, stride=2, qconfig=torch.ao.quantization.get_default_qat_qconfig())
    net = nn.Sequential(qconv, lazy, qat, nnq.ConvTranspose2d(8, 8, 2, stride=2))
    _, report = rewrite(net, "no_stride+no_transposed")
    reasons = {e.path: (e.status, e.reason) for e in report.entries}
    assert reasons["0"] == ("skipped", "torch.ao.nn.quantized.Conv2d is a quantized conv (packed int8 weight, "
                            "quantized input and output): not rewritten from attributes; pixelfold rewrites float "
                            "convs: rewrite the float model first, then quantize it")
    assert reasons["1"] == ("skipped", "nn.LazyConv2d is not materialised yet (its weight is an UninitializedParameter):"
                            " not rewritten from attributes; run one forward pass first (it then becomes a plain "
                            "nn.Conv2d)")
    assert reasons["2"][0] == "skipped" and "fake-quantizes its weight in forward" in reasons["2"][1]
    assert reasons["3"][0] == "skipped" and "quantized transposed conv" in reasons["3"][1]
    # and the layer API says the same instead of "got Conv2d"
    with pytest.raises(FoldError) as info:
        pixelfold.fold(qconv, 2)
    assert str(info.value) == (
        "fold takes a float nn.Conv1d/2d/3d; torch.ao.nn.quantized.Conv2d is a quantized conv (packed int8 weight, "
        "quantized input and output): pixelfold rewrites float convs: rewrite the float model first, then quantize it")
    with pytest.raises(FoldError) as info:
        pixelfold.polyphase(lazy, 2)
    assert str(info.value) == (
        "polyphase takes a float nn.Conv1d/2d/3d; nn.LazyConv2d is not materialised yet (its weight is an "
        "UninitializedParameter): run one forward pass first (it then becomes a plain nn.Conv2d)")
    with pytest.raises(FoldError) as info:
        pixelfold.fold(timm_layers.StdConv2d(3, 8, 3, stride=2), 2)
    assert str(info.value) == (
        "fold takes a float nn.Conv1d/2d/3d; timm.layers.StdConv2d standardises its weight in forward, so its "
        "attributes do not describe it: pixelfold.hidden.fold(layer, block) builds its exact form (computed in "
        "forward from the layer's own parameters), and pixelfold.rewrite uses it")


# ---------------------------------------------------------------------------- merge by probe: Focus
def slices(x: torch.Tensor, order: list[tuple[int, int]], b: int = 2) -> torch.Tensor:
    return torch.cat([x[..., i::b, j::b] for i, j in order], 1)


class Focus(nn.Module):
    """YOLOv5's Focus by default; any phase order and block."""

    def __init__(self, c1: int = 3, c2: int = 8, k: int = 3, order=((0, 0), (1, 0), (0, 1), (1, 1)), b: int = 2,
                 groups: int = 1, wrap: bool = False, **conv) -> None:
        super().__init__()
        self.order, self.b = list(order), b
        inner = nn.Conv2d(c1 * b * b, c2, k, padding=conv.pop("padding", k // 2), groups=groups, **conv)
        if wrap:  # YOLOv5's Conv: conv + bn + act
            self.conv = nn.Sequential()
            self.conv.conv = inner
            self.conv.bn = nn.BatchNorm2d(c2)
            self.conv.act = nn.SiLU()
        else:
            self.conv = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(slices(x, self.order, self.b))


class Wrapper(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = conv, nn.BatchNorm2d(conv.out_channels), nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


def randomise_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)


def test_focus_in_any_slice_order_merges_exactly_and_the_module_is_untouched() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 18, dtype=torch.float64)
    orders = {"yolov5": [(0, 0), (1, 0), (0, 1), (1, 1)], "dcr": [(0, 0), (0, 1), (1, 0), (1, 1)],
              "scrambled": [(1, 1), (0, 1), (1, 0), (0, 0)]}
    for name, order in orders.items():
        focus = Focus(order=order).double().eval()
        before = copy.deepcopy(focus.state_dict())
        conv = focus.conv
        assert pixelfold.layers.is_focus(focus)
        m, unit = focus_map(focus)
        assert unit is conv and m.block == (2, 2)
        assert m.order == {"yolov5": "focus", "dcr": "dcr", "scrambled": None}[name]
        merged = merge(focus)
        assert type(merged) is nn.Conv2d and merged.kernel_size == (6, 6) and merged.stride == (2, 2)
        close(merged(x), focus(x))
        assert focus.conv is conv and focus.training is False and not conv._forward_hooks
        assert all(torch.equal(v, focus.state_dict()[k]) for k, v in before.items())
    # block 3, a wrapper (conv + bn + act), another name: recognised by what it does
    stem = Focus(order=[(i, j) for j in range(3) for i in range(3)], b=3, wrap=True).double()
    randomise_bn(stem)
    stem.eval()
    stem.__class__ = type("StemSlicer", (Focus,), {})
    merged = merge(stem)
    assert type(merged) is nn.Sequential and merged.conv.kernel_size == (9, 9) and merged.conv.stride == (3, 3)
    x3 = torch.randn(2, 3, 21, 24, dtype=torch.float64)
    close(merged.eval()(x3), stem(x3))


def test_rewrite_merges_a_focus_found_by_behaviour_even_without_example_inputs() -> None:
    torch.manual_seed(0)
    stem = Focus(order=[(i, j) for j in range(3) for i in range(3)], b=3)
    stem.__class__ = type("Stem", (Focus,), {})  # not named Focus, block 3
    net = nn.Sequential(stem, nn.ReLU())
    new, report = rewrite(net, pixelfold.Rule("merge"))  # checked on random inputs the probe derives
    assert [(e.path, e.status, e.checked_on.split(" ")[1]) for e in report.entries] == [("0", "changed", "random")], \
        str(report)
    assert type(new[0]) is nn.Conv2d and new[0].kernel_size == (9, 9)
    assert V.compare_modules(net, new, torch.randn(2, 3, 27, 30)) <= 1e-9


def test_grouped_focus_merges_exactly() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 14, dtype=torch.float64)
    for groups in (2, 4, 8, 16):
        focus = Focus(4, 16, groups=groups).double().eval()
        merged = merge(focus)
        close(merged(x), focus(x))
    # crd order keeps as many groups as the channels allow
    seq = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(16, 8, 3, padding=1, groups=4)).double()
    merged = merge(seq)
    assert merged.groups == 4
    close(merged(x), seq(x))


@pytest.mark.parametrize("forward, finding", [
    (lambda self, x: self.conv(torch.cat([x[..., ::2, ::2]] * 4, 1)),
     "it copies some pixels of a block twice and drops others"),
    (lambda self, x: self.conv(F.avg_pool2d(x, 2).repeat(1, 4, 1, 1)),
     "which is no input pixel of its block (values scaled, summed, shifted or padded)"),
    (lambda self, x: self.conv(slices(x, [(0, 0), (1, 0), (0, 1), (1, 1)]) * 2),
     "which is no input pixel of its block (values scaled, summed, shifted or padded)"),
    (lambda self, x: self.conv(slices(x, [(0, 0), (1, 0), (0, 1), (1, 1)])) + 1,
     "its forward does not return .conv's output unchanged"),
    (lambda self, x: self.conv(self.conv(slices(x, [(0, 0), (1, 0), (0, 1), (1, 1)]))[:, :12]),
     "its forward calls .conv 2 times"),
    (lambda self, x: self.conv(F.relu(slices(x, [(0, 0), (1, 0), (0, 1), (1, 1)]))),
     "it rearranges index-valued inputs as a space-to-depth but not random signed ones"),
    (lambda self, x: self.conv(slices(x.flip(0), [(0, 0), (1, 0), (0, 1), (1, 1)])),
     "it rearranges index-valued inputs as a space-to-depth but not random signed ones"),
    (lambda self, x: self.conv(slices(x, [(0, 0), (1, 0), (0, 1), (1, 1)] if x.shape[-1] < 40 else
                                      [(0, 0), (0, 1), (1, 0), (1, 1)])),
     "or inputs of another size and batch (a value-, size- or batch-dependent step)"),
])
def test_a_module_named_focus_that_does_something_else_is_refused(forward, finding) -> None:
    fake = type("Focus", (Focus,), {"forward": forward})(c2=12)
    assert not pixelfold.layers.is_focus(fake)
    with pytest.raises(FoldError) as info:
        merge(fake)
    text = str(info.value)
    assert text.startswith("Focus is not a space-to-depth followed by its .conv: ") and finding in text, text
    assert text.endswith("merge would change what it computes, so keep it as it is")
    # and rewrite leaves it alone (it used to merge it as YOLOv5's order, then fail verification)
    x = torch.randn(1, 3, 16, 16)
    new, report = rewrite(nn.Sequential(fake), pixelfold.Rule("merge"), example_inputs=x)
    assert [e.status for e in report.entries] == ["kept"] and new[0].__class__ is fake.__class__


def test_focus_like_module_with_state_outside_conv_or_residual_wrapper_is_refused() -> None:
    class WithNorm(Focus):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm2d(12)

        def forward(self, x):
            return self.conv(self.norm(slices(x, self.order)))

    with pytest.raises(FoldError, match="^WithNorm is not a Focus-style module: merge needs a .conv"):
        merge(WithNorm())

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(12, 12, 3, padding=1)

        def forward(self, x):
            return self.conv(x) + x

    with pytest.raises(FoldError) as info:
        merge(nn.PixelUnshuffle(2), Residual())
    assert str(info.value) == ("Residual uses its input other than through its .conv (e.g. a residual), so merging "
                               "the conv alone would change it; keep the pair as it is")


# ---------------------------------------------------------------------------- merge by probe: steps
def test_timm_space_to_depth_tresnet_stem_merges() -> None:
    torch.manual_seed(0)
    s2d = timm_layers.SpaceToDepth()
    assert is_step(s2d, nn.Conv2d(48, 8, 3)) and step_map(s2d, 48, 2).order == "dcr"
    stem = timm_layers.ConvNormAct(48, 16, 3, stride=1)
    randomise_bn(stem)
    seq = nn.Sequential(s2d, stem).double().eval()
    merged = merge(seq)
    assert type(merged) is timm_layers.ConvNormAct and merged.conv.kernel_size == (12, 12)
    assert merged.conv.stride == (4, 4) and merged.conv.in_channels == 3
    x = torch.randn(2, 3, 32, 40, dtype=torch.float64)
    close(merged.eval()(x), seq(x))
    # in a model (as in TResNet's body): rewrite merges the pair, the step becomes Identity
    net = nn.Sequential(timm_layers.SpaceToDepth(), timm_layers.ConvNormAct(48, 16, 3), nn.ReLU()).eval()
    randomise_bn(net)
    new, report = rewrite(net, pixelfold.Rule("merge"), example_inputs=torch.randn(1, 3, 32, 32))
    assert [(e.path, e.status) for e in report.entries] == [("0+1", "changed")], str(report)
    assert isinstance(new[0], nn.Identity) and new[1].conv.kernel_size == (12, 12)
    assert V.compare_modules(net, new, torch.randn(1, 3, 36, 28)) <= 1e-8


@st.composite
def step_cases(draw):
    dims = draw(st.sampled_from([1, 2, 2, 3]))
    block = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    C = draw(st.integers(1, 3))
    R = math.prod(block)
    perm = draw(st.permutations(list(range(C * R))))
    groups = draw(st.sampled_from([g for g in range(1, C * R + 1) if (C * R) % g == 0]))
    cout = groups * draw(st.integers(1, 2))
    k = draw(st.integers(1, 3))
    d = draw(st.integers(1, 2))
    stride = draw(st.integers(1, 2))
    mode = draw(st.sampled_from(["zeros", "zeros", "circular"]))
    pad = draw(st.sampled_from(["same", 0, 1])) if stride == 1 else draw(st.sampled_from([0, 1]))
    if mode == "circular" and pad == "same" and (d * (k - 1)) % 2:
        mode = "zeros"  # torch pads circular 'same' the same way, but keep the mix simple
    torch.manual_seed(draw(st.integers(0, 2**16)))
    conv = pixelfold.spec.CONV_TYPES[dims](C * R, cout, k, stride=stride, padding=pad, dilation=d, groups=groups,
                                           padding_mode=mode, bias=draw(st.booleans())).double()
    size = [b * (d * (k - 1) + 1 + draw(st.integers(0, 3))) for b in block]
    x = torch.randn(2, C, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return block, perm, conv, x


class PermutedS2D(nn.Module):
    def __init__(self, block, perm) -> None:
        super().__init__()
        self.block, self.perm = block, list(perm)

    def forward(self, x):
        return pixelfold.space_to_depth(x, self.block, "crd")[:, self.perm]


@given(step_cases())
def test_merge_any_step_order_groups_and_padding_against_the_pair(case) -> None:
    block, perm, conv, x = case
    pair = nn.Sequential(PermutedS2D(block, perm), conv)
    m = step_map(pair[0], conv.in_channels, len(block))
    assert m.block == block and list(m.perm) == perm
    rng = torch.random.get_rng_state()
    merged = merge(pair)
    assert torch.equal(torch.random.get_rng_state(), rng)  # merge does not advance the global RNG
    close(merged(x), pair(x))


@pytest.mark.parametrize("k, d", [(2, 1), (4, 1), (4, 2), (3, 1), (2, 3)])
def test_same_padding_with_even_kernels_in_merge_and_to_space(k, d) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 6, k, padding="same", dilation=d).double()
    x = torch.randn(2, 12, 7, 9, dtype=torch.float64)
    big = pixelfold.to_space(conv, 2)
    close(big(pixelfold.depth_to_space(x, 2)), conv(x))
    assert isinstance(big, nn.Sequential) == ((d * (k - 1)) % 2 == 1)
    pair = nn.Sequential(pixelfold.FocusSlice(), conv)
    x2 = torch.randn(2, 3, 14, 18, dtype=torch.float64)
    close(merge(pair)(x2), pair(x2))
    circ = nn.Conv2d(12, 6, k, padding="same", dilation=d, padding_mode="circular").double()
    close(pixelfold.to_space(circ, 2)(pixelfold.depth_to_space(x, 2)), circ(x))


# ---------------------------------------------------------------------------- merge messages
@pytest.mark.parametrize("build, message", [
    (lambda: merge(nn.Conv2d(3, 3, 3)),
     "merge takes nn.Sequential(space-to-depth step, conv), a Focus-style module (its forward is "
     "self.conv(space_to_depth(x)), e.g. YOLOv5's Focus), or (step, conv); got Conv2d"),
    (lambda: merge(nn.Sequential(pixelfold.FocusSlice(), nn.Conv2d(13, 8, 3))),
     "the step FocusSlice moves blocks of 4 pixels (block 2×2) into the channels, but the conv takes 13 input "
     "channels, not a multiple of 4: the pair does not run as given (a C-channel input needs a conv with C·4 input "
     "channels)"),
    (lambda: merge(nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(12, 8, 3))),
     "the step AvgPool2d is not a pure space-to-depth: it turns 1 channel(s) into 1 while shrinking the map by 2×2, "
     "so it does not keep every pixel; merge applies only to a step that moves whole blocks of pixels into "
     "channels, so keep the step and the conv as they are"),
    (lambda: merge(nn.Sequential(pixelfold.FocusSlice(), nn.Conv2d(12, 8, 3, padding=1, padding_mode="reflect"))),
     "merge cannot move padding_mode='reflect' onto the original input: the conv pads the rearranged map with whole "
     "blocks, which no padding of the input does; keep the pair as it is, or use padding_mode 'zeros' or 'circular'"),
    (lambda: merge(nn.Sequential(pixelfold.FocusSlice(), nn.ConvTranspose2d(12, 8, 3))),
     "merge takes a conv after the step, got ConvTranspose2d: a transposed conv after a space-to-depth has no "
     "single-conv form; keep the pair as it is"),
    (lambda: merge(nn.Sequential(pixelfold.FocusSlice(), timm_layers.StdConv2d(12, 8, 3))),
     "merge builds a plain conv with new weights; timm.layers.StdConv2d standardises its weight in forward: a plain "
     "conv cannot compute that in forward, so merge does not apply; keep the pair as it is (pixelfold.hidden.fold "
     "folds the layer alone)"),
    (lambda: merge(nn.Sequential(pixelfold.FocusSlice(), nn.LazyConv2d(8, 3))),
     "merge builds a plain conv with new weights; nn.LazyConv2d is not materialised yet (its weight is an "
     "UninitializedParameter): run one forward pass first (it then becomes a plain nn.Conv2d)"),
    (lambda: merge(nn.Sequential(pixelfold.FocusSlice(), nn.ReLU())),
     "merge needs a conv after the step, got ReLU: neither an nn.ConvNd nor a wrapper holding one as .conv (like "
     "YOLOv5's Conv or timm's ConvNormAct)"),
    (lambda: merge(nn.Sequential(pixelfold.FocusSlice(), torch.nn.utils.weight_norm(nn.Conv2d(12, 8, 3)))),
     "merge: Conv2d has torch.nn.utils.weight_norm (a hook that recomputes weight from weight_g and weight_v in "
     "forward, so .weight is stale): pixelfold would build from a stale weight and drop weight_g/weight_v; call "
     "torch.nn.utils.remove_weight_norm(module) first (it bakes the weight), and re-apply weight_norm to the "
     "result's weight if you still train with it; or keep the pair as it is"),
])
def test_merge_errors_point_to_what_applies(build, message) -> None:
    with pytest.raises(FoldError) as info:
        build()
    assert str(info.value) == message
