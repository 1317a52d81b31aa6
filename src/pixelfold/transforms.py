"""Pure weight maps between the exact forms of a convolution.

Every function here takes tensors and a :class:`~pixelfold.spec.ConvSpec` and
returns tensors and a spec; nothing is an ``nn.Module`` and nothing is
mutated. All maps are gathers (``index_select``), so gradients flow through
them: the modules in :mod:`pixelfold.layers` call them in ``forward`` to keep
training on the original weight.

Notation, one spatial dim (the maps act on every dim in turn, which makes the
phase index row-major): a conv reads ``x[t*s - lo + e]`` with tap ``e`` of
the *dense* kernel of span ``E = d*(k-1)+1`` (dilation written out with zero
taps). Cutting the input into blocks of ``B`` (phase ``u``) and the output into
blocks of ``b`` (phase ``j``) gives a conv with stride ``s*b/B`` whose weight is

    W'[o*b + j, c*B + u, q] = W_dense[o, c, q*B + u - j*s]      (0 outside [0, E))

:func:`phase_weight` builds exactly this; ``to_depth`` is ``b = 1``, ``fold``
too (with explicit padding), ``polyphase`` is ``B = s*b`` (stride 1).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .errors import FoldError
from .rearrange import check_block, phase_permutation
from .spec import ConvSpec

from .weight_ops import _gather_axis, dense_kernel, phase_weight, space_weight, _permute_in, _permute_out, phase_bias, check_stride_divisible, _unsupported_mode  # noqa: F401  (re-exported)

__all__ = [
    "dense_kernel",
    "phase_weight",
    "phase_bias",
    "space_weight",
    "to_space_weight",
    "to_depth_weight",
    "phase_conv_weight",
    "subpixel_geometry",
    "subpixel_weight",
    "subpixel_padding",
    "subpixel_phase_padding",
    "subpixel_phase_weights",
    "transposed_weight",
    "trim_zero_taps",
    "conv_layout",
]


# ---------------------------------------------------------------------------- seed equivalence
def to_space_weight(
    weight: torch.Tensor, spec: ConvSpec, block: int | Sequence[int], order: str = "crd"
) -> tuple[torch.Tensor, ConvSpec]:
    """Weight and spec of the conv that acts on ``depth_to_space(x, block, order)``.

    The result computes ``conv(x)`` exactly: kernel ``(d*(k-1)+1)*b``,
    stride ``s*b``, padding ``p*b``, dilation 1, channels ``C/prod(block)``.

    >>> spec = ConvSpec.make(256, 1, 3, padding=1)
    >>> w, s = to_space_weight(torch.randn(1, 256, 3, 3), spec, 16)
    >>> tuple(w.shape), str(s)
    ((1, 1, 48, 48), 'Conv2d 1→1 k48×48 s16×16 p16×16')
    """
    if spec.transposed:
        raise FoldError("to_space takes a convolution, not a transposed convolution; see pixelfold.subpixel")
    b = check_block(block, spec.dims)
    R = math.prod(b)
    _unsupported_mode(spec, "to_space", ("zeros", "circular"))
    per_group = spec.in_channels // spec.groups
    if per_group % R:
        raise FoldError(
            f"each group has {per_group} input channels (in_channels {spec.in_channels}, groups {spec.groups}), "
            f"which is not divisible by prod(block) = {R}; use a block whose product divides {per_group}"
        )
    w = _permute_in(weight, b, order, spec.groups, inverse=False)
    w = space_weight(dense_kernel(w, spec.dilation), b)
    new = spec.replace(
        in_channels=spec.in_channels // R,
        kernel=tuple(w.shape[2:]),
        stride=tuple(s * bi for s, bi in zip(spec.stride, b)),
        padding=tuple((lo * bi, hi * bi) for (lo, hi), bi in zip(spec.padding, b)),
        dilation=(1,) * spec.dims,
    )
    return w, new


def to_depth_weight(
    weight: torch.Tensor, spec: ConvSpec, block: int | Sequence[int], order: str = "crd"
) -> tuple[torch.Tensor, ConvSpec]:
    """Weight and spec of the conv that acts on ``space_to_depth(x, block, order)``.

    Needs stride and padding divisible by the block in every dim; the kernel
    is written out densely and zero-padded up to a multiple of the block.

    >>> spec = ConvSpec.make(3, 64, 8, stride=2, padding=2)
    >>> w, s = to_depth_weight(torch.randn(64, 3, 8, 8), spec, 2)
    >>> tuple(w.shape), str(s)
    ((64, 12, 4, 4), 'Conv2d 12→64 k4×4 s1×1 p1×1')
    """
    if spec.transposed:
        raise FoldError("to_depth takes a convolution, not a transposed convolution; see pixelfold.subpixel")
    b = check_block(block, spec.dims)
    R = math.prod(b)
    _unsupported_mode(spec, "to_depth", ("zeros", "circular"))
    check_stride_divisible(spec.stride, b)
    for i, ((lo, hi), bi) in enumerate(zip(spec.padding, b)):
        if lo % bi or hi % bi:
            raise FoldError(
                f"padding ({lo}, {hi}) is not divisible by block {bi} in dim {i}; use pixelfold.fold, "
                "which pads explicitly before rearranging"
            )
    w, stride = phase_weight(dense_kernel(weight, spec.dilation), spec.stride, b, (1,) * spec.dims)
    w = _permute_in(w, b, order, spec.groups, inverse=True)
    new = spec.replace(
        in_channels=spec.in_channels * R,
        kernel=tuple(w.shape[2:]),
        stride=stride,
        padding=tuple((lo // bi, hi // bi) for (lo, hi), bi in zip(spec.padding, b)),
        dilation=(1,) * spec.dims,
    )
    return w, new


# ---------------------------------------------------------------------------- fold / polyphase
def phase_conv_weight(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    in_block: Sequence[int],
    out_block: Sequence[int],
    order: str = "crd",
) -> tuple[torch.Tensor, torch.Tensor | None, ConvSpec]:
    """The inner conv of ``fold``/``polyphase``: padding-free, on phase-split input and output.

    The caller pads the input (with the original padding mode), crops or
    zero-extends it to the length the inner conv needs, applies
    ``space_to_depth(in_block)``, this conv, then ``depth_to_space(out_block)``.
    The returned spec has padding 0.

    >>> spec = ConvSpec.make(1, 1, 48, stride=1)
    >>> w, b, s = phase_conv_weight(torch.randn(1, 1, 48, 48), None, spec, (16, 16), (16, 16))
    >>> str(s)
    'Conv2d 256→256 k4×4 s1×1 p0×0'
    """
    if spec.transposed:
        raise FoldError("fold and polyphase take a convolution, not a transposed one; see pixelfold.subpixel")
    w, stride = phase_weight(dense_kernel(weight, spec.dilation), spec.stride, in_block, out_block)
    w = _permute_in(w, in_block, order, spec.groups, inverse=True)
    R_out = math.prod(out_block)
    if R_out > 1:
        w = _permute_out(w, out_block, order)
    if bias is not None and R_out > 1:
        bias = phase_bias(bias, out_block, order)
    new = spec.replace(
        in_channels=spec.in_channels * math.prod(in_block),
        out_channels=spec.out_channels * R_out,
        kernel=tuple(w.shape[2:]),
        stride=stride,
        padding=((0, 0),) * spec.dims,
        dilation=(1,) * spec.dims,
        padding_mode="zeros",
    )
    return w, bias, new


# ---------------------------------------------------------------------------- transposed convs
def conv_layout(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A transposed conv's weight ``(C_in, O/g, *K)`` in conv layout ``(O, C_in/g, *K)``."""
    C_in, O_g, *K = weight.shape
    return weight.reshape(groups, C_in // groups, O_g, *K).transpose(1, 2).reshape(groups * O_g, C_in // groups, *K)


def subpixel_geometry(spec: ConvSpec) -> list[dict[str, object]]:
    """Per dim, where each output phase of a transposed conv reads its input.

    Output position ``t = T*s + j`` of ``ConvTranspose(k, s, p, d)`` equals
    ``sum_q x[T + a_j - q] * W_dense[r_j + q*s]`` for ``q < Q_j`` with
    ``a_j, r_j = divmod(j + p, s)`` and ``Q_j = ceil((E - r_j) / s)``.
    Returns, per dim, ``s``, ``E``, the per-phase ``a``, ``r``, ``Q``, the
    shared window ``lo..hi`` (input offsets relative to ``T``) and ``extra``:
    how many more output blocks than input positions are needed
    (``ceil(L_out / s) = L + extra`` for every input length ``L``).
    """
    geo = []
    for s, k, d, (p, _), op in zip(spec.stride, spec.kernel, spec.dilation, spec.padding, spec.output_padding):
        E = d * (k - 1) + 1
        a = [(j + p) // s for j in range(s)]
        r = [(j + p) % s for j in range(s)]
        Q = [max(0, -(-(E - rj) // s)) for rj in r]
        live = [j for j in range(s) if Q[j] > 0]
        lo = min(a[j] - Q[j] + 1 for j in live)
        hi = max(a[j] for j in live)
        extra = -(-(E + op - 2 * p) // s) - 1
        geo.append(dict(s=s, E=E, a=a, r=r, Q=Q, lo=lo, hi=hi, extra=extra))
    return geo


def subpixel_weight(
    weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec, order: str = "crd"
) -> tuple[torch.Tensor, torch.Tensor | None, ConvSpec]:
    """Shared-window sub-pixel form of a transposed conv: one stride-1 conv + depth_to_space(stride).

    The conv spec may carry asymmetric (even negative: a crop) padding; after
    ``depth_to_space`` the caller crops to the transposed conv's output size.
    Phases whose taps need different input offsets share one window, so the
    kernel can hold zero taps (3×3 per phase for k=4, s=2, p=1).

    >>> t = torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
    >>> w, b, s = subpixel_weight(t.weight, t.bias, ConvSpec.from_module(t))
    >>> tuple(w.shape), str(s)
    ((16, 8, 3, 3), 'Conv2d 8→16 k3×3 s1×1 p1×1')
    """
    if not spec.transposed:
        raise FoldError("subpixel takes a transposed convolution (nn.ConvTransposeNd)")
    if order != "crd" and spec.groups != 1:
        raise FoldError(
            f"order={order!r} interleaves the output channels of different groups (groups={spec.groups}); "
            "use order='crd', which keeps each group's channels together"
        )
    geo = subpixel_geometry(spec)
    w = dense_kernel(conv_layout(weight, spec.groups), spec.dilation)
    for i, g in enumerate(geo):
        s, E, lo, hi = g["s"], g["E"], g["lo"], g["hi"]
        a = torch.tensor(g["a"]).view(s, 1, 1)
        r = torch.tensor(g["r"]).view(s, 1, 1)
        k = torch.arange(hi - lo + 1).view(1, 1, -1)  # type: ignore[operator]
        e = r + (a - lo - k) * s
        valid = (e >= 0) & (e < E) & (a - lo - k >= 0)
        axis = 2 + i
        gth = _gather_axis(w, axis, e, valid)  # (O, C, ..., s, 1, K, ...)
        gth = gth.movedim(axis, 1).squeeze(axis + 1)  # (O, s, C, ..., K, ...)
        w = gth.reshape(gth.shape[0] * s, *gth.shape[2:])
    R = math.prod(spec.stride)
    w = _permute_out(w, spec.stride, order)
    if bias is not None:
        bias = phase_bias(bias, spec.stride, order)
    new = ConvSpec(
        in_channels=spec.in_channels,
        out_channels=spec.out_channels * R,
        kernel=tuple(w.shape[2:]),
        stride=(1,) * spec.dims,
        padding=subpixel_padding(spec),
        dilation=(1,) * spec.dims,
        groups=spec.groups,
        bias=spec.bias,
    )
    return w, bias, new


def subpixel_padding(spec: ConvSpec) -> tuple[tuple[int, int], ...]:
    """Padding ``(lo, hi)`` per dim (negative: crop) of the shared-window sub-pixel conv.

    It yields ``ceil(L_out / s)`` output blocks or more for every input length.

    >>> subpixel_padding(ConvSpec.from_module(torch.nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1)))
    ((1, 1), (1, 1))
    """
    return tuple((-g["lo"], max(0, g["extra"] + g["hi"])) for g in subpixel_geometry(spec))  # type: ignore


def subpixel_phase_padding(spec: ConvSpec) -> list[tuple[tuple[int, int], ...]]:
    """Per output phase (row-major), the ``(lo, hi)`` padding per dim of its own conv (negative: crop)."""
    geo = subpixel_geometry(spec)
    return [tuple((g["Q"][j] - 1 - g["a"][j], g["extra"] + g["a"][j]) for g, j in zip(geo, phase))  # type: ignore
            for phase in _row_major(spec.stride)]


def subpixel_phase_weights(
    weight: torch.Tensor, spec: ConvSpec
) -> list[tuple[tuple[int, ...], torch.Tensor | None, tuple[tuple[int, int], ...]]]:
    """Exact-MAC sub-pixel form: one conv per output phase, each with its own window.

    Returns, for each phase (row-major), ``(phase, weight, padding)``:
    ``weight`` is ``None`` where the phase has no tap (its output is the bias
    alone); ``padding`` is per dim ``(lo, hi)`` (negative: crop), chosen so
    every phase conv yields the same number of output blocks.

    >>> t = torch.nn.ConvTranspose1d(1, 1, 4, stride=2, padding=1, bias=False)
    >>> [(ph, tuple(w.shape), pad) for ph, w, pad in subpixel_phase_weights(t.weight, ConvSpec.from_module(t))]
    [((0,), (1, 1, 2), ((1, 0),)), ((1,), (1, 1, 2), ((0, 1),))]
    """
    if not spec.transposed:
        raise FoldError("subpixel takes a transposed convolution (nn.ConvTransposeNd)")
    geo = subpixel_geometry(spec)
    dense = dense_kernel(conv_layout(weight, spec.groups), spec.dilation)
    out = []
    for phase, pads in zip(_row_major(spec.stride), subpixel_phase_padding(spec)):
        w: torch.Tensor | None = dense
        for i, j in enumerate(phase):
            g = geo[i]
            Q, r = g["Q"][j], g["r"][j]  # type: ignore[index]
            if Q == 0:
                w = None
            elif w is not None:
                w = w.narrow(2 + i, r, w.shape[2 + i] - r)[(slice(None),) * (2 + i) + (slice(None, None, g["s"]),)]
        if w is not None:
            w = w.flip(list(range(2, 2 + spec.dims)))
        out.append((phase, w, pads))
    return out


def _row_major(sizes: Sequence[int]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for s in sizes:
        out = [p + (j,) for p in out for j in range(s)]
    return out


def transposed_weight(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    block: int | Sequence[int],
    order: str = "crd",
) -> tuple[torch.Tensor, torch.Tensor | None, ConvSpec]:
    """The transposed conv equal to ``depth_to_space(conv(x), block, order)``.

    ``conv`` must have stride 1, dilation 1, zero padding equal on both sides
    with ``p <= k - 1`` per dim, and a bias (if any) equal across each
    channel's ``prod(block)`` phases. The result has kernel ``k*b``, stride
    ``b`` and padding ``(k-1-p)*b``.

    >>> spec = ConvSpec.make(8, 16, 3, padding=1)
    >>> w, b, s = transposed_weight(torch.randn(16, 8, 3, 3), None, spec, 2)
    >>> tuple(w.shape), str(s)
    ((8, 4, 6, 6), 'ConvTranspose2d 8→4 k6×6 s2×2 p2×2')
    """
    if spec.transposed:
        raise FoldError("transposed takes a (stride-1) convolution followed by depth_to_space; this one is already "
                        "a transposed convolution")
    blk = check_block(block, spec.dims)
    R = math.prod(blk)
    if spec.groups > 1 and (order != "crd" or spec.out_channels % (R * spec.groups)):
        return _transposed_interleaved_groups(weight, bias, spec, blk, order)
    if spec.out_channels % (R * spec.groups):
        raise FoldError(
            f"out_channels {spec.out_channels} is not divisible by prod(block) * groups = {R * spec.groups}; "
            "pass the block of the depth_to_space that follows the conv"
        )
    if any(s != 1 for s in spec.stride) or any(d != 1 for d in spec.dilation):
        raise FoldError(
            f"transposed needs a conv with stride 1 and dilation 1, got stride {spec.stride}, "
            f"dilation {spec.dilation}: no single transposed conv equals it; keep the conv + depth_to_space"
        )
    if spec.padding_mode != "zeros":
        raise FoldError(f"transposed needs padding_mode='zeros', got {spec.padding_mode!r} (a transposed conv "
                        "pads only with zeros); keep the conv + depth_to_space")
    for i, ((lo, hi), k) in enumerate(zip(spec.padding, spec.kernel)):
        if lo != hi or lo > k - 1:
            raise FoldError(
                f"padding ({lo}, {hi}) in dim {i} cannot become a transposed conv's padding: it must be equal "
                f"on both sides and at most kernel-1 = {k - 1}; keep the conv + depth_to_space"
            )
    O = spec.out_channels // R
    # weight in crd order: (O*R, C/g, *K) -> (O, R..., C/g, *K)
    w = weight.index_select(0, torch.argsort(phase_permutation(O, blk, order)).to(weight.device))
    if bias is not None:
        b_crd = bias.index_select(0, torch.argsort(phase_permutation(O, blk, order)).to(bias.device)).view(O, R)
        if not torch.equal(b_crd, b_crd[:, :1].expand(O, R)):
            raise FoldError(
                "the conv's bias differs between the phases of one output channel, which no transposed conv "
                "can express (its bias is one value per channel); keep the conv + depth_to_space"
            )
        bias = b_crd[:, 0].clone()
    # Inverse of subpixel_weight with p_t = (k-1-p)*b: W_dense[r + (k-1-kk)*b] = V[phase r][kk].
    K = spec.kernel
    w = w.reshape(O, *blk, w.shape[1], *K)  # (O, b_1..b_n, C/g, K_1..K_n)
    n = spec.dims
    w = w.flip([2 + n + i for i in range(n)])  # kk -> k-1-kk
    # interleave: position q*b + r  <- axes (K_i, b_i)
    perm = [0, 1 + n] + [d for i in range(n) for d in (2 + n + i, 1 + i)]
    w = w.permute(perm).reshape(O, w.shape[1 + n], *[k * b for k, b in zip(K, blk)])
    # conv layout (O, C/g, ...) -> transposed layout (C_in, O/g, ...)
    g = spec.groups
    Cg = w.shape[1]
    w = w.reshape(g, O // g, Cg, *w.shape[2:]).transpose(1, 2).reshape(g * Cg, O // g, *w.shape[2:])
    new = ConvSpec(
        in_channels=spec.in_channels,
        out_channels=O,
        kernel=tuple(k * b for k, b in zip(K, blk)),
        stride=blk,
        padding=tuple(((k - 1 - lo) * b, (k - 1 - lo) * b) for k, (lo, _), b in zip(K, spec.padding, blk)),
        dilation=(1,) * n,
        groups=g,
        bias=bias is not None,
        transposed=True,
        output_padding=(0,) * n,
    )
    return w, bias, new


def _transposed_interleaved_groups(
    weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec, block: tuple[int, ...], order: str
) -> tuple[torch.Tensor, torch.Tensor | None, ConvSpec]:
    """:func:`transposed_weight` of a grouped conv whose groups do not hold whole output channels.

    ``dcr``/``focus`` take an output channel's phases from channels ``p*O + o``, and ``crd`` with
    ``O`` not divisible by the groups from ``o*R + p`` straddling a group boundary: they can lie in
    different groups of the conv, so the transposed conv cannot keep the conv's groups: an output channel reads
    input channels of several groups. Write the grouped weight out densely (zeros between groups),
    derive the ``groups=1`` transposed conv, then keep the largest grouping the connections still allow
    (``groups = 1`` when every output reads every group; the conv's own groups when the order happens
    to keep them apart).
    """
    g, C, Cg = spec.groups, spec.in_channels, spec.in_channels // spec.groups
    R = math.prod(block)
    if spec.out_channels % R:
        raise FoldError(f"out_channels {spec.out_channels} is not divisible by prod(block) = {R}; pass the block "
                        "of the depth_to_space that follows the conv")
    O = spec.out_channels // R
    per_group = spec.out_channels // g
    dense = weight.new_zeros(spec.out_channels, C, *weight.shape[2:])
    for k in range(g):
        dense[k * per_group:(k + 1) * per_group, k * Cg:(k + 1) * Cg] = weight[k * per_group:(k + 1) * per_group]
    w, b, new = transposed_weight(dense, bias, spec.replace(groups=1), block, order)  # w: (C, O, *K')
    # which conv group feeds each output channel o: channel k = position of (o, phase) in `order`
    source = phase_permutation(O, block, order)  # x_order[:, k] = x_crd[:, source[k]], crd index = o*R + phase
    feeds = torch.zeros(g, O, dtype=torch.bool)
    feeds[torch.arange(spec.out_channels) // per_group, source // R] = True
    for g2 in sorted((d for d in range(1, math.gcd(g, O) + 1) if g % d == 0 and O % d == 0), reverse=True):
        blocks = feeds.view(g2, g // g2, g2, O // g2)
        if not any(bool(blocks[i, :, j].any()) for i in range(g2) for j in range(g2) if i != j):
            break
    else:  # pragma: no cover - g2 = 1 always fits
        g2 = 1
    if g2 > 1:
        Cb, Ob = C // g2, O // g2
        w = torch.cat([w[i * Cb:(i + 1) * Cb, i * Ob:(i + 1) * Ob] for i in range(g2)], 0)
    return w, b, new.replace(groups=g2)


def trim_zero_taps(weight: torch.Tensor, spec: ConvSpec) -> tuple[torch.Tensor, ConvSpec]:
    """Drop all-zero taps from both ends of a transposed conv's kernel, where that is exact.

    Removing ``t`` zero taps from each end of a dim and ``t`` from its padding
    leaves ``ConvTranspose`` unchanged (same output size, same values), for
    ``t <= padding``. Used by ``transposed()`` so that a sub-pixel conv with
    structural zero taps (3×3 per phase from k=4, s=2, p=1) comes back as k=4, p=1.

    >>> w = torch.zeros(1, 1, 6); w[..., 1:5] = 1.0
    >>> spec = ConvSpec(1, 1, (6,), (2,), ((2, 2),), (1,), transposed=True)
    >>> w2, s2 = trim_zero_taps(w, spec)
    >>> w2.shape[-1], s2.padding
    (4, ((1, 1),))
    """
    if not spec.transposed or any(d != 1 for d in spec.dilation):
        return weight, spec
    kernel, padding = list(spec.kernel), list(spec.padding)
    for i in range(spec.dims):
        axis = 2 + i
        nonzero = weight.detach().ne(0).movedim(axis, 0).reshape(weight.shape[axis], -1).any(1)
        idx = torch.nonzero(nonzero).flatten()
        if idx.numel() == 0:
            continue
        lead, trail = int(idx[0]), weight.shape[axis] - 1 - int(idx[-1])
        t = min(lead, trail, padding[i][0])
        if t:
            weight = weight.narrow(axis, t, weight.shape[axis] - 2 * t)
            kernel[i] -= 2 * t
            padding[i] = (padding[i][0] - t, padding[i][1] - t)
    return weight, spec.replace(kernel=tuple(kernel), padding=tuple(padding))
