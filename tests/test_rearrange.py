"""space_to_depth / depth_to_space against their definitions, PyTorch's and TF's orders."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import pixelfold
from pixelfold import FoldError, depth_to_space, space_to_depth
from pixelfold.rearrange import phase_permutation


def definition_s2d(x: np.ndarray, block: tuple[int, ...], order: str) -> np.ndarray:
    """The definition, one phase at a time: out[:, channel(c, phase)] = x[:, c, off_1::b_1, ...]."""
    N, C, *S = x.shape
    n = len(block)
    R = math.prod(block)
    out = np.zeros((N, C * R, *[s // b for s, b in zip(S, block)]), dtype=x.dtype)
    for offsets in itertools.product(*[range(b) for b in block]):
        phase = 0
        for o, b in zip(offsets, block):  # row-major
            phase = phase * b + o
        phase_t = 0
        for o, b in zip(reversed(offsets), reversed(block)):  # first dim fastest (Focus)
            phase_t = phase_t * b + o
        sl = tuple(slice(o, None, b) for o, b in zip(offsets, block))
        for c in range(C):
            ch = {"crd": c * R + phase, "dcr": phase * C + c, "focus": phase_t * C + c}[order]
            out[(slice(None), ch)] = x[(slice(None), c, *sl)]
    assert n == len(S)
    return out


@st.composite
def tensors_and_blocks(draw):
    dims = draw(st.integers(1, 3))
    block = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    outer = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    C = draw(st.integers(1, 4))
    N = draw(st.integers(1, 2))
    order = draw(st.sampled_from(["crd", "dcr", "focus"]))
    channels_last = draw(st.booleans()) and dims in (2, 3)
    return N, C, block, outer, order, channels_last


@given(tensors_and_blocks())
def test_space_to_depth_matches_definition(case):
    N, C, block, outer, order, channels_last = case
    x = torch.randn(N, C, *[o * b for o, b in zip(outer, block)], dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    y = space_to_depth(x, block, order)
    np.testing.assert_array_equal(y.numpy(), definition_s2d(x.numpy(), block, order))
    back = depth_to_space(y, block, order)
    assert torch.equal(back, x)
    if channels_last and C > 1:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        assert y.is_contiguous(memory_format=fmt)
        if min(x.shape[2:]) > 1 and not y.is_contiguous():  # size-1 dims make layouts ambiguous
            assert back.is_contiguous(memory_format=fmt)


@given(tensors_and_blocks())
def test_depth_to_space_is_inverse(case):
    N, C, block, outer, order, channels_last = case
    R = math.prod(block)
    y = torch.randn(N, C * R, *outer)
    if channels_last:
        y = y.to(memory_format=torch.channels_last if y.dim() == 4 else torch.channels_last_3d)
    assert torch.equal(space_to_depth(depth_to_space(y, block, order), block, order), y)


@pytest.mark.parametrize("r", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_crd_2d_is_pixel_unshuffle(r, channels_last):
    x = torch.randn(2, 5, 8 * r, 3 * r)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert torch.equal(space_to_depth(x, r), F.pixel_unshuffle(x, r))
    y = torch.randn(2, 5 * r * r, 4, 3)
    assert torch.equal(depth_to_space(y, r), F.pixel_shuffle(y, r))


@pytest.mark.parametrize("C", [3, 20])
@pytest.mark.parametrize("block", [2, 4, 8, (2, 4)])
@pytest.mark.parametrize("order", ["crd", "dcr", "focus"])
def test_channels_last_copy_paths_match_definition(C, block, order):
    """channels_last takes layout-specific copy paths (per-phase stack, two-step crd, pixel_shuffle); each is exact."""
    b = block if isinstance(block, tuple) else (block, block)
    x = torch.randn(2, C, 3 * b[0], 2 * b[1], dtype=torch.float64).to(memory_format=torch.channels_last)
    y = space_to_depth(x, block, order)
    np.testing.assert_array_equal(y.numpy(), definition_s2d(x.numpy(), b, order))
    assert y.is_contiguous(memory_format=torch.channels_last)
    back = depth_to_space(y, block, order)
    assert torch.equal(back, x) and back.is_contiguous(memory_format=torch.channels_last)


def test_dcr_is_tf_space_to_depth():
    """TF/ONNX: out[n, (i*b + j)*C + c, h, w] = x[n, c, h*b + i, w*b + j]."""
    b, C = 3, 2
    x = torch.arange(2 * C * 6 * 9, dtype=torch.float64).reshape(2, C, 6, 9)
    y = space_to_depth(x, b, order="dcr")
    for n, h, w, i, j, c in itertools.product(range(2), range(2), range(3), range(b), range(b), range(C)):
        assert y[n, (i * b + j) * C + c, h, w] == x[n, c, h * b + i, w * b + j]


def test_focus_order_is_yolov5_slice_cat():
    x = torch.randn(2, 3, 8, 6)
    ref = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
    assert torch.equal(space_to_depth(x, 2, order="focus"), ref)
    assert torch.equal(pixelfold.FocusSlice()(x), ref)


def test_rectangular_blocks_and_block_one():
    x = torch.randn(1, 2, 6, 8)
    assert space_to_depth(x, (3, 2)).shape == (1, 12, 2, 4)
    assert torch.equal(space_to_depth(x, 1), x)
    assert torch.equal(depth_to_space(x, (1, 1), "dcr"), x)


def test_phase_permutation_consistent_with_rearrangement():
    x = torch.randn(1, 3, 4, 6)
    for order in ("dcr", "focus"):
        perm = phase_permutation(3, (2, 3), order)
        assert torch.equal(space_to_depth(x, (2, 3), order), space_to_depth(x, (2, 3))[:, perm])


def test_gradients_flow_through_rearrangements():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    g = torch.randn(1, 8, 2, 2)
    (space_to_depth(x, 2, "dcr") * g).sum().backward()
    assert torch.equal(x.grad, depth_to_space(g, 2, "dcr"))


def test_dtype_device_preserved():
    x = torch.randn(1, 2, 4, 4).to(torch.bfloat16)
    assert space_to_depth(x, 2).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: space_to_depth(torch.zeros(1, 1, 5, 4), 2), "size 5, which is not divisible by block 2"),
        (lambda: space_to_depth(torch.zeros(4, 4), 2), "rank 2"),
        (lambda: space_to_depth(torch.zeros(1, 1, 2, 2, 2, 2, 2), 2), "rank 7"),
        (lambda: space_to_depth(torch.zeros(1, 1, 4, 4), 0), "must be positive"),
        (lambda: space_to_depth(torch.zeros(1, 1, 4, 4), (2, 2, 2)), "has 3 entries but the tensor has 2"),
        (lambda: space_to_depth(torch.zeros(1, 1, 4, 4), 2, order="cdr"), "order 'cdr' is not one of"),
        (lambda: depth_to_space(torch.zeros(1, 6, 2, 2), 2), "channels divisible by prod(block) = 4"),
        (lambda: depth_to_space(torch.zeros(1, 4, 2, 2), -1), "must be positive"),
        (lambda: space_to_depth([[1.0]], 2), "expects a torch.Tensor"),
        (lambda: space_to_depth(torch.zeros(1, 1, 4, 4), 2.5), "must be an int or a tuple"),
    ],
)
def test_errors(call, message):
    with pytest.raises(FoldError, match=None) as info:
        call()
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------- every layout × order × block
# (issue 12 item 4: the channels-last copies take different paths by C, block and order; each must be exact)
_BLOCKS = [(1,), (2,), (4,), (8,), (1, 1), (2, 2), (1, 4), (3, 2), (4, 4), (8, 8), (2, 8),
           (1, 2, 2), (2, 2, 2), (2, 1, 3), (1, 1, 8)]


def _stored(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` stored contiguous or with the channel dim innermost (NLC, NHWC, NDHWC)."""
    return x.movedim(1, -1).contiguous().movedim(-1, 1) if channels_last else x.contiguous()


