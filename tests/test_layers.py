"""Drop-in modules: fold, polyphase, subpixel, transposed, merge, icnr_ — against the NumPy reference."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import assert_close_np, dtype_tol, make_conv, make_convt, ref_conv, ref_conv_transpose, to_np
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import pixelfold
from pixelfold import ConvSpec, FoldError, fold, merge, polyphase, subpixel, transposed


# ---------------------------------------------------------------------------- strategies
@st.composite
def strided_convs(draw, foldable: bool):
    """Any conv (every padding mode, asymmetric 'same', dilation, groups) with an input of any size."""
    dims = draw(st.sampled_from([1, 2, 2, 3]))
    small = dims == 3
    if foldable:
        block = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(dims))
        stride = tuple(b * draw(st.integers(1, 2)) for b in block)
    else:
        block = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(dims))
        stride = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(dims))
    groups = draw(st.integers(1, 2))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3 if small else 5)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    if all(s == 1 for s in stride) and draw(st.booleans()):
        padding = "same"  # asymmetric for even spans
    else:
        padding = tuple(draw(st.integers(0, 3)) for _ in range(dims))
    order = draw(st.sampled_from(["crd", "dcr"])) if groups == 1 else "crd"
    conv = make_conv(dims, cin, cout, kernel, stride, padding, dilation, groups, draw(st.booleans()), mode,
                     seed=draw(st.integers(0, 999)))
    spec = ConvSpec.from_module(conv)
    size = []
    for sp, (lo, hi) in zip(spec.span, spec.padding):
        minimum = max(sp - lo - hi, lo + 1, hi + 1, 1)  # reflect needs pad < size
        size.append(minimum + draw(st.integers(0, 4 if small else 9)))
    x = torch.randn(draw(st.integers(1, 2)), cin, *size, dtype=torch.float64)
    return conv, x, block, order


@given(strided_convs(foldable=True))
def test_fold_matches_reference(case):
    conv, x, block, order = case
    m = fold(conv, block, order)
    expected = ref_conv(conv, x)
    assert_close_np(m(x), expected)
    assert all(s == s0 // b for s, s0, b in zip(m.inner.stride, conv.stride, block))
    assert_close_np(m.freeze()(x), expected)


@given(strided_convs(foldable=False))
def test_polyphase_matches_reference(case):
    conv, x, block, order = case
    m = polyphase(conv, block, order)
    assert all(s == 1 for s in m.inner.stride)
    assert_close_np(m(x), ref_conv(conv, x))


@st.composite
def transposed_convs(draw):
    dims = draw(st.sampled_from([1, 2, 2, 3]))
    small = dims == 3
    stride = tuple(draw(st.integers(1, 2 if small else 4)) for _ in range(dims))
    kernel = tuple(draw(st.integers(1, 3 if small else 6)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding = tuple(draw(st.integers(0, (d * (k - 1)) // 2 + 1)) for k, d in zip(kernel, dilation))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    groups = draw(st.integers(1, 2))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    m = make_convt(dims, cin, cout, kernel, stride, padding, output_padding, dilation, groups,
                   draw(st.booleans()), seed=draw(st.integers(0, 999)))
    spec = ConvSpec.from_module(m)
    size = []
    for s, sp, (p, _), op in zip(stride, spec.span, spec.padding, output_padding):
        L = draw(st.integers(1, 4 if small else 7))
        while (L - 1) * s - 2 * p + sp + op < 1:
            L += 1
        size.append(L)
    x = torch.randn(draw(st.integers(1, 2)), cin, *size, dtype=torch.float64)
    form = draw(st.sampled_from(["shared", "phases"]))
    order = draw(st.sampled_from(["crd", "dcr"])) if form == "shared" and groups == 1 else "crd"
    return m, x, form, order


@given(transposed_convs())
def test_subpixel_matches_reference(case):
    m, x, form, order = case
    sp = subpixel(m, form, order)
    expected = ref_conv_transpose(m, x)
    assert_close_np(sp(x), expected)
    assert_close_np(sp.freeze()(x), expected)


@given(transposed_convs())
def test_transposed_inverts_subpixel(case):
    m, x, form, order = case
    back = transposed(subpixel(m, form, order))
    assert ConvSpec.from_module(back) == ConvSpec.from_module(m)
    assert_close_np(back(x), ref_conv_transpose(m, x))


@st.composite
def conv_then_shuffle(draw):
    dims = draw(st.sampled_from([1, 2, 2, 3]))
    block = tuple(draw(st.integers(1, 3 if dims < 3 else 2)) for _ in range(dims))
    R = math.prod(block)
    groups = draw(st.integers(1, 2))
    order = draw(st.sampled_from(["crd", "dcr"])) if groups == 1 else "crd"
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(dims))
    padding = tuple(draw(st.integers(0, k - 1)) for k in kernel)
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2)) * R
    bias = draw(st.booleans())
    conv = make_conv(dims, cin, cout, kernel, 1, padding, 1, groups, bias, seed=draw(st.integers(0, 999)))
    if bias:  # a transposed conv has one bias per channel: make the phases share it
        with torch.no_grad():
            b = torch.randn(cout // R, dtype=torch.float64)
            conv.bias.copy_(pixelfold.transforms.phase_bias(b, block, order))
    shuffle = nn.PixelShuffle(block[0]) if dims == 2 and order == "crd" and block[0] == block[1] \
        else pixelfold.DepthToSpace(block, order)
    size = tuple(k + draw(st.integers(0, 4)) for k in kernel)
    return nn.Sequential(conv, shuffle), torch.randn(2, cin, *size, dtype=torch.float64)


@given(conv_then_shuffle())
def test_transposed_of_conv_and_shuffle(case):
    seq, x = case
    t = transposed(seq)
    assert isinstance(t, nn.modules.conv._ConvTransposeNd)
    expected = seq(x)
    np.testing.assert_allclose(to_np(t(x)), to_np(expected), atol=1e-10)
    assert_close_np(ref_conv_transpose(t, x), to_np(expected))


@st.composite
def s2d_then_conv(draw):
    dims = draw(st.sampled_from([1, 2, 2, 3]))
    block = tuple(draw(st.integers(1, 3 if dims < 3 else 2)) for _ in range(dims))
    order = draw(st.sampled_from(["crd", "dcr", "focus"]))
    R = math.prod(block)
    c = draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding = tuple(draw(st.integers(0, 1)) for _ in range(dims))
    conv = make_conv(dims, c * R, draw(st.integers(1, 3)), kernel, stride, padding, seed=draw(st.integers(0, 999)))
    if dims == 2 and order == "crd" and block[0] == block[1] and draw(st.booleans()):
        step: nn.Module = nn.PixelUnshuffle(block[0])
    else:
        step = pixelfold.SpaceToDepth(block, order)
    size = tuple(b * (k + draw(st.integers(0, 3))) for b, k in zip(block, kernel))
    return nn.Sequential(step, conv), torch.randn(2, c, *size, dtype=torch.float64)


@given(s2d_then_conv())
def test_merge_matches_sequence(case):
    seq, x = case
    merged = merge(seq)
    assert type(merged) is type(seq[1])
    np.testing.assert_allclose(to_np(merged(x)), to_np(seq(x)), atol=1e-10)
    assert_close_np(ref_conv(merged, x), to_np(seq(x)))


# ---------------------------------------------------------------------------- known cases from practice
def test_resnet50_stem_folds_to_4x4_on_12_channels():
    stem = make_conv(2, 3, 64, 7, stride=2, padding=3, bias=False)
    m = fold(stem, 2)
    assert str(m.inner) == "Conv2d 12→64 k4×4 s1×1 p0×0 ".strip() or m.inner.kernel == (4, 4)
    assert m.inner.in_channels == 12 and m.inner.kernel == (4, 4) and m.inner.stride == (1, 1)
    for size in [(224, 224), (225, 223), (17, 18)]:
        x = torch.randn(1, 3, *size, dtype=torch.float64)
        assert_close_np(m(x), ref_conv(stem, x))


def test_yolov5_focus_is_6x6_stride2_conv():
    class Conv(nn.Module):  # YOLOv5's Conv: conv + bn + act
        def __init__(self, c1, c2, k):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, 1, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Focus(nn.Module):
        def __init__(self, c1, c2, k=3):
            super().__init__()
            self.conv = Conv(c1 * 4, c2, k)

        def forward(self, x):
            return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))

    torch.manual_seed(0)
    focus = Focus(3, 32).double().eval()
    merged = merge(focus).eval()
    assert merged.conv.kernel_size == (6, 6) and merged.conv.stride == (2, 2) and merged.conv.padding == (2, 2)
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    np.testing.assert_allclose(to_np(merged(x)), to_np(focus(x)), atol=1e-10)
    # W6[:, c, 2u+i, 2v+j] = Wf[:, (2j+i)·C + c, u, v]
    Wf, W6 = focus.conv.conv.weight, merged.conv.weight
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(W6[:, c, i::2, j::2], Wf[:, (2 * j + i) * 3 + c])


def test_convtranspose_4_2_1_is_3x3_conv_plus_pixel_shuffle():
    up = make_convt(2, 16, 8, 4, 2, 1)
    sp = subpixel(up)
    assert sp.inner.kernel == (3, 3) and sp.inner.padding == ((1, 1), (1, 1)) and sp.inner.out_channels == 32
    conv = nn.Conv2d(16, 32, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(sp.transformed_weight())
        conv.bias.copy_(sp.transformed_bias())
    seq = nn.Sequential(conv, nn.PixelShuffle(2))
    x = torch.randn(1, 16, 9, 7, dtype=torch.float64)
    assert_close_np(seq(x), ref_conv_transpose(up, x))
    # ... and back, with the structural zero taps trimmed
    back = transposed(seq)
    assert back.kernel_size == (4, 4) and back.padding == (1, 1)
    np.testing.assert_allclose(to_np(back.weight), to_np(up.weight), atol=0)
    # MACs: shared window holds zero taps, the phase form does not
    macs_t = up.in_channels * up.out_channels * 16
    assert sp.macs_per_position == pytest.approx(2.25 * macs_t)
    assert subpixel(up, "phases").macs_per_position == macs_t


def test_vit_patch_embedding_is_1x1_conv_after_space_to_depth():
    patch = make_conv(2, 3, 24, 16, stride=16)
    m = fold(patch, 16)
    assert m.inner.kernel == (1, 1) and m.inner.in_channels == 768
    x = torch.randn(1, 3, 64, 48, dtype=torch.float64)
    assert_close_np(m(x), ref_conv(patch, x))


def test_seed_stride_one_kernel_via_polyphase():
    big = make_conv(2, 1, 1, 48, bias=False)
    m = polyphase(big, 16)
    assert str(m.inner) == "Conv2d 256→256 k4×4 s1×1 p0×0"
    x = torch.randn(1, 1, 70, 66, dtype=torch.float64)
    np.testing.assert_allclose(to_np(m(x)), to_np(big(x)), atol=1e-10)


# ---------------------------------------------------------------------------- module behaviour
def _fresh(module):
    return copy.deepcopy(module)


@pytest.mark.parametrize("kind", ["fold", "polyphase", "subpixel_shared", "subpixel_phases"])
def test_training_gradients_identical(kind):
    torch.manual_seed(0)
    if kind.startswith("subpixel"):
        orig = make_convt(2, 4, 3, 4, 2, 1)
        m = subpixel(_fresh(orig), kind.split("_")[1])
        x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    else:
        orig = make_conv(2, 4, 3, 5, stride=2, padding=2, padding_mode="reflect")
        m = (fold if kind == "fold" else polyphase)(_fresh(orig), 2)
        x = torch.randn(2, 4, 11, 9, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    g = torch.randn_like(orig(x))
    (orig(x1) * g).sum().backward()
    (m(x2) * g).sum().backward()
    np.testing.assert_allclose(to_np(x2.grad), to_np(x1.grad), atol=1e-10)
    np.testing.assert_allclose(to_np(m.weight.grad), to_np(orig.weight.grad), atol=1e-10)
    np.testing.assert_allclose(to_np(m.bias.grad), to_np(orig.bias.grad), atol=1e-10)


def test_module_shares_parameters_and_state_dict_round_trips():
    conv = make_conv(2, 3, 8, 3, stride=2, padding=1)
    m = fold(conv, 2)
    assert m.weight is conv.weight and m.bias is conv.bias
    assert set(m.state_dict()) == {"weight", "bias"}
    other = make_conv(2, 3, 8, 3, stride=2, padding=1, seed=5)
    m.load_state_dict(other.state_dict())
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    np.testing.assert_allclose(to_np(m(x)), to_np(other(x)), atol=1e-12)
    fresh = make_conv(2, 3, 8, 3, stride=2, padding=1, seed=9)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.weight, other.weight)


def test_freeze_bakes_and_follows_in_place_weight_changes():
    conv = make_conv(2, 3, 8, 3, stride=2, padding=1)
    m = fold(conv, 2).freeze().eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    baked = m.frozen_weight
    np.testing.assert_allclose(to_np(m(x)), to_np(conv(x)), atol=1e-12)
    assert m.frozen_weight is baked  # nothing changed: the baked weight is used as it is
    with torch.no_grad():
        conv.weight.mul_(2)  # what an optimizer step does: an in-place change of the shared Parameter
    np.testing.assert_allclose(to_np(m(x)), to_np(conv(x)), atol=1e-12)  # re-baked, not stale
    m.unfreeze()
    np.testing.assert_allclose(to_np(m(x)), to_np(conv(x)), atol=1e-12)
    assert "Conv2d 12→8" in repr(m) and "original: Conv2d 3→8 k3×3 s2×2 p1×1" in repr(m)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_and_channels_last_preserved(dtype):
    conv = make_conv(2, 8, 8, 3, stride=2, padding=1, dtype=dtype)
    m = fold(conv, 2)
    x = torch.randn(2, 8, 16, 16).to(dtype).to(memory_format=torch.channels_last)
    out = m(x)
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    expected = ref_conv(conv, x)
    np.testing.assert_allclose(to_np(out), expected, atol=4 * dtype_tol(dtype, float(np.abs(expected).max())))
    up = subpixel(make_convt(2, 8, 8, 4, 2, 1, dtype=dtype))
    out = up(x)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)


def test_icnr_groups_phases_in_the_order_used():
    conv = nn.Conv2d(4, 3 * 4, 3, padding=1)
    pixelfold.icnr_(conv.weight, 2)
    w = conv.weight.view(3, 4, 4, 3, 3)
    assert all(torch.equal(w[:, k], w[:, 0]) for k in range(4))
    x = torch.randn(1, 4, 5, 5)
    out = F.pixel_shuffle(F.conv2d(x, conv.weight, padding=1), 2)
    # no checkerboard: every 2×2 block is constant (nearest-neighbour upsampling of a conv)
    assert torch.allclose(out[..., ::2, ::2], out[..., 1::2, 1::2])
    assert torch.allclose(out[..., ::2, ::2], out[..., ::2, 1::2])
    w_dcr = nn.Conv2d(4, 12, 3).weight
    pixelfold.icnr_(w_dcr, 2, order="dcr")
    assert torch.equal(w_dcr[0], w_dcr[3]) and torch.equal(w_dcr[0], w_dcr[6])
    out = pixelfold.depth_to_space(F.conv2d(x, w_dcr, padding=1), 2, "dcr")
    assert torch.allclose(out[..., ::2, ::2], out[..., 1::2, 1::2])


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: fold(make_conv(2, 1, 1, 3, stride=3), 2), "stride 3 is not divisible by block 2"),
        (lambda: fold(make_conv(2, 2, 2, 3, stride=2, groups=2), 2, "dcr"), "use order='crd'"),
        (lambda: subpixel(make_conv(2, 1, 1, 3)), "nn.ConvTranspose1d/2d/3d"),
        (lambda: subpixel(make_convt(2, 1, 1, 3), "fast"), "form 'fast'"),
        (lambda: subpixel(make_convt(2, 1, 1, 3), "phases", "dcr"), "order applies only"),
        (lambda: subpixel(make_convt(2, 2, 2, 3, 2, groups=2), "shared", "dcr"), "use order='crd'"),
        (lambda: transposed(nn.Sequential(make_conv(2, 1, 4, 3, stride=2), nn.PixelShuffle(2))),
         "stride 1 and dilation 1, got stride (2, 2), dilation (1, 1): no single transposed conv equals it; keep the conv"),
        (lambda: transposed(nn.Sequential(make_conv(2, 1, 4, 3, padding=3), nn.PixelShuffle(2))),
         "at most kernel-1 = 2; keep the conv + depth_to_space"),
        (lambda: transposed(nn.Sequential(make_conv(2, 1, 4, 3), nn.PixelShuffle(2))),
         "bias differs"),
        (lambda: transposed(nn.Sequential(make_conv(2, 1, 6, 3), nn.PixelShuffle(2))),
         "out_channels 6 is not divisible by prod(block) * groups = 4; pass the block of the depth_to_space"),
        (lambda: transposed(make_conv(2, 1, 4, 3)), "takes a SubpixelConvTranspose"),
        (lambda: pixelfold.depth_to_space(torch.zeros(1, 6, 2, 2), 2), "got 6 channels; use a block whose product divides 6"),
        (lambda: merge(make_conv(2, 4, 1, 3)), "merge takes"),
        (lambda: merge(nn.Sequential(nn.ReLU(), make_conv(2, 4, 1, 3))), "the step ReLU is not a pure space-to-depth"),
        (lambda: pixelfold.icnr_(torch.empty(6, 1, 3, 3), 2),
         "not divisible by prod(block) = 4; pass the block"),
        (lambda: fold(make_conv(2, 1, 1, 5, stride=2), 2)(torch.zeros(1, 1, 3, 3, dtype=torch.float64)),
         "too small for Conv2d 1→1 k5×5 s2×2 p0×0 (output would be (0, 0)); the original conv rejects it too"),
        # (rank 3 is an unbatched (C, H, W) input, as for nn.Conv2d; rank 2 is neither)
        (lambda: fold(make_conv(2, 1, 1, 3, stride=2), 2)(torch.zeros(1, 8, dtype=torch.float64)), "rank 4"),
    ],
)
def test_errors(build, message):
    with pytest.raises(FoldError) as info:
        build()
    assert message in str(info.value)


def test_transposed_trims_zero_taps_only_within_padding():
    # Zero outer taps but padding k-1: the transposed conv has padding 0, so nothing may be trimmed.
    conv = make_conv(1, 2, 4, 3, padding=2, bias=False)
    with torch.no_grad():
        conv.weight[..., 0] = 0
        conv.weight[..., 2] = 0
    seq = nn.Sequential(conv, pixelfold.DepthToSpace(2))
    x = torch.randn(1, 2, 5, dtype=torch.float64)
    for trim in (True, False):
        t = transposed(seq, trim=trim)
        assert t.padding == (0,) and t.kernel_size == (6,)
        np.testing.assert_allclose(to_np(t(x)), to_np(seq(x)), atol=1e-12)


@given(st.sampled_from([1, 2, 3]), st.integers(1, 4), st.integers(0, 3), st.booleans())
def test_patch_linear_matches_reference(dims, k, extra, bias):
    conv = make_conv(dims, 3, 5, k, stride=k, bias=bias)
    x = torch.randn(2, 3, *[k * 2 + extra] * dims, dtype=torch.float64)
    for order in ("crd", "dcr"):
        m = pixelfold.PatchLinear(conv, order)
        assert_close_np(m(x), ref_conv(conv, x))
        assert_close_np(m.freeze()(x), ref_conv(conv, x))


def test_patch_linear_refuses_overlapping_kernels():
    with pytest.raises(FoldError, match="kernel == stride"):
        pixelfold.PatchLinear(make_conv(2, 3, 5, 4, stride=2))
    with pytest.raises(FoldError, match="order"):
        pixelfold.PatchLinear(make_conv(2, 3, 5, 4, stride=4), order="focus")


# ---------------------------------------------------------------------------- larger shapes: PyTorch's conv as reference
@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: fold(make_conv(2, 32, 64, 3, stride=2, padding=1, padding_mode="reflect"), 2), (2, 32, 67, 61)),
        (lambda: fold(make_conv(3, 3, 16, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3)), (1, 2, 2)),
         (1, 3, 8, 56, 56)),
        (lambda: polyphase(make_conv(2, 16, 16, 5, stride=3, padding=2, dilation=2, groups=4), 2), (2, 16, 50, 47)),
        (lambda: subpixel(make_convt(2, 32, 16, 4, 2, 1), "shared"), (2, 32, 33, 30)),
        (lambda: subpixel(make_convt(2, 32, 16, (3, 5), (3, 2), (1, 2), (2, 1), groups=2), "phases"),
         (2, 32, 21, 30)),
        (lambda: fold(make_conv(1, 64, 64, 9, stride=4, padding=4), 4), (2, 64, 1001)),
    ],
)
def test_larger_shapes_match_pytorch(make, shape):
    m = make()
    original = m.to_transposed() if isinstance(m, pixelfold.SubpixelConvTranspose) else make_conv_like(m)
    x = torch.randn(*shape, dtype=torch.float64)
    expected = original(x)
    out = m(x)
    assert out.shape == expected.shape
    np.testing.assert_allclose(to_np(out), to_np(expected), atol=1e-11)


def make_conv_like(m: pixelfold.PhaseConv) -> nn.Module:
    conv = m.spec.module_type()(**m.spec.module_kwargs()).double()
    conv.weight, conv.bias = m.weight, m.bias
    return conv


def test_fold_reads_only_the_phases_the_kernel_touches():
    down = make_conv(2, 8, 16, 1, stride=2)  # ResNet's 1×1/2 downsample: one phase of four is read
    m = fold(down, 2)
    assert m.live_phases == [(0, 0)] and m.inner.in_channels == 8
    x = torch.randn(2, 8, 15, 14, dtype=torch.float64)
    assert_close_np(m(x), ref_conv(down, x))
    wide = make_conv(2, 2, 3, (1, 3), stride=(3, 2), padding=(0, 1))
    m = fold(wide, (3, 2))
    assert m.live_phases == [(0, 0), (0, 1)]
    x = torch.randn(1, 2, 10, 9, dtype=torch.float64)
    assert_close_np(m(x), ref_conv(wide, x))


def test_modules_expose_the_original_conv_attributes():
    conv = make_conv(2, 3, 8, 3, stride=2, padding=1, dilation=1)
    m = fold(conv, 2)
    assert (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.groups) == \
        (3, 8, (3, 3), (2, 2), (1, 1), 1)
    up = subpixel(make_convt(2, 4, 2, 3, 2, 1, output_padding=1))
    assert up.transposed and up.output_padding == (1, 1) and up.out_channels == 2


@pytest.mark.parametrize("form", ["shared", "phases"])
def test_subpixel_takes_output_size_like_conv_transpose(form):
    up = make_convt(2, 4, 2, 3, (2, 3), 1)
    sp = subpixel(up, form)
    x = torch.randn(1, 4, 5, 4, dtype=torch.float64)
    for size in ([9, 10], [10, 11], [1, 2, 10, 12]):
        np.testing.assert_allclose(to_np(sp(x, output_size=size)), to_np(up(x, output_size=size)), atol=1e-12)
    with pytest.raises(FoldError, match="not between 9 and 10"):
        sp(x, output_size=[11, 10])


def test_transposed_of_subpixel_shares_parameters():
    up = make_convt(2, 4, 2, 4, 2, 1)
    back = transposed(subpixel(up))
    assert back.weight is up.weight and back.bias is up.bias
