"""Direct convolution in NumPy float64: the independent oracle.

Everything pixelfold does is a rewrite that must give the same numbers as
the original layer. To check that without trusting PyTorch (whose kernels
the rewrites are built on), this module computes convolutions and
transposed convolutions the slow, obvious way: in NumPy, in float64, with
an explicit loop over the kernel taps and an ``einsum`` over the channels.
It does not import torch.

It is public as :mod:`pixelfold.reference` so that users can check
pixelfold's results (or anything else) against it too. It is meant for
small shapes: clarity over speed.

The semantics are PyTorch's:

* :func:`conv` is cross-correlation like ``torch.nn.functional.conv{1,2,3}d``
  (weight ``(C_out, C_in // groups, *kernel)``), with the padding modes of
  ``torch.nn.Conv{1,2,3}d`` and, beyond PyTorch, asymmetric and negative
  (cropping) padding.
* :func:`conv_transpose` is ``torch.nn.functional.conv_transpose{1,2,3}d``
  (weight ``(C_in, C_out // groups, *kernel)``).
* :func:`pad` is ``torch.nn.functional.pad`` on the spatial dims, with the
  modes named as in ``torch.nn.Conv{1,2,3}d`` (``"zeros"`` for ``"constant"``).

Inputs are batched: ``(N, C, *spatial)`` with 1, 2 or 3 spatial dims. Every
result is a new float64 array.

>>> import numpy as np
>>> from pixelfold.reference import conv
>>> conv(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), padding=1)[0, 0]
array([[4., 6., 6., 4.],
       [6., 9., 9., 6.],
       [6., 9., 9., 6.],
       [4., 6., 6., 4.]])
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["conv", "conv_transpose", "pad", "PADDING_MODES"]

#: The padding modes of :func:`conv` and :func:`pad`, as in ``torch.nn.ConvNd``.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

#: np.pad modes with the same meaning as the PyTorch names.
_NP_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}

IntOrTuple = Union[int, Sequence[int]]
#: int, one int per dim (symmetric), or one ``(lo, hi)`` pair per dim.
Padding = Union[int, Sequence[Union[int, Sequence[int]]]]


# --------------------------------------------------------------------------
# Argument normalisation
# --------------------------------------------------------------------------


def _as_int(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    return int(value)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _tuple(value: IntOrTuple, n: int, name: str, minimum: int) -> tuple[int, ...]:
    """An int broadcast to ``n`` entries, or a sequence of ``n`` ints; each >= minimum."""
    if _is_int(value):
        out = (int(value),) * n  # type: ignore[arg-type]
    elif isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    else:
        out = tuple(_as_int(v, name) for v in value)  # type: ignore[union-attr]
        if len(out) != n:
            raise ValueError(
                f"{name} must be an int or a tuple of {n} ints (one per spatial dim), got {value!r}"
            )
    if any(v < minimum for v in out):
        raise ValueError(f"{name} must be >= {minimum} in every dim, got {value!r}")
    return out


def _pairs(padding: Padding, n: int, name: str = "padding") -> tuple[tuple[int, int], ...]:
    """Normalise padding to one ``(lo, hi)`` pair per spatial dim.

    Accepts an int (same on both sides of every dim), or a sequence of ``n``
    entries, each an int (both sides of that dim) or a ``(lo, hi)`` pair.
    """
    form = f"an int, a tuple of {n} ints, or a tuple of {n} (lo, hi) pairs"
    if _is_int(padding):
        p = int(padding)  # type: ignore[arg-type]
        return ((p, p),) * n
    if isinstance(padding, (str, bytes)) or not hasattr(padding, "__len__"):
        raise TypeError(f"{name} must be {form}, got {padding!r}")
    if len(padding) != n:  # type: ignore[arg-type]
        raise ValueError(f"{name} must be {form} (one per spatial dim), got {padding!r}")
    pairs = []
    for entry in padding:  # type: ignore[union-attr]
        if _is_int(entry):
            pairs.append((int(entry), int(entry)))  # type: ignore[arg-type]
        elif isinstance(entry, (str, bytes)) or not hasattr(entry, "__len__") or len(entry) != 2:
            raise ValueError(f"{name} must be {form}, got entry {entry!r} in {padding!r}")
        else:
            pairs.append((_as_int(entry[0], name), _as_int(entry[1], name)))
    return tuple(pairs)


def _input(x: object, name: str = "x") -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in (3, 4, 5):
        raise ValueError(
            f"{name} must have shape (N, C, *spatial) with 1, 2 or 3 spatial dims "
            f"(3 to 5 dims in all), got shape {arr.shape}"
        )
    return arr


def _mode(mode: str) -> str:
    if mode not in PADDING_MODES:
        raise ValueError(f"padding mode must be one of {PADDING_MODES}, got {mode!r}")
    return mode


def _bias(bias: object, c_out: int) -> np.ndarray | None:
    if bias is None:
        return None
    b = np.asarray(bias, dtype=np.float64)
    if b.shape != (c_out,):
        raise ValueError(f"bias must have shape ({c_out},) (one per output channel), got {b.shape}")
    return b


def _add_bias(out: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if b is not None:
        out = out + b.reshape((1, -1) + (1,) * (out.ndim - 2))
    return out


def _groups(groups: int, c_in: int, c_out: int) -> int:
    g = _as_int(groups, "groups")
    if g < 1:
        raise ValueError(f"groups must be >= 1, got {g}")
    if c_in % g or c_out % g:
        raise ValueError(
            f"in_channels ({c_in}) and out_channels ({c_out}) must both be divisible by groups ({g})"
        )
    return g


# --------------------------------------------------------------------------
# pad
# --------------------------------------------------------------------------


def _crop(a: np.ndarray, crops: Sequence[tuple[int, int]]) -> np.ndarray:
    """Remove ``lo`` / ``hi`` (both >= 0) entries from the ends of each spatial dim."""
    index = (slice(None), slice(None)) + tuple(
        slice(lo, a.shape[2 + d] - hi) for d, (lo, hi) in enumerate(crops)
    )
    return a[index]


def pad(x: ArrayLike, padding: Padding, mode: str = "zeros") -> np.ndarray:
    """Pad (or crop) the spatial dims of ``x`` like ``torch.nn.functional.pad``.

    Parameters
    ----------
    x : array_like, shape (N, C, *spatial)
        Input with 1, 2 or 3 spatial dims; converted to float64.
    padding : int, tuple of ints, or tuple of (lo, hi) pairs
        Per spatial dim, in the natural order (first spatial dim first, unlike
        ``F.pad``): an int pads both sides of every dim; a tuple has one entry
        per spatial dim, each an int (both sides) or a ``(lo, hi)`` pair.
        A negative amount crops that many entries from that side.
    mode : {"zeros", "reflect", "replicate", "circular"}
        How to fill: zeros; reflection without repeating the edge (like
        ``np.pad(mode="reflect")``); repeating the edge (``"edge"``); or
        wrapping around (``"wrap"``).

    Returns
    -------
    numpy.ndarray
        float64, shape ``(N, C, *(L + lo + hi))``.

    Raises
    ------
    ValueError
        If the padding does not have one entry per spatial dim; a reflect
        padding is not smaller than the dim; a circular padding is larger
        than the (cropped) dim; or cropping removes more than the whole dim
        (for ``"reflect"`` and ``"replicate"``: leaves nothing).

    Notes
    -----
    Where a dim is cropped on one side and padded on the other, the order
    matters, and it follows PyTorch, which differs between modes:
    ``"zeros"`` and ``"circular"`` crop first, then pad the cropped array
    (circular wraps around the cropped array); ``"reflect"`` and
    ``"replicate"`` pad the whole input first, then crop. The limits on the
    padding amounts are PyTorch's: reflect needs ``pad < L``, circular needs
    ``pad <= L`` (L after cropping).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(4.0).reshape(1, 1, 4)
    >>> pad(x, ((2, 1),), mode="reflect")
    array([[[2., 1., 0., 1., 2., 3., 2.]]])
    >>> pad(x, ((-1, 2),), mode="circular")
    array([[[1., 2., 3., 1., 2.]]])
    >>> pad(np.ones((1, 1, 2, 2)), (1, 0)).shape
    (1, 1, 4, 2)
    """
    a = _input(x)
    n = a.ndim - 2
    pairs = _pairs(padding, n)
    mode = _mode(mode)
    grow = [(max(lo, 0), max(hi, 0)) for lo, hi in pairs]
    crops = [(max(-lo, 0), max(-hi, 0)) for lo, hi in pairs]
    sizes = a.shape[2:]

    if mode in ("zeros", "circular"):
        # Crop first, then pad what is left.
        for d, ((c_lo, c_hi), (p_lo, p_hi), size) in enumerate(zip(crops, grow, sizes)):
            if c_lo + c_hi > size:
                raise ValueError(
                    f"padding {pairs[d]} crops {c_lo + c_hi} entries from spatial dim {d} "
                    f"of size {size}"
                )
            left = size - c_lo - c_hi
            if mode == "circular" and max(p_lo, p_hi) > left:
                raise ValueError(
                    f"circular padding {pairs[d]} of spatial dim {d} wraps around more than "
                    f"once: each side must be <= the (cropped) size {left}"
                )
        a = _crop(a, crops)
        return np.pad(a, [(0, 0), (0, 0)] + grow, mode=_NP_MODES[mode])

    # reflect / replicate: pad the whole input first, then crop.
    for d, ((c_lo, c_hi), (p_lo, p_hi), size) in enumerate(zip(crops, grow, sizes)):
        if mode == "reflect" and max(p_lo, p_hi) >= size:
            raise ValueError(
                f"reflect padding {pairs[d]} of spatial dim {d} must be smaller than its "
                f"size {size} on each side"
            )
        if mode == "replicate" and size == 0 and p_lo + p_hi > 0:
            raise ValueError(f"cannot replicate-pad spatial dim {d}: it is empty")
        if c_lo + c_hi >= size + p_lo + p_hi:
            raise ValueError(
                f"padding {pairs[d]} of spatial dim {d} (size {size}) leaves nothing"
            )
    a = np.pad(a, [(0, 0), (0, 0)] + grow, mode=_NP_MODES[mode])
    return _crop(a, crops)


# --------------------------------------------------------------------------
# conv
# --------------------------------------------------------------------------


def conv(
    x: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrTuple = 1,
    padding: Padding | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """N-d convolution (cross-correlation), like ``torch.nn.ConvNd``.

    ``out[b, o, *i] = bias[o] + sum_{c, *m} w[o, c, *m] * xp[b, g*C_in_g + c, *(i*stride + m*dilation)]``
    where ``xp`` is ``x`` padded with :func:`pad` and ``g = o // C_out_g``
    is the group of output channel ``o``.

    Parameters
    ----------
    x : array_like, shape (N, C_in, *spatial)
        Input with 1, 2 or 3 spatial dims; converted to float64.
    weight : array_like, shape (C_out, C_in // groups, *kernel)
        As in ``torch.nn.ConvNd``.
    bias : array_like, shape (C_out,), optional
    stride, dilation : int or tuple of ints, each >= 1
    padding : int, tuple, "valid" or "same"
        Anything :func:`pad` takes (so asymmetric ``(lo, hi)`` pairs and
        negative, cropping, amounts too), or ``"valid"`` (none) or ``"same"``
        (stride must be 1; per dim ``total = dilation * (k - 1)``,
        ``lo = total // 2``, ``hi = total - lo``, as PyTorch does).
    groups : int
        C_in and C_out must both be divisible by it.
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
        How the padding is filled, see :func:`pad`.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(N, C_out, *out)`` with
        ``out = (L + lo + hi - dilation * (k - 1) - 1) // stride + 1``.

    Raises
    ------
    ValueError
        On inconsistent shapes or arguments: ranks of ``x`` and ``weight``,
        channel counts and groups, bias shape, tuples of the wrong length,
        stride or dilation < 1, ``"same"`` with stride > 1, an unknown mode
        or padding string, or a (dilated) kernel larger than the padded input.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(5.0).reshape(1, 1, 5)
    >>> w = np.array([[[1.0, 0.0, -1.0]]])
    >>> conv(x, w)
    array([[[-2., -2., -2.]]])
    >>> conv(x, w, padding=((1, 0),), stride=2)
    array([[[-1., -2.]]])
    >>> conv(x, w, padding="same", padding_mode="circular")
    array([[[ 3., -2., -2., -2.,  3.]]])
    """
    a = _input(x)
    n = a.ndim - 2
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != a.ndim:
        raise ValueError(
            f"weight must have shape (C_out, C_in // groups, *kernel) with {n} kernel dims "
            f"to match x of shape {a.shape}, got shape {w.shape}"
        )
    batch, c_in = a.shape[:2]
    c_out, c_in_g = w.shape[:2]
    kernel = w.shape[2:]
    g = _groups(groups, c_in, c_out)
    if c_in_g != c_in // g:
        raise ValueError(
            f"weight has {c_in_g} input channels per group, but x has {c_in} channels and "
            f"groups={g}, so it should have {c_in // g}"
        )
    if any(k < 1 for k in kernel):
        raise ValueError(f"kernel size must be >= 1 in every dim, got {kernel}")
    s = _tuple(stride, n, "stride", 1)
    d = _tuple(dilation, n, "dilation", 1)
    b = _bias(bias, c_out)
    mode = _mode(padding_mode)

    if isinstance(padding, str):
        if padding == "valid":
            pairs: tuple[tuple[int, int], ...] = ((0, 0),) * n
        elif padding == "same":
            if any(si != 1 for si in s):
                raise ValueError(f"padding='same' needs stride 1, got stride {s}")
            totals = [di * (k - 1) for di, k in zip(d, kernel)]
            pairs = tuple((t // 2, t - t // 2) for t in totals)
        else:
            raise ValueError(f"padding string must be 'valid' or 'same', got {padding!r}")
    else:
        pairs = _pairs(padding, n)

    xp = pad(a, pairs, mode)
    span = [di * (k - 1) + 1 for di, k in zip(d, kernel)]
    if any(L < sp for L, sp in zip(xp.shape[2:], span)):
        raise ValueError(
            f"kernel {kernel} with dilation {d} spans {tuple(span)}, larger than the padded "
            f"input {xp.shape[2:]} (input {a.shape[2:]}, padding {pairs})"
        )
    out_size = tuple((L - sp) // si + 1 for L, sp, si in zip(xp.shape[2:], span, s))

    # Split channels into groups: input channel g*C_in_g + c, output g*C_out_g + o.
    xg = xp.reshape((batch, g, c_in // g) + xp.shape[2:])
    wg = w.reshape((g, c_out // g, c_in // g) + kernel)
    out = np.zeros((batch, g, c_out // g) + out_size)
    for m in np.ndindex(*kernel):
        # The input entries tap m sees: m*dilation + i*stride for each output i.
        window = tuple(
            slice(mi * di, mi * di + si * (o - 1) + 1, si)
            for mi, di, si, o in zip(m, d, s, out_size)
        )
        patch = xg[(Ellipsis,) + window]  # (N, G, C_in_g, *out)
        out += np.einsum("ngc...,goc->ngo...", patch, wg[(Ellipsis,) + m])
    return _add_bias(out.reshape((batch, c_out) + out_size), b)


# --------------------------------------------------------------------------
# conv_transpose
# --------------------------------------------------------------------------


def conv_transpose(
    x: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> np.ndarray:
    """N-d transposed convolution, like ``torch.nn.ConvTransposeNd``.

    Each input entry ``x[b, c, *i]`` is scattered, times ``w[c, o, *m]``,
    onto position ``i*stride + m*dilation`` of a full buffer of size
    ``(L - 1)*stride + dilation*(k - 1) + 1`` per dim (output channel
    ``g*C_out_g + o`` for input channel ``c`` in group ``g``). The output
    is that buffer with ``padding`` dropped from the start, ``out`` entries
    long (positions past the end of the buffer, reached through
    ``output_padding``, are zero), plus the bias.

    Parameters
    ----------
    x : array_like, shape (N, C_in, *spatial)
        Input with 1, 2 or 3 spatial dims; converted to float64.
    weight : array_like, shape (C_in, C_out // groups, *kernel)
        As in ``torch.nn.ConvTransposeNd``.
    bias : array_like, shape (C_out,), optional
    stride, dilation : int or tuple of ints, each >= 1
    padding : int or tuple of ints, each >= 0
        Dropped from both ends of the full buffer (as in PyTorch: it undoes
        the padding of the matching forward convolution).
    output_padding : int or tuple of ints
        Extra entries at the end; each must be >= 0 and smaller than
        ``max(stride, dilation)`` in its dim, as PyTorch requires.
    groups : int
        C_in and C_out must both be divisible by it.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(N, C_out, *out)`` with ``out = (L - 1)*stride -
        2*padding + dilation*(k - 1) + output_padding + 1``.

    Raises
    ------
    ValueError
        On inconsistent shapes or arguments: ranks of ``x`` and ``weight``,
        channel counts and groups, bias shape, tuples of the wrong length,
        stride or dilation < 1, negative padding, output_padding out of
        range, or an output size < 1.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[[1.0, 2.0]]])
    >>> w = np.array([[[1.0, 10.0]]])
    >>> conv_transpose(x, w, stride=2)
    array([[[ 1., 10.,  2., 20.]]])
    >>> conv_transpose(x, w, stride=2, padding=1, output_padding=1)
    array([[[10.,  2., 20.]]])
    """
    a = _input(x)
    n = a.ndim - 2
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != a.ndim:
        raise ValueError(
            f"weight must have shape (C_in, C_out // groups, *kernel) with {n} kernel dims "
            f"to match x of shape {a.shape}, got shape {w.shape}"
        )
    batch, c_in = a.shape[:2]
    size = a.shape[2:]
    if w.shape[0] != c_in:
        raise ValueError(
            f"weight has {w.shape[0]} input channels (its first dim), but x has {c_in}"
        )
    g = _as_int(groups, "groups")
    if g < 1:
        raise ValueError(f"groups must be >= 1, got {g}")
    c_out = w.shape[1] * g
    _groups(g, c_in, c_out)
    kernel = w.shape[2:]
    if any(k < 1 for k in kernel):
        raise ValueError(f"kernel size must be >= 1 in every dim, got {kernel}")
    if any(L < 1 for L in size):
        raise ValueError(f"x must have at least one entry in every spatial dim, got {size}")
    s = _tuple(stride, n, "stride", 1)
    d = _tuple(dilation, n, "dilation", 1)
    p = _tuple(padding, n, "padding", 0)
    op = _tuple(output_padding, n, "output_padding", 0)
    for dim, (opi, si, di) in enumerate(zip(op, s, d)):
        if opi >= max(si, di):
            raise ValueError(
                f"output_padding must be smaller than stride or dilation, got output_padding "
                f"{opi} with stride {si} and dilation {di} in spatial dim {dim}"
            )
    b = _bias(bias, c_out)

    full = tuple((L - 1) * si + di * (k - 1) + 1 for L, si, di, k in zip(size, s, d, kernel))
    out_size = tuple(f - 2 * pi + opi for f, pi, opi in zip(full, p, op))
    if any(o < 1 for o in out_size):
        raise ValueError(
            f"output size {out_size} is too small (input {size}, kernel {kernel}, stride {s}, "
            f"padding {p}, output_padding {op}, dilation {d})"
        )
    # The buffer also covers output_padding entries past the full size.
    buf_size = tuple(max(f, pi + o) for f, pi, o in zip(full, p, out_size))

    xg = a.reshape((batch, g, c_in // g) + size)
    wg = w.reshape((g, c_in // g, c_out // g) + kernel)
    buf = np.zeros((batch, g, c_out // g) + buf_size)
    for m in np.ndindex(*kernel):
        # Input entry i lands at i*stride + m*dilation.
        window = tuple(
            slice(mi * di, mi * di + si * (L - 1) + 1, si)
            for mi, di, si, L in zip(m, d, s, size)
        )
        buf[(Ellipsis,) + window] += np.einsum("ngc...,gco->ngo...", xg, wg[(Ellipsis,) + m])
    crop = tuple(slice(pi, pi + o) for pi, o in zip(p, out_size))
    out = buf[(Ellipsis,) + crop].reshape((batch, c_out) + out_size)
    return _add_bias(out, b)