def _channels_last_dense(t: torch.Tensor) -> bool:
    return t.movedim(1, -1).is_contiguous()


@pytest.mark.parametrize("block", _BLOCKS, ids=lambda b: "x".join(map(str, b)))
@pytest.mark.parametrize("C", [1, 3, 4, 16, 20])
@pytest.mark.parametrize("N", [0, 1, 3])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_every_layout_order_block_matches_definition(block, C, N, channels_last):
    outer = [3, 2, 2][: len(block)]  # > 1 everywhere: the layouts are unambiguous
    for order in ("crd", "dcr", "focus"):
        x = _stored(torch.randn(N, C, *[o * b for o, b in zip(outer, block)], dtype=torch.float64), channels_last)
        y = space_to_depth(x, block, order)
        np.testing.assert_array_equal(y.numpy(), definition_s2d(x.numpy(), block, order))
        back = depth_to_space(y, block, order)
        assert torch.equal(back, x)
        if N == 0:
            continue
        if C == 1:  # x is both layouts; the result may be a view in either
            assert all(t.is_contiguous() or _channels_last_dense(t) for t in (y, back))
        elif channels_last:  # channels_last in, channels_last out, both ways
            assert _channels_last_dense(y) and _channels_last_dense(back)
        else:
            assert y.is_contiguous() and back.is_contiguous()


