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

import functools
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
    """Normalise ``block`` to ``n`` positive ints or raise :class:`FoldError`.

    >>> check_block(2, 3), check_block([1, 2], 2)
    ((2, 2, 2), (1, 2))
    """
    if type(block) is int and block >= 1:  # the common cases without as_tuple's try/except (every call)
        return (block,) * n
    if type(block) is tuple and len(block) == n and all(type(v) is int and v >= 1 for v in block):
        return block
    b = as_tuple(block, n, "block")
    if any(v < 1 for v in b):
        raise FoldError(f"block {b} must be positive in every dim")
    return b


# (N, C, *S) <-> (N, *S, C) for n = 1, 2, 3 spatial dims: permute with a fixed tuple costs half a movedim
_TO_LAST = {1: (0, 2, 1), 2: (0, 2, 3, 1), 3: (0, 2, 3, 4, 1)}
_TO_FIRST = {1: (0, 2, 1), 2: (0, 3, 1, 2), 3: (0, 4, 1, 2, 3)}
_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def is_channels_last(x: torch.Tensor) -> bool:
    """True if ``x`` (N, C, *spatial) is stored channels-last and not also contiguous.

    >>> x = torch.zeros(1, 3, 4, 4).to(memory_format=torch.channels_last)
    >>> is_channels_last(x), is_channels_last(x.contiguous())
    (True, False)
    >>> is_channels_last(torch.zeros(2, 8, 3).transpose(1, 2).contiguous().transpose(1, 2))  # NLC
    True
    """
    d = x.dim()
    if d < 3 or x.size(1) <= 1 or x.is_contiguous():
        return False
    fmt = _FORMATS.get(d)  # (the flag equals x.movedim(1, -1).is_contiguous() for a non-empty x)
    if fmt is not None:
        return x.is_contiguous(memory_format=fmt)
    if d == 3:  # NLC: strides (L*C, 1, C), those of size-1 dims aside (as is_contiguous does); no tensor op
        (N, C, L), (sn, sc, sl) = x.shape, x.stride()
        return sc == 1 and (L == 1 or sl == C) and (N == 1 or sn == L * C)
    return x.movedim(1, -1).is_contiguous()


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


@functools.lru_cache(maxsize=None)
def _s2d_perm(n: int, order: str, channels_last: bool) -> tuple[int, ...]:
    """space_to_depth's permute of the split input, ``(N, C, S_1/b_1, b_1, ...)`` -> ``(N, [channel], *outer)``.

    Channels-last: ``(N, S_1/b_1, b_1, ..., C)`` -> ``(N, *outer, [channel])``; ``[channel]`` is the
    order's factors (``_channel_axes``).

    >>> _s2d_perm(2, "crd", False), _s2d_perm(2, "dcr", True)
    ((0, 1, 3, 5, 2, 4), (0, 1, 3, 2, 4, 5))
    """
    axes = _channel_axes(n, order)
    if channels_last:
        pos = {"c": 2 * n + 1, **{str(i): 2 + 2 * i for i in range(n)}}
        return (0, *[1 + 2 * i for i in range(n)], *[pos[a] for a in axes])
    pos = {"c": 1, **{str(i): 3 + 2 * i for i in range(n)}}
    return (0, *[pos[a] for a in axes], *[2 + 2 * i for i in range(n)])


@functools.lru_cache(maxsize=None)
def _d2s_perm(n: int, order: str, channels_last: bool) -> tuple[int, ...]:
    """depth_to_space's permute, ``(N, [channel], *S)`` -> ``(N, C, S_1, b_1, ...)`` (channels-last:
    ``(N, *S, [channel])`` -> ``(N, S_1, b_1, ..., C)``).

    >>> _d2s_perm(2, "crd", False), _d2s_perm(1, "dcr", True)
    ((0, 1, 4, 2, 5, 3), (0, 1, 2, 3))
    """
    axes = _channel_axes(n, order)
    if channels_last:
        at = {a: 1 + n + k for k, a in enumerate(axes)}
        return (0, *[d for i in range(n) for d in (1 + i, at[str(i)])], at["c"])
    at = {a: 1 + k for k, a in enumerate(axes)}
    return (0, at["c"], *[d for i in range(n) for d in (2 + n + i, at[str(i)])])


