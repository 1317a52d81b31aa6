"""Space-to-depth and depth-to-space for 1, 2 and 3 spatial dims.

A block ``b = (b_1, ..., b_n)`` splits each spatial position ``s`` into a
block index ``s // b`` and an offset (the *phase*) ``s % b``. The phase index
is row-major over the offsets: in 2-D, ``phase = i * b_2 + j`` for row offset
``i`` and column offset ``j``. With ``R = prod(b)`` phases and ``C`` channels:

================  ==============================  ===========================================
order             output channel                  same as
================  ==============================  ===========================================
``"crd"``         ``c * R + phase``               ``torch.pixel_unshuffle`` / ``pixel_shuffle``,
                                                  ONNX ``DepthToSpace(mode="CRD")``
``"dcr"``         ``phase * C + c``               TF ``space_to_depth``, ONNX ``SpaceToDepth``,
                                                  ONNX ``DepthToSpace`` (default ``DCR``)
``"focus"``       ``phase_T * C + c``             YOLOv5 ``Focus`` (slice + cat), SPD-Conv:
                                                  like ``dcr`` but the *first* spatial offset
                                                  varies fastest (``phase_T = j * b_1 + i``)
================  ==============================  ===========================================

Both functions are layout-aware: a ``channels_last`` input is rearranged in
its own memory order and the result is ``channels_last`` too; for
``order="dcr"`` that is a copy of contiguous runs of ``b_n * C`` values.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import FoldError
from .spec import as_tuple

__all__ = ["space_to_depth", "depth_to_space", "ORDERS", "phase_permutation", "is_channels_last"]

ORDERS = ("crd", "dcr", "focus")


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise FoldError(f"order {order!r} is not one of {ORDERS}")


def check_block(block: int | Sequence[int], n: int) -> tuple[int, ...]:
    """Normalise ``block`` to ``n`` positive ints or raise :class:`FoldError`."""
    b = as_tuple(block, n, "block")
    if any(v < 1 for v in b):
        raise FoldError(f"block {b} must be positive in every dim")
    return b


def is_channels_last(x: torch.Tensor) -> bool:
    """True if ``x`` (N, C, *spatial) is stored channels-last and not also contiguous.

    >>> x = torch.zeros(1, 3, 4, 4).to(memory_format=torch.channels_last)
    >>> is_channels_last(x), is_channels_last(x.contiguous())
    (True, False)
    """
    return x.dim() >= 3 and x.size(1) > 1 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous()


def _channel_axes(n: int, order: str) -> list[str]:
    """Order of the factors of the output channel: 'c' and phase dims '0'..'n-1'."""
    phases = [str(i) for i in range(n)]
    if order == "crd":
        return ["c", *phases]
    if order == "dcr":
        return [*phases, "c"]
    return [*reversed(phases), "c"]


def phase_permutation(channels: int, block: Sequence[int], order: str) -> torch.Tensor:
    """Index ``p`` with ``x_order[:, k] == x_crd[:, p[k]]``.

    >>> phase_permutation(1, (2, 2), "focus").tolist()
    [0, 2, 1, 3]
    >>> phase_permutation(2, (2,), "dcr").tolist()
    [0, 2, 1, 3]
    """
    _check_order(order)
    n = len(block)
    crd_axes = _channel_axes(n, "crd")
    sizes = {"c": channels, **{str(i): b for i, b in enumerate(block)}}
    index = torch.arange(channels * math.prod(block)).reshape([sizes[a] for a in crd_axes])
    target = _channel_axes(n, order)
    return index.permute([crd_axes.index(a) for a in target]).reshape(-1)


def _check_input(x: torch.Tensor, name: str) -> int:
    if not isinstance(x, torch.Tensor):
        raise FoldError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    n = x.dim() - 2
    if not 1 <= n <= 3:
        raise FoldError(
            f"{name} expects (N, C, *spatial) with 1 to 3 spatial dims, got a tensor of rank {x.dim()} "
            f"(shape {tuple(x.shape)}); add a batch dim with x.unsqueeze(0) if it is missing"
        )
    return n


def _interleave(outer: Sequence[int], block: Sequence[int]) -> list[int]:
    """``(S_1/b_1, b_1, ..., S_n/b_n, b_n)``: each spatial dim split into (block index, phase)."""
    return [d for o, bi in zip(outer, block) for d in (o, bi)]


# How space_to_depth copies a channels-last input (measured on 8×C×112² and 8×3×640² fp32, 2 cores):
# - the one-copy permutation moves runs of b_n·C values (dcr), C (focus) or single values (crd); a
#   copy loop pays per run, so short runs are slow;
# - with few channels and few phases (C <= _FEW_CHANNELS, prod(block) <= _FEW_PHASES) one copy per phase
#   (torch.stack of strided slices: each copy's inner loop walks whole rows) is 1.5-2× faster for crd and
#   focus, about the same for dcr (C = 3 and 16);
# - otherwise crd with b_n < _TWO_STEP_BELOW is faster as two copies with long runs: the dcr rearrangement,
#   then each position's (phases, channels) -> (channels, phases) transpose (C = 64: 4-5× faster for
#   block 2, 1.9× for block 4, the same for block 8).
_FEW_CHANNELS = 16
_FEW_PHASES = 4
_TWO_STEP_BELOW = 8


def _phase_order(block: Sequence[int], order: str) -> list[tuple[int, ...]]:
    """The phases (offset tuples) in the order their channel groups appear: row-major, or first dim fastest."""
    phases = list(itertools.product(*[range(b) for b in block]))
    return sorted(phases, key=lambda p: p[::-1]) if order == "focus" else phases


def space_to_depth(x: torch.Tensor, block: int | Sequence[int], order: str = "crd") -> torch.Tensor:
    """Move each ``block`` of spatial positions into the channel dim.

    ``(N, C, S_1, ..., S_n) -> (N, C * prod(block), S_1 / b_1, ..., S_n / b_n)``.
    Every ``S_i`` must be divisible by ``b_i``.

    Example:
        >>> x = torch.arange(16.).reshape(1, 1, 4, 4)
        >>> y = space_to_depth(x, 2)
        >>> y.shape, torch.equal(y, torch.nn.functional.pixel_unshuffle(x, 2))
        (torch.Size([1, 4, 2, 2]), True)
        >>> space_to_depth(x, (1, 2), order="dcr")[0, :, 0, 0].tolist()
        [0.0, 1.0]
        >>> torch.equal(depth_to_space(y, 2), x)
        True
    """
    n = _check_input(x, "space_to_depth")
    _check_order(order)
    b = check_block(block, n)
    N, C, *spatial = x.shape
    for i, (s, bi) in enumerate(zip(spatial, b)):
        if s % bi:
            raise FoldError(
                f"spatial dim {i} has size {s}, which is not divisible by block {bi}; "
                f"pad or crop the input to a multiple of {bi} (pixelfold.fold does this for convs)"
            )
    R = math.prod(b)
    outer = [s // bi for s, bi in zip(spatial, b)]
    axes = _channel_axes(n, order)
    if is_channels_last(x):
        # memory order (N, S_1, ..., S_n, C): split each S_i into (S_i/b_i, b_i)
        v = x.movedim(1, -1).reshape(N, *_interleave(outer, b), C)
        blocks = [1 + 2 * i for i in range(n)]
        phases = [2 + 2 * i for i in range(n)]
        pos = {"c": 2 * n + 1, **{str(i): phases[i] for i in range(n)}}
        p = v.permute(0, *blocks, *[pos[a] for a in axes])
        if not p.is_contiguous():  # (when it is, e.g. 1-D dcr, the result is a view: nothing moves)
            if R <= _FEW_PHASES and C <= _FEW_CHANNELS:
                # one copy per phase: slot k of each position's channel groups <- x[..., phase_k]
                srcs = [v[(slice(None), *[s for o in ph for s in (slice(None), o)], slice(None))]
                        for ph in _phase_order(b, order)]
                out = torch.stack(srcs, -1 if order == "crd" else -2)  # (N, *outer, C, R) or (N, *outer, R, C)
                return out.view(N, *outer, C * R).movedim(n + 1, 1)
            if order == "crd" and b[-1] < _TWO_STEP_BELOW:
                # dcr (copies runs of b_n * C values), then each position's (R, C) -> (C, R)
                d = v.permute(0, *blocks, *phases, 2 * n + 1).contiguous().view(N, *outer, R, C)
                return d.transpose(-1, -2).contiguous().view(N, *outer, C * R).movedim(n + 1, 1)
        return p.contiguous().view(N, *outer, C * R).movedim(n + 1, 1)
    v = x.reshape(N, C, *_interleave(outer, b))
    pos = {"c": 1, **{str(i): 3 + 2 * i for i in range(n)}}
    perm = [0, *[pos[a] for a in axes], *[2 + 2 * i for i in range(n)]]
    return v.permute(perm).reshape(N, C * R, *outer)


def depth_to_space(x: torch.Tensor, block: int | Sequence[int], order: str = "crd") -> torch.Tensor:
    """Move groups of ``prod(block)`` channels back into spatial blocks.

    ``(N, C * prod(block), S_1, ..., S_n) -> (N, C, S_1 * b_1, ..., S_n * b_n)``,
    the exact inverse of :func:`space_to_depth` with the same ``block`` and ``order``.

    Example:
        >>> y = torch.arange(8.).reshape(1, 8, 1, 1)
        >>> depth_to_space(y, 2).shape
        torch.Size([1, 2, 2, 2])
        >>> torch.equal(depth_to_space(y, 2), torch.nn.functional.pixel_shuffle(y, 2))
        True
        >>> depth_to_space(y, 2, order="dcr")[0, 0].tolist()
        [[0.0, 2.0], [4.0, 6.0]]
    """
    n = _check_input(x, "depth_to_space")
    _check_order(order)
    b = check_block(block, n)
    N, CR, *spatial = x.shape
    R = math.prod(b)
    if CR % R:
        raise FoldError(
            f"depth_to_space needs channels divisible by prod(block) = {R} (block {b}), got {CR} channels; "
            f"use a block whose product divides {CR}"
        )
    C = CR // R
    axes = _channel_axes(n, order)
    sizes = {"c": C, **{str(i): bi for i, bi in enumerate(b)}}
    full = [s * bi for s, bi in zip(spatial, b)]
    if is_channels_last(x):
        # memory order (N, S_1, ..., S_n, [channel factors])
        if order == "crd" and n == 2 and b[0] == b[1] > 1 and C > 1:
            # PyTorch's channels-last pixel_shuffle kernel (vectorised over channels) is the fastest here
            return F.pixel_shuffle(x, b[0]).contiguous(memory_format=torch.channels_last)
        v = x.movedim(1, -1).reshape(N, *spatial, *[sizes[a] for a in axes])
        at = {a: 1 + n + k for k, a in enumerate(axes)}
        perm = [0, *[d for i in range(n) for d in (1 + i, at[str(i)])], at["c"]]
        return v.permute(perm).contiguous().view(N, *full, C).movedim(n + 1, 1)
    v = x.reshape(N, *[sizes[a] for a in axes], *spatial)
    at = {a: 1 + k for k, a in enumerate(axes)}
    perm = [0, at["c"], *[d for i in range(n) for d in (1 + n + 1 + i, at[str(i)])]]
    return v.permute(perm).reshape(N, C, *full)
