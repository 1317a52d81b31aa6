"""The weight operations every transform is built from: dilation to dense kernels, phase splits, channel permutations in each order, and the checks they share."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .errors import FoldError
from .rearrange import phase_permutation
from .spec import ConvSpec


# ---------------------------------------------------------------------------- helpers
def _gather_axis(w: torch.Tensor, axis: int, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``w`` gathered along ``axis`` at ``index`` (any shape), zero where not ``valid``."""
    size = w.shape[axis]
    zero_shape = list(w.shape)
    zero_shape[axis] = 1
    padded = torch.cat([w, w.new_zeros(zero_shape)], axis)
    idx = torch.where(valid, index, torch.full_like(index, size)).reshape(-1).to(w.device)
    out = padded.index_select(axis, idx)
    return out.reshape(*w.shape[:axis], *index.shape, *w.shape[axis + 1 :])


def dense_kernel(weight: torch.Tensor, dilation: Sequence[int]) -> torch.Tensor:
    """Write a dilated kernel out densely: taps at multiples of ``dilation``, zeros between.

    >>> w = torch.tensor([[[1., 2., 3.]]])
    >>> dense_kernel(w, (2,)).tolist()
    [[[1.0, 0.0, 2.0, 0.0, 3.0]]]
    """
    for i, d in enumerate(dilation):
        if d == 1:
            continue
        axis = 2 + i
        k = weight.shape[axis]
        e = torch.arange(d * (k - 1) + 1)
        weight = _gather_axis(weight, axis, e // d, e % d == 0)
    return weight


def phase_weight(
    weight: torch.Tensor,
    stride: Sequence[int],
    in_block: Sequence[int],
    out_block: Sequence[int],
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Weight of the same conv acting on phase-split input and producing phase-split output.

    ``weight`` is a dense (dilation 1) conv weight ``(O, C/g, *E)``. The result
    has shape ``(O*prod(out_block), C/g*prod(in_block), *Q)`` with
    ``Q = ceil((E + (b-1)*s) / B)`` per dim, in ``crd`` channel order, and the
    new stride ``s*b/B`` (which must be an integer).

    >>> w = torch.arange(1., 4.).reshape(1, 1, 3)          # taps 1 2 3, stride 2
    >>> w2, s2 = phase_weight(w, (2,), (2,), (1,))          # to_depth with block 2
    >>> w2.tolist(), s2
    ([[[1.0, 3.0], [2.0, 0.0]]], (1,))
    """
    new_stride = []
    for i, (s, B, b) in enumerate(zip(stride, in_block, out_block)):
        if (s * b) % B:
            raise FoldError(
                f"stride {s} times output block {b} is not divisible by input block {B} in dim {i}; "
                f"choose an input block that divides {s * b}"
            )
        new_stride.append(s * b // B)
        axis = 2 + i
        E = weight.shape[axis]
        Q = -(-(E + (b - 1) * s) // B)
        j = torch.arange(b).view(b, 1, 1)
        u = torch.arange(B).view(1, B, 1)
        q = torch.arange(Q).view(1, 1, Q)
        e = q * B + u - j * s
        g = _gather_axis(weight, axis, e, (e >= 0) & (e < E))  # (O, C, ..., b, B, Q, ...)
        g = g.movedim(axis, 1).movedim(axis + 1, 3)  # (O, b, C, B, ..., Q, ...)
        weight = g.reshape(g.shape[0] * b, g.shape[2] * B, *g.shape[4:])
    return weight, tuple(new_stride)


def space_weight(weight: torch.Tensor, block: Sequence[int]) -> torch.Tensor:
    """Inverse direction: a dense weight over ``crd``-folded channels -> a kernel on the unfolded map.

    ``(O, C*R, *E) -> (O, C, *(E*b))`` with ``W'[o, c, e*b + u] = W[o, c*b + u, e]``.

    >>> w = torch.tensor([[[1.], [2.]]])        # 2 phases, kernel 1
    >>> space_weight(w, (2,)).tolist()
    [[[1.0, 2.0]]]
    """
    n = len(block)
    for i in reversed(range(n)):  # the last dim's phase varies fastest in the channel index
        b = block[i]
        O, CR, *K = weight.shape
        w = weight.reshape(O, CR // b, b, *K)  # (O, C', b, *K)
        axis = 3 + i  # spatial axis i in the split tensor
        w = w.movedim(2, axis)  # (O, C', ..., E_i, b, ...)
        weight = w.reshape(O, CR // b, *K[:i], K[i] * b, *K[i + 1 :])
    return weight


def _permute_in(weight: torch.Tensor, block: Sequence[int], order: str, groups: int, inverse: bool) -> torch.Tensor:
    """Reorder the input-channel axis between ``crd`` and ``order``."""
    if order == "crd":
        return weight
    if groups != 1:
        raise FoldError(
            f"order={order!r} interleaves channels of different groups (groups={groups}); "
            "use order='crd', which keeps each group's channels together"
        )
    R = math.prod(block)
    perm = phase_permutation(weight.shape[1] // R, block, order)
    if inverse:  # weight is in crd order; return it in `order`
        return weight.index_select(1, perm.to(weight.device))
    return weight.index_select(1, torch.argsort(perm).to(weight.device))


def _permute_out(t: torch.Tensor, block: Sequence[int], order: str) -> torch.Tensor:
    """Reorder axis 0 (output channels, crd order) into ``order`` for a following depth_to_space."""
    if order == "crd":
        return t
    R = math.prod(block)
    perm = phase_permutation(t.shape[0] // R, block, order)
    return t.index_select(0, perm.to(t.device))


def phase_bias(bias: torch.Tensor, block: Sequence[int], order: str = "crd") -> torch.Tensor:
    """A per-channel bias repeated for each of the ``prod(block)`` output phases, in ``order``.

    >>> phase_bias(torch.tensor([1., 2.]), (2,)).tolist()
    [1.0, 1.0, 2.0, 2.0]
    >>> phase_bias(torch.tensor([1., 2.]), (2,), "dcr").tolist()
    [1.0, 2.0, 1.0, 2.0]
    """
    return _permute_out(bias.repeat_interleave(math.prod(block)), block, order)


def check_stride_divisible(stride: Sequence[int], block: Sequence[int]) -> None:
    """Raise :class:`FoldError` unless ``block`` divides ``stride`` in every dim (what fold/to_depth need).

    >>> check_stride_divisible((2, 2), (2, 1))
    >>> check_stride_divisible((3,), (2,))
    Traceback (most recent call last):
    ...
    pixelfold.errors.FoldError: stride 3 is not divisible by block 2 in dim 0; use pixelfold.polyphase (any stride) or a block that divides 3
    """
    for i, (s, b) in enumerate(zip(stride, block)):
        if s % b:
            raise FoldError(
                f"stride {s} is not divisible by block {b} in dim {i}; use pixelfold.polyphase "
                f"(any stride) or a block that divides {s}"
            )


def _unsupported_mode(spec: ConvSpec, what: str, allowed: tuple[str, ...]) -> None:
    if spec.padding_mode not in allowed:
        raise FoldError(
            f"padding_mode={spec.padding_mode!r} pads with single pixels, not whole blocks, so {what} "
            f"cannot move it exactly (supported: {', '.join(allowed)}); use pixelfold.fold, which pads "
            "explicitly before rearranging"
        )