def test_the_grid_above_reaches_every_channels_last_path():
    """Each copy method of the channels-last rearrangements is taken by some case of the grid above."""
    from pixelfold.rearrange import _d2s_method, _s2d_method

    grid = [(C, b, o) for C in (3, 4, 16, 20) for b in _BLOCKS for o in ("crd", "dcr", "focus")]
    assert {_s2d_method(*g) for g in grid} == {"view", "phases", "two-step", "permute"}
    assert {_d2s_method(*g) for g in grid} == {"view", "pixel_shuffle", "two-step", "permute"}


def _strided_views(C: int, block: tuple[int, ...]) -> list[tuple[torch.Tensor, tuple[int, ...]]]:
    """Non-dense inputs in neither layout, each with the block that divides it."""
    n = len(block)
    big = torch.randn(4, C, *[4 * b for b in block], dtype=torch.float64)
    views = [(big[(slice(None), slice(None), *[slice(None, None, 2)] * n)], block),  # every other position
             (_stored(big, True)[::2], block)]  # channels-last storage, every other batch entry
    if n >= 2:  # swapped spatial dims
        views.append((big.transpose(2, 3), (block[1], block[0], *block[2:])))
    return views


@pytest.mark.parametrize("order", ["crd", "dcr", "focus"])
@pytest.mark.parametrize("C, block", [(3, (2,)), (3, (2, 2)), (20, (2, 2)), (3, (2, 2, 2)), (16, (1, 2, 2)), (5, (2, 8))])
def test_non_contiguous_inputs(order, C, block):
    """Strided views (every other row/column, a batch slice, swapped spatial dims) are rearranged exactly."""
    for x, b in _strided_views(C, block):
        assert not x.is_contiguous() and not _channels_last_dense(x)
        y = space_to_depth(x, b, order)
        np.testing.assert_array_equal(y.numpy(), definition_s2d(x.contiguous().numpy(), b, order))
        assert torch.equal(depth_to_space(y, b, order), x)
        z = y.transpose(-1, -2).contiguous().transpose(-1, -2)  # last two dims swapped in memory (1-D: NLC)
        assert torch.equal(depth_to_space(z, b, order), x)


@pytest.mark.parametrize("C, block, order", [(3, (2, 2), "focus"), (20, (2, 2), "crd"), (16, (2, 2, 2), "crd"),
                                             (20, (8, 8), "crd"), (20, (2, 2), "dcr"), (4, (1, 4), "dcr")])
def test_gradients_through_channels_last_paths(C, block, order):
    x = _stored(torch.randn(2, C, *[2 * b for b in block], dtype=torch.float64), True).requires_grad_()
    g = torch.randn(2, C * math.prod(block), *[2] * len(block), dtype=torch.float64)
    (space_to_depth(x, block, order) * g).sum().backward()
    assert torch.equal(x.grad, depth_to_space(g, block, order))
