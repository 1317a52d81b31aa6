"""The seed equivalence: to_space / to_depth against the NumPy reference, PyTorch, and each other."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import assert_close_np, dtype_tol, make_conv, ref_conv, to_np
from hypothesis import given
from hypothesis import strategies as st

import pixelfold
from pixelfold import ConvSpec, FoldError, depth_to_space, space_to_depth, to_depth, to_space
from pixelfold import transforms as T


@st.composite
def space_cases(draw, force_crd: bool = False):
    """A conv on a depth map (C*R channels) and a depth-map input."""
    dims = draw(st.sampled_from([1, 2, 2, 3]))
    block = tuple(draw(st.integers(1, 3 if dims < 3 else 2)) for _ in range(dims))
    R = math.prod(block)
    order = "crd" if force_crd else draw(st.sampled_from(["crd", "dcr", "focus"]))
    groups = draw(st.integers(1, 3)) if order == "crd" else 1
    c = draw(st.integers(1, 2))
    cin = groups * c * R
    cout = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    mode = draw(st.sampled_from(["zeros", "zeros", "circular"]))
    pad_kind = draw(st.sampled_from(["int", "tuple", "valid", "same"]))
    if pad_kind == "same":
        stride = (1,) * dims
        padding = "same"
        if any(d * (k - 1) % 2 for k, d in zip(kernel, dilation)):  # asymmetric: no nn.Conv expresses it
            padding = "valid"
    else:
        stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
        padding = {"int": draw(st.integers(0, 2)), "tuple": tuple(draw(st.integers(0, 2)) for _ in range(dims)),
                   "valid": "valid"}[pad_kind]
    conv = make_conv(dims, cin, cout, kernel, stride, padding, dilation, groups, draw(st.booleans()), mode,
                     seed=draw(st.integers(0, 1000)))
    span = ConvSpec.from_module(conv).span
    size = tuple(max(sp, 2 * p) + draw(st.integers(0, {1: 8, 2: 4, 3: 2}[dims])) for sp, p in
                 zip(span, [max(lo, hi) for lo, hi in ConvSpec.from_module(conv).padding]))
    x = torch.randn(draw(st.integers(1, 2)), cin, *size, dtype=torch.float64)
    return conv, x, block, order


@given(space_cases())
def test_to_space_matches_reference(case):
    conv, x, block, order = case
    big = to_space(conv, block, order)
    y = depth_to_space(x, block, order)
    expected = ref_conv(conv, x)
    assert_close_np(big(y), expected)
    assert_close_np(ref_conv(big, y), expected)  # the new layer's spec, read by the reference, agrees too
    spec, new = ConvSpec.from_module(conv), ConvSpec.from_module(big)
    assert new.stride == tuple(s * b for s, b in zip(spec.stride, block))
    assert new.in_channels * math.prod(block) == spec.in_channels


@st.composite
def depth_cases(draw):
    """A conv on a space map whose stride and padding are multiples of the block, and its input."""
    dims = draw(st.sampled_from([1, 2, 2, 3]))
    block = tuple(draw(st.integers(1, 3 if dims < 3 else 2)) for _ in range(dims))
    order = draw(st.sampled_from(["crd", "dcr", "focus"]))
    groups = draw(st.integers(1, 3)) if order == "crd" else 1
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 7 if dims < 3 else 4)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    stride = tuple(b * draw(st.integers(1, 2)) for b in block)
    padding = tuple(b * draw(st.integers(0, 1)) for b in block)
    mode = draw(st.sampled_from(["zeros", "zeros", "circular"]))
    conv = make_conv(dims, cin, cout, kernel, stride, padding, dilation, groups, draw(st.booleans()), mode,
                     seed=draw(st.integers(0, 1000)))
    span = ConvSpec.from_module(conv).span
    size = tuple(-(-max(sp, p) // b) * b + b * draw(st.integers(0, 2)) for sp, p, b in zip(span, padding, block))
    x = torch.randn(draw(st.integers(1, 2)), cin, *size, dtype=torch.float64)
    return conv, x, block, order


@given(depth_cases())
def test_to_depth_matches_reference(case):
    conv, x, block, order = case
    small = to_depth(conv, block, order)
    expected = ref_conv(conv, x)
    assert_close_np(small(space_to_depth(x, block, order)), expected)


@given(space_cases(force_crd=True))
def test_round_trip_reproduces_weights_exactly(case):
    conv, _, block, order = case
    if any(d != 1 for d in conv.dilation):
        conv = make_conv(conv.weight.dim() - 2, conv.in_channels, conv.out_channels, conv.kernel_size,
                         conv.stride, 0 if isinstance(conv.padding, str) else conv.padding, 1, conv.groups,
                         conv.bias is not None, conv.padding_mode)
    back = to_depth(to_space(conv, block, order), block, order)
    assert ConvSpec.from_module(back) == ConvSpec.from_module(conv)
    assert torch.equal(back.weight, conv.weight)
    assert (back.bias is None) == (conv.bias is None)
    if conv.bias is not None:
        assert torch.equal(back.bias, conv.bias)


@pytest.mark.parametrize("order", ["crd", "dcr"])
def test_seed_numbers(order):
    """256×H×W with a 3×3 conv = 1×16H×16W with a 48×48 conv at stride 16."""
    conv = make_conv(2, 256, 1, 3, padding=1)
    big = to_space(conv, 16, order)
    assert big.kernel_size == (48, 48) and big.stride == (16, 16) and big.padding == (16, 16)
    assert big.in_channels == 1
    x = torch.randn(1, 256, 5, 6, dtype=torch.float64)
    y = depth_to_space(x, 16, order)
    assert y.shape == (1, 1, 80, 96)
    np.testing.assert_allclose(to_np(big(y)), to_np(conv(x)), atol=1e-12)
    np.testing.assert_allclose(to_np(big(y)), ref_conv(conv, x), atol=1e-12)


def test_same_kernel_at_stride_one_is_a_different_operator():
    conv = make_conv(2, 16, 1, 3, padding=1)
    big = to_space(conv, 4)
    stride1 = torch.nn.Conv2d(1, 1, 12, padding=4, bias=False).double()
    with torch.no_grad():
        stride1.weight.copy_(big.weight)
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64)
    y = depth_to_space(x, 4)
    dense = stride1(y) + big.bias.view(1, -1, 1, 1)
    assert dense.shape[-1] != conv(x).shape[-1]
    np.testing.assert_allclose(to_np(dense[..., ::4, ::4]), to_np(conv(x)), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("direction", ["space", "depth"])
def test_low_precision_within_dtype_tolerance(dtype, direction):
    torch.manual_seed(0)
    if direction == "space":
        conv = make_conv(2, 16, 8, 3, stride=2, padding=1, dtype=dtype)
        new, x = to_space(conv, 2), torch.randn(2, 16, 9, 7).to(dtype)
        out, x_new = new(depth_to_space(x, 2)), x
    else:
        conv = make_conv(2, 4, 8, 5, stride=2, padding=2, dtype=dtype)
        new, x = to_depth(conv, 2), torch.randn(2, 4, 12, 10).to(dtype)
        out, x_new = new(space_to_depth(x, 2)), x
    expected = ref_conv(conv, x_new)
    tol = dtype_tol(dtype, float(np.abs(expected).max())) * 4
    assert out.dtype == dtype
    np.testing.assert_allclose(to_np(out), expected, atol=tol)


@pytest.mark.parametrize("order", ["crd", "dcr"])
def test_gradients_match(order):
    """Input gradients through depth_to_space and weight gradients through the (differentiable) weight map."""
    conv = make_conv(2, 8, 3, 3, stride=2, padding=1, dilation=(1, 2))
    spec = ConvSpec.from_module(conv)
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(conv(x))
    (conv(x) * g).sum().backward()
    gx, gw = x.grad.clone(), conv.weight.grad.clone()

    x2 = x.detach().clone().requires_grad_(True)
    w2 = conv.weight.detach().clone().requires_grad_(True)
    wt, new = T.to_space_weight(w2, spec, 2, order)
    out = F.conv2d(depth_to_space(x2, 2, order), wt, conv.bias, new.stride, new.symmetric_padding, 1, 1)
    (out * g).sum().backward()
    np.testing.assert_allclose(to_np(x2.grad), to_np(gx), atol=1e-12)
    np.testing.assert_allclose(to_np(w2.grad), to_np(gw), atol=1e-12)


def test_module_properties_preserved():
    conv = torch.nn.Conv2d(8, 4, 3, padding=1).to(torch.float64)
    conv.weight.requires_grad_(False)
    big = to_space(conv, 2)
    assert big.weight.dtype == torch.float64 and not big.weight.requires_grad
    assert big.weight.data_ptr() != conv.weight.data_ptr()
    assert type(big) is torch.nn.Conv2d


def test_to_depth_zero_pads_kernel_to_block_multiple():
    conv = make_conv(2, 3, 64, 7, stride=2, padding=2)
    small = to_depth(conv, 2)
    assert small.kernel_size == (4, 4) and small.in_channels == 12 and small.padding == (1, 1)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: to_depth(make_conv(2, 1, 1, 3, stride=3), 2), "stride 3 is not divisible by block 2"),
        (lambda: to_depth(make_conv(2, 1, 1, 3, stride=2, padding=1), 2), "padding (1, 1) is not divisible by block 2"),
        (lambda: to_depth(make_conv(2, 1, 1, 3, stride=2, padding=2, padding_mode="reflect"), 2),
         "padding_mode='reflect'"),
        (lambda: to_space(make_conv(2, 6, 1, 3), 2), "6 input channels"),
        (lambda: to_space(make_conv(2, 8, 4, 3, groups=4), 2), "each group has 2 input channels"),
        (lambda: to_space(make_conv(2, 8, 2, 3, groups=2), 2, "dcr"), "use order='crd'"),
        (lambda: to_space(make_conv(2, 4, 1, 3, padding=1, padding_mode="replicate"), 2), "replicate"),
        (lambda: to_space(torch.nn.ConvTranspose2d(4, 4, 2), 2), "nn.Conv1d/2d/3d"),
        (lambda: to_space(torch.nn.Linear(4, 4), 2), "nn.Conv1d/2d/3d"),
        (lambda: to_space(make_conv(2, 4, 1, 3), (2, 2, 2)), "has 3 entries"),
        (lambda: to_space(make_conv(2, 4, 1, 3), 0), "must be positive"),
    ],
)
def test_errors_name_condition_and_way_out(build, message):
    with pytest.raises(FoldError) as info:
        build()
    assert message in str(info.value)


def test_even_kernel_same_padding_comes_back_as_pad_then_conv():
    conv = make_conv(2, 4, 1, 2, padding="same")  # pads (0, 1): no nn.Conv2d expresses it
    big = to_space(conv, 2)
    assert isinstance(big, torch.nn.Sequential) and isinstance(big[0], torch.nn.ZeroPad2d)
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    assert_close_np(big(depth_to_space(x, 2)), ref_conv(conv, x))


def test_subclass_with_custom_forward_is_refused():
    class PadsInForward(torch.nn.Conv2d):
        def forward(self, x):
            return super().forward(F.pad(x, (1, 0, 1, 0)))

    with pytest.raises(FoldError, match="may change its forward"):
        to_space(PadsInForward(4, 1, 3), 2)


def test_error_is_value_error():
    assert issubclass(pixelfold.FoldError, ValueError)
