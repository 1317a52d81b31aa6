"""The NumPy oracle (`pixelfold.reference`) against torch.nn.functional in float64."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pixelfold.reference import conv, conv_transpose, pad

TOL = 1e-10
MODES = ("zeros", "reflect", "replicate", "circular")
TORCH_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _t(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64))


def _torch_pad(x: np.ndarray, pairs, mode: str) -> torch.Tensor:
    """F.pad with per-dim (lo, hi) pairs given first spatial dim first."""
    flat = [v for lo_hi in reversed(pairs) for v in lo_hi]  # F.pad: last dim first
    return F.pad(_t(x), flat, mode=TORCH_MODE[mode])


def _check_torch_refuses(x: np.ndarray, pairs, mode: str) -> None:
    """Where the oracle refuses a padding, torch must refuse it too.

    Except: torch's circular padding may return garbage instead of raising
    when it crops, and its 2-d/3-d reflect padding returns an empty array where
    the 1-d one (and replicate) raise "too small", so empty counts as refused.
    """
    if mode == "circular":
        return
    try:
        out = _torch_pad(x, pairs, mode)
    except RuntimeError:
        return
    assert mode == "reflect" and out.numel() == 0, f"torch accepts {pairs} ({mode}): {out.shape}"


def _pairs_of(padding, n):
    if isinstance(padding, int):
        return [(padding, padding)] * n
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def _torch_conv(x, w, b, stride, padding, dilation, groups, mode) -> np.ndarray:
    """Reference result from torch: F.pad (any mode, asymmetric, cropping) then a valid conv."""
    n = x.ndim - 2
    if isinstance(padding, str):
        if mode == "zeros":
            out = CONV[n](_t(x), _t(w), _t(b), stride, padding, dilation, groups)
            return out.numpy()
        if padding == "valid":
            padding = 0
        else:
            k = w.shape[2:]
            d = (dilation,) * n if isinstance(dilation, int) else dilation
            totals = [di * (ki - 1) for di, ki in zip(d, k)]
            padding = [(t // 2, t - t // 2) for t in totals]
    xp = _torch_pad(x, _pairs_of(padding, n), mode)
    return CONV[n](xp, _t(w), _t(b), stride, 0, dilation, groups).numpy()


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == np.float64
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------
# Hand-picked cases
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, kwargs",
    [
        (1, {}),
        (1, dict(stride=2, padding=1)),
        (1, dict(dilation=2, padding=2, groups=2)),
        (2, {}),
        (2, dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
        (2, dict(stride=3, padding=2, groups=2)),
        (2, dict(padding="same", dilation=2)),
        (2, dict(padding="valid", stride=2)),
        (3, dict(stride=2, padding=1)),
        (3, dict(padding=(0, 1, 2), dilation=(2, 1, 1), groups=2)),
    ],
)
def test_conv_matches_torch_direct(n, kwargs):
    rng = _rng(n)
    groups = kwargs.get("groups", 1)
    size = (9, 8, 7)[:n] if n < 3 else (5, 6, 4)
    x = rng.standard_normal((2, 4) + size)
    w = rng.standard_normal((6, 4 // groups) + (3, 2, 3)[:n])
    b = rng.standard_normal(6)
    got = conv(x, w, b, **kwargs)
    want = CONV[n](_t(x), _t(w), _t(b), **kwargs).numpy()
    _close(got, want)


@pytest.mark.parametrize("kernel", [(4, 4), (2, 5), (1, 6)])
@pytest.mark.parametrize("mode", MODES)
def test_conv_same_even_kernel_puts_extra_padding_at_end(kernel, mode):
    rng = _rng(1)
    x = rng.standard_normal((1, 2, 7, 8))
    w = rng.standard_normal((3, 2) + kernel)
    got = conv(x, w, padding="same", padding_mode=mode)
    assert got.shape == (1, 3, 7, 8)
    want = torch.nn.Conv2d(2, 3, kernel, padding="same", padding_mode=mode, bias=False).double()
    with torch.no_grad():
        want.weight.copy_(_t(w))
        _close(got, want(_t(x)).numpy())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_conv_padding_modes_match_torch_modules(mode, n):
    rng = _rng(n)
    x = rng.standard_normal((2, 2) + (5, 6, 4)[:n])
    module = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[n](
        2, 4, 3, stride=2, padding=2, padding_mode=mode, dilation=1, groups=2
    ).double()
    got = conv(
        x,
        module.weight.detach().numpy(),
        module.bias.detach().numpy(),
        stride=2,
        padding=2,
        groups=2,
        padding_mode=mode,
    )
    with torch.no_grad():
        _close(got, module(_t(x)).numpy())


def test_conv_asymmetric_and_negative_padding():
    rng = _rng(2)
    x = rng.standard_normal((1, 3, 10, 9))
    w = rng.standard_normal((2, 3, 3, 2))
    padding = ((2, -1), (0, 3))
    got = conv(x, w, padding=padding, stride=(1, 2))
    want = _torch_conv(x, w, None, (1, 2), padding, 1, 1, "zeros")
    _close(got, want)
    # Cropping alone is the same as slicing the input first.
    _close(conv(x, w, padding=((-2, -1), (0, -3))), conv(x[:, :, 2:-1, :-3], w))


def test_conv_is_cross_correlation():
    x = np.arange(6.0).reshape(1, 1, 6)
    w = np.array([[[0.0, 0.0, 1.0]]])  # picks the *last* tap: x[i + 2]
    np.testing.assert_array_equal(conv(x, w)[0, 0], [2.0, 3.0, 4.0, 5.0])


def test_conv_groups_use_contiguous_channel_blocks():
    # groups=C_in=C_out: depthwise, channel c only sees channel c.
    x = np.stack([np.full((1, 4), float(c)) for c in range(3)])[None]  # (1, 3, 1, 4)
    w = np.ones((3, 1, 1, 1)) * np.array([1.0, 10.0, 100.0])[:, None, None, None]
    np.testing.assert_array_equal(conv(x, w, groups=3)[0, :, 0, 0], [0.0, 10.0, 200.0])


def test_conv_accepts_lists_and_numpy_ints():
    rng = _rng(3)
    x = rng.standard_normal((1, 2, 6, 6)).tolist()
    w = rng.standard_normal((2, 2, 3, 3))
    got = conv(x, w, stride=[np.int64(2), 1], padding=[[1, np.int32(0)], 1])
    want = _torch_conv(np.array(x), w, None, (2, 1), [(1, 0), (1, 1)], 1, 1, "zeros")
    _close(got, want)


def test_conv_on_a_larger_shape():  # (no timing here: unit tests assert no speeds; see benchmarks/)
    rng = _rng(4)
    x = rng.standard_normal((2, 8, 12, 12))
    w = rng.standard_normal((8, 8, 5, 5))
    got = conv(x, w, padding=2)
    _close(got, F.conv2d(_t(x), _t(w), padding=2).numpy())


@pytest.mark.parametrize(
    "n, kwargs",
    [
        (1, {}),
        (1, dict(stride=2)),
        (1, dict(stride=2, padding=1, output_padding=1)),
        (1, dict(stride=3, padding=0, output_padding=2)),  # output_padding past the full buffer
        (1, dict(stride=1, dilation=3, output_padding=2)),  # allowed by dilation alone
        (2, dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2)),
        (2, dict(stride=2, dilation=2, padding=2, output_padding=1)),
        (3, dict(stride=2, padding=1, output_padding=1)),
        (3, dict(stride=(1, 2, 1), dilation=(2, 1, 1), groups=2)),
    ],
)
def test_conv_transpose_matches_torch(n, kwargs):
    rng = _rng(10 + n)
    groups = kwargs.get("groups", 1)
    x = rng.standard_normal((2, 4) + (5, 4, 3)[:n])
    w = rng.standard_normal((4, 6 // groups) + (3, 2, 2)[:n])
    b = rng.standard_normal(6)
    got = conv_transpose(x, w, b, **kwargs)
    want = CONV_T[n](_t(x), _t(w), _t(b), **kwargs).numpy()
    _close(got, want)


def test_conv_transpose_output_padding_entries_are_bias_only():
    x = np.ones((1, 1, 2))
    w = np.ones((1, 1, 1))
    got = conv_transpose(x, w, bias=[0.5], stride=3, output_padding=2)
    # full buffer: [1, 0, 0, 1]; output_padding adds two entries past its end.
    np.testing.assert_array_equal(got[0, 0], [1.5, 0.5, 0.5, 1.5, 0.5, 0.5])


def test_conv_transpose_is_adjoint_of_conv():
    # <conv(x, w), y> == <x, conv_transpose(y, w)> for matching arguments.
    rng = _rng(5)
    kw = dict(stride=(2, 3), padding=(1, 2), dilation=(2, 1), groups=2)
    x = rng.standard_normal((2, 4, 9, 11))
    w = rng.standard_normal((6, 2, 3, 3))
    y_shape = conv(x, w, **kw).shape
    y = rng.standard_normal(y_shape)
    # output_padding restores the forward input size.
    op = tuple(
        L - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
        for L, o, s, p, d, k in zip((9, 11), y_shape[2:], (2, 3), (1, 2), (2, 1), (3, 3))
    )
    xt = conv_transpose(y, w, output_padding=op, **kw)
    assert xt.shape == x.shape
    np.testing.assert_allclose(np.sum(conv(x, w, **kw) * y), np.sum(x * xt), rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "pairs",
    [
        [(2, 1)],
        [(-1, 2)],
        [(2, -1)],
        [(-1, -1)],
        [(0, 4)],
        [(-3, 3)],
        [(3, -3)],
        [(-2, 3)],
        [(-5, 0)],
        [(1, 2), (-1, 3)],
        [(1, 0), (0, 2), (2, -1)],
    ],
)
def test_pad_matches_torch_hand_picked(mode, pairs):
    n = len(pairs)
    x = _rng(6).standard_normal((2, 3) + (5, 4, 6)[:n])
    try:
        got = pad(x, pairs, mode)
    except ValueError:
        # The only hand-picked cases refused: beyond PyTorch's limits.
        _check_torch_refuses(x, pairs, mode)
        return
    _close(got, _torch_pad(x, pairs, mode).numpy())


def test_pad_order_of_crop_and_pad_differs_by_mode_like_torch():
    x = np.arange(5.0).reshape(1, 1, 5)
    # reflect/replicate pad the whole input, then crop ...
    np.testing.assert_array_equal(pad(x, [(-3, 3)], "reflect")[0, 0], [3, 4, 3, 2, 1])
    np.testing.assert_array_equal(pad(x, [(-5, 1)], "replicate")[0, 0], [4])
    # ... circular crops, then wraps around what is left.
    np.testing.assert_array_equal(pad(x, [(-1, 2)], "circular")[0, 0], [1, 2, 3, 4, 1, 2])
    np.testing.assert_array_equal(pad(x, [(-5, 1)], "zeros")[0, 0], [0])


def test_pad_int_and_symmetric_forms():
    x = _rng(7).standard_normal((1, 2, 3, 4))
    _close(pad(x, 1, "reflect"), pad(x, ((1, 1), (1, 1)), "reflect"))
    _close(pad(x, (2, 0), "replicate"), pad(x, ((2, 2), (0, 0)), "replicate"))
    assert pad(x, 0).shape == x.shape


# --------------------------------------------------------------------------
# Hypothesis: random specs against torch
# --------------------------------------------------------------------------


@st.composite
def conv_cases(draw):
    n = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kmax = 4 if n < 3 else 3
    kernel = tuple(draw(st.integers(1, kmax)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(n))
    mode = draw(st.sampled_from(MODES))
    form = draw(st.sampled_from(["int", "tuple", "pairs", "valid", "same"]))
    stride = 1 if form == "same" else tuple(draw(st.integers(1, 3)) for _ in range(n))
    lo_min = -2 if mode == "zeros" else 0  # cropping: zeros mode
    if form == "int":
        padding = draw(st.integers(0, 3))
    elif form == "tuple":
        padding = tuple(draw(st.integers(0, 3)) for _ in range(n))
    elif form == "pairs":
        padding = tuple(
            (draw(st.integers(lo_min, 3)), draw(st.integers(lo_min, 3))) for _ in range(n)
        )
    else:
        padding = form
    if form == "valid":
        pairs = [(0, 0)] * n
    elif form == "same":
        pairs = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for d, k in zip(dilation, kernel)]
    else:
        pairs = _pairs_of(padding, n)
    size = []
    for (lo, hi), k, d in zip(pairs, kernel, dilation):
        span = d * (k - 1) + 1
        # Big enough for the kernel, for reflect (pad < L) and circular (pad <= L).
        need = max(span - lo - hi, max(lo, hi) + 1, -min(lo, 0) - min(hi, 0) + 1, 1)
        size.append(need + draw(st.integers(0, 3 if n < 3 else 1)))
    batch = draw(st.integers(1, 2))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return dict(
        shape=(batch, c_in, *size),
        wshape=(c_out, c_in // groups, *kernel),
        bias=bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        mode=mode,
        seed=seed,
    )


@settings(max_examples=60, deadline=None)
@given(conv_cases())
def test_conv_matches_torch_random(case):
    event(f"{case['mode']}, padding {type(case['padding']).__name__}")
    rng = _rng(case["seed"])
    x = rng.standard_normal(case["shape"])
    w = rng.standard_normal(case["wshape"])
    b = rng.standard_normal(case["wshape"][0]) if case["bias"] else None
    got = conv(
        x,
        w,
        b,
        stride=case["stride"],
        padding=case["padding"],
        dilation=case["dilation"],
        groups=case["groups"],
        padding_mode=case["mode"],
    )
    want = _torch_conv(
        x, w, b, case["stride"], case["padding"], case["dilation"], case["groups"], case["mode"]
    )
    _close(got, want)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_conv_transpose_matches_torch_random(data):
    n = data.draw(st.integers(1, 3), label="n")
    groups = data.draw(st.integers(1, 3), label="groups")
    c_in = groups * data.draw(st.integers(1, 2))
    c_out_g = data.draw(st.integers(1, 2))
    kmax = 4 if n < 3 else 3
    kernel = tuple(data.draw(st.integers(1, kmax)) for _ in range(n))
    stride = tuple(data.draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(data.draw(st.integers(1, 3)) for _ in range(n))
    size = tuple(data.draw(st.integers(1, 4 if n < 3 else 3)) for _ in range(n))
    output_padding = tuple(data.draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    full = [(L - 1) * s + d * (k - 1) + 1 for L, s, d, k in zip(size, stride, dilation, kernel)]
    # Keep the output non-empty: 2*padding < full + output_padding.
    padding = tuple(
        data.draw(st.integers(0, min(3, (f + op - 1) // 2))) for f, op in zip(full, output_padding)
    )
    use_bias = data.draw(st.booleans())
    rng = _rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((data.draw(st.integers(1, 2)), c_in) + size)
    w = rng.standard_normal((c_in, c_out_g) + kernel)
    b = rng.standard_normal(c_out_g * groups) if use_bias else None
    kw = dict(
        stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups
    )
    got = conv_transpose(x, w, b, **kw)
    want = CONV_T[n](_t(x), _t(w), _t(b), **kw).numpy()
    _close(got, want)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_pad_matches_torch_random(data):
    n = data.draw(st.integers(1, 3), label="n")
    mode = data.draw(st.sampled_from(MODES), label="mode")
    pairs = [(data.draw(st.integers(-3, 4)), data.draw(st.integers(-3, 4))) for _ in range(n)]
    if data.draw(st.booleans(), label="fit"):
        # Large enough for every mode: what is left after cropping exceeds each pad.
        size = tuple(
            data.draw(st.integers(1, 3)) + max(lo, hi, 0) + max(-lo, 0) + max(-hi, 0)
            for lo, hi in pairs
        )
    else:
        size = tuple(data.draw(st.integers(1, 5)) for _ in range(n))
    x = _rng(data.draw(st.integers(0, 2**32 - 1))).standard_normal((1, 2) + size)
    try:
        got = pad(x, pairs, mode)
    except ValueError:
        event(f"{mode}: refused")
        _check_torch_refuses(x, pairs, mode)
        return
    event(f"{mode}: compared")
    _close(got, _torch_pad(x, pairs, mode).numpy())


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

X2 = np.zeros((1, 4, 6, 6))
W2 = np.zeros((6, 2, 3, 3))


@pytest.mark.parametrize(
    "x, w, kwargs, match",
    [
        (np.zeros((4, 6)), np.zeros((2, 4, 3)), {}, "spatial dims"),
        (np.zeros((1, 1, 2, 2, 2, 2)), np.zeros((1, 1, 1, 1, 1, 1)), {}, "spatial dims"),
        (X2, np.zeros((6, 4, 3)), {}, "kernel dims"),
        (X2, W2, dict(groups=3), "divisible by groups"),
        (X2, np.zeros((5, 2, 3, 3)), dict(groups=2), "divisible by groups"),
        (X2, W2, {}, "input channels per group"),
        (X2, W2, dict(groups=2, bias=np.zeros(5)), "bias"),
        (X2, W2, dict(groups=0), "groups must be >= 1"),
        (X2, W2, dict(groups=2, stride=0), "stride"),
        (X2, W2, dict(groups=2, dilation=(1, 0)), "dilation"),
        (X2, W2, dict(groups=2, stride=(1, 1, 1)), "stride"),
        (X2, W2, dict(groups=2, padding=(1, 1, 1)), "padding"),
        (X2, W2, dict(groups=2, padding=((1, 1, 1), 0)), "padding"),
        (X2, W2, dict(groups=2, padding="same", stride=2), "same"),
        (X2, W2, dict(groups=2, padding="full"), "valid"),
        (X2, W2, dict(groups=2, padding_mode="constant"), "padding mode"),
        (X2, W2, dict(groups=2, dilation=3), "larger than the padded input"),
        (X2, W2, dict(groups=2, padding=((-2, -2), 0)), "larger than the padded input"),
        (X2, np.zeros((6, 2, 0, 3)), dict(groups=2), "kernel size"),
        (X2, W2, dict(groups=2, padding=6, padding_mode="reflect"), "reflect"),
    ],
)
def test_conv_value_errors(x, w, kwargs, match):
    with pytest.raises(ValueError, match=match):
        conv(x, w, **kwargs)


@pytest.mark.parametrize(
    "x, w, kwargs, match",
    [
        (np.zeros((4, 3)), np.zeros((4, 2, 3)), {}, "spatial dims"),
        (np.zeros((1, 4, 3)), np.zeros((4, 2, 3, 3)), {}, "kernel dims"),
        (np.zeros((1, 4, 3)), np.zeros((3, 2, 3)), {}, "input channels"),
        (np.zeros((1, 4, 3)), np.zeros((4, 2, 3)), dict(groups=3), "divisible by groups"),
        (np.zeros((1, 4, 3)), np.zeros((4, 2, 3)), dict(groups=0), "groups"),
        (np.zeros((1, 4, 3)), np.zeros((4, 2, 3)), dict(groups=2, bias=np.zeros(2)), "bias"),
        (np.zeros((1, 4, 3)), np.zeros((4, 2, 3)), dict(padding=-1), "padding"),
        (np.zeros((1, 4, 3)), np.zeros((4, 2, 3)), dict(stride=0), "stride"),
        (np.zeros((1, 4, 3)), np.zeros((4, 2, 3)), dict(stride=2, output_padding=2), "output_padding"),
        (np.zeros((1, 4, 3)), np.zeros((4, 2, 3)), dict(stride=1, output_padding=1), "output_padding"),
        (np.zeros((1, 4, 3)), np.zeros((4, 2, 3)), dict(output_padding=-1), "output_padding"),
        (np.zeros((1, 4, 3, 3)), np.zeros((4, 2, 3, 3)), dict(output_padding=(0, 0, 0)), "output_padding"),
        (np.zeros((1, 4, 2)), np.zeros((4, 2, 1)), dict(padding=1), "too small"),
        (np.zeros((1, 4, 0)), np.zeros((4, 2, 1)), {}, "spatial dim"),
        (np.zeros((1, 4, 3)), np.zeros((4, 2, 0)), {}, "kernel size"),
    ],
)
def test_conv_transpose_value_errors(x, w, kwargs, match):
    with pytest.raises(ValueError, match=match):
        conv_transpose(x, w, **kwargs)


@pytest.mark.parametrize(
    "x, padding, mode, match",
    [
        (np.zeros((3, 4)), 1, "zeros", "spatial dims"),
        (np.zeros((1, 1, 4)), (1, 2), "zeros", "one per spatial dim"),
        (np.zeros((1, 1, 4, 4)), ((1, 2, 3), 0), "zeros", "padding"),
        (np.zeros((1, 1, 4)), 1, "constant", "padding mode"),
        (np.zeros((1, 1, 4)), ((0, 4),), "reflect", "reflect"),
        (np.zeros((1, 1, 4)), ((5, 0),), "circular", "circular"),
        (np.zeros((1, 1, 4)), ((-2, 3),), "circular", "circular"),
        (np.zeros((1, 1, 4)), ((-3, -2),), "zeros", "crops"),
        (np.zeros((1, 1, 4)), ((-4, 0),), "replicate", "leaves nothing"),
        (np.zeros((1, 1, 4)), ((-2, -2),), "reflect", "leaves nothing"),
    ],
)
def test_pad_value_errors(x, padding, mode, match):
    with pytest.raises(ValueError, match=match):
        pad(x, padding, mode)


@pytest.mark.parametrize(
    "call",
    [
        lambda: pad(np.zeros((1, 1, 4)), 1.5),
        lambda: pad(np.zeros((1, 1, 4)), "same"),
        lambda: conv(X2, W2, groups="2"),
        lambda: conv(X2, W2, groups=2, stride=1.0),
        lambda: conv_transpose(np.zeros((1, 4, 3)), np.zeros((4, 2, 3)), padding=(True,)),
    ],
)
def test_non_integer_arguments_are_type_errors(call):
    with pytest.raises(TypeError):
        call()