def _factor_sizes(C: int, block: Sequence[int], order: str) -> list[int]:
    """The sizes of the channel factors in ``order``: e.g. ``[C, b_1, b_2]`` for crd."""
    return [C if a == "c" else block[int(a)] for a in _channel_axes(len(block), order)]


def _phase_order(block: Sequence[int], order: str) -> list[tuple[int, ...]]:
    """The phases (offset tuples) in the order their channel groups appear: row-major, or first dim fastest."""
    phases = list(itertools.product(*[range(b) for b in block]))
    return sorted(phases, key=lambda p: p[::-1]) if order == "focus" else phases


# ---------------------------------------------------------------------------- channels-last copies
# A channels-last rearrangement is one permutation of x's memory order (N, S_1/b_1, b_1, ..., C), and a copy
# loop pays per run of its innermost dim: runs of b_n·C values for dcr, C for focus, one value for crd
# (phase innermost). Timed on one core against that single permute (8×C×112², 8×C×8×56², 8×3×640², fp32;
# issue 12 item 4, ratios of the same round):
# - "view": dcr and focus with every b_i = 1 but the last move nothing (the permute is the identity);
# - "phases" (one strided copy per phase into its channel slot: torch.stack, each copy walks whole rows):
#   crd with R = prod(b) <= 4 and C <= 16 in 1-D/2-D or R <= 8 and C <= 4 (0.12-0.5×; 3-D (1,2,2) with
#   C = 16 stacks at 0.43×, two-step below at 0.30×); focus with C <= 4 and
#   R <= 8 (0.5-0.8×). Never dcr: its runs are already b_n·C long and stacking made it 1.3-2.3× slower,
#   as it does focus from C = 8 on (1.1-1.35×);
# - "two-step" crd with b_n < 8: the dcr copy, then each position's (R, C) -> (C, R) transpose
#   (C = 32, block 2×2: 0.23×, 4×4: 0.6×, 2×2×2 with C = 16: 0.21×; 8×8 is 1.4× slower: plain permute);
# - depth_to_space reads the same runs: 2-D square crd uses PyTorch's channels-last pixel_shuffle kernel
#   (0.5-0.7×), other crd blocks with C <= 16 and b_n < 8 the transpose first, then the dcr copy (3-D:
#   0.54-0.81×); a per-phase copy gained nothing over those for C > 4.
def _s2d_method(C: int, block: Sequence[int], order: str) -> str:
    """How a channels-last space_to_depth copies: ``view``, ``phases``, ``two-step`` or ``permute``.

    >>> _s2d_method(3, (2, 2), "focus"), _s2d_method(32, (2, 2), "crd"), _s2d_method(32, (8, 8), "crd")
    ('phases', 'two-step', 'permute')
    """
    R = math.prod(block)
    if R == 1 or (order != "crd" and all(b == 1 for b in block[:-1])):
        return "view"
    if order == "dcr":
        return "permute"
    if order == "focus":
        return "phases" if C <= 4 and R <= 8 else "permute"
    if (len(block) <= 2 and R <= 4 and C <= 16) or (R <= 8 and C <= 4):
        return "phases"
    return "two-step" if block[-1] < 8 else "permute"


def _d2s_method(C: int, block: Sequence[int], order: str) -> str:
    """How a channels-last depth_to_space copies: ``view``, ``pixel_shuffle``, ``two-step`` or ``permute``.

    >>> _d2s_method(4, (1, 4), "dcr"), _d2s_method(3, (2, 2), "crd"), _d2s_method(16, (2, 2, 2), "crd")
    ('view', 'pixel_shuffle', 'two-step')
    """
    if math.prod(block) == 1 or (order != "crd" and all(b == 1 for b in block[:-1])):
        return "view"
    if order != "crd":
        return "permute"
    if len(block) == 2 and block[0] == block[1] > 1 and C > 1:
        return "pixel_shuffle"
    return "two-step" if C <= 16 and block[-1] < 8 else "permute"


def _s2d_channels_last(x: torch.Tensor, b: tuple[int, ...], order: str, outer: list[int]) -> torch.Tensor:
    """space_to_depth of a channels-last ``x``, in its memory order; the result is channels-last."""
    n = len(b)
    N, C = x.shape[:2]
    R = math.prod(b)
    m = x.permute(_TO_LAST[n])  # (N, *S, C), contiguous
    if order != "crd" and n == 1:  # (the commonest no-copy case, before the general test in _s2d_method)
        return m.reshape(N, outer[0], C * R).permute(0, 2, 1)
    how = _s2d_method(C, b, order)
    if how == "view":
        return m.reshape(N, *outer, C * R).permute(_TO_FIRST[n])
    v = m.reshape(N, *_interleave(outer, b), C)
    if how == "phases":
        # slot k of each position's channel groups <- x[..., phase_k]: (N, *outer, C, R) or (N, *outer, R, C)
        srcs = [v[(slice(None), *[s for o in ph for s in (slice(None), o)], slice(None))]
                for ph in _phase_order(b, order)]
        out = torch.stack(srcs, n + 2 if order == "crd" else n + 1)
    elif how == "two-step":
        # dcr (copies runs of b_n * C values), then each position's (R, C) -> (C, R)
        d = v.permute(_s2d_perm(n, "dcr", True)).contiguous().view(N, *outer, R, C)
        out = d.transpose(n + 1, n + 2).contiguous()
    else:
        out = v.permute(_s2d_perm(n, order, True)).contiguous()
    return out.view(N, *outer, C * R).permute(_TO_FIRST[n])


def _d2s_channels_last(x: torch.Tensor, b: tuple[int, ...], order: str, C: int) -> torch.Tensor:
    """depth_to_space of a channels-last ``x``, in its memory order; the result is channels-last."""
    n = len(b)
    N, CR, *spatial = x.shape
    if order != "crd" and n == 1:  # (the commonest no-copy case, before the general test in _d2s_method)
        return x.permute(0, 2, 1).reshape(N, spatial[0] * b[0], C).permute(0, 2, 1)
    R = CR // C
    full = [s * bi for s, bi in zip(spatial, b)]
    how = _d2s_method(C, b, order)
    if how == "pixel_shuffle":
        return F.pixel_shuffle(x, b[0]).contiguous(memory_format=torch.channels_last)
    m = x.permute(_TO_LAST[n])  # (N, *S, [channel factors]), contiguous
    if how == "view":
        return m.reshape(N, *full, C).permute(_TO_FIRST[n])
    if how == "two-step":
        # each position's (C, R) -> (R, C), then the dcr copy (runs of b_n * C values)
        m = m.reshape(N, *spatial, C, R).transpose(n + 1, n + 2).contiguous()
        order = "dcr"
    v = m.reshape(N, *spatial, *_factor_sizes(C, b, order))
    return v.permute(_d2s_perm(n, order, True)).contiguous().view(N, *full, C).permute(_TO_FIRST[n])


# ---------------------------------------------------------------------------- the rearrangements
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
    outer = [s // bi for s, bi in zip(spatial, b)]
    if [o * bi for o, bi in zip(outer, b)] != spatial:
        i, s, bi = next((i, s, bi) for i, (s, bi) in enumerate(zip(spatial, b)) if s % bi)
        raise FoldError(
            f"spatial dim {i} has size {s}, which is not divisible by block {bi}; "
            f"pad or crop the input to a multiple of {bi} (pixelfold.fold does this for convs)"
        )
    if is_channels_last(x):
        return _s2d_channels_last(x, b, order, outer)
    v = x.reshape(N, C, *_interleave(outer, b))
    return v.permute(_s2d_perm(n, order, False)).reshape(N, C * math.prod(b), *outer)


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
    if is_channels_last(x):
        return _d2s_channels_last(x, b, order, C)
    v = x.reshape(N, *_factor_sizes(C, b, order), *spatial)
    return v.permute(_d2s_perm(n, order, False)).reshape(N, C, *[s * bi for s, bi in zip(spatial, b)])
