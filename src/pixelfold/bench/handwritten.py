"""Hand-written rearrangements: what a user writes instead of pixelfold's, the bar pixelfold must meet.

Each is one ``reshape`` → ``permute`` → ``contiguous`` in the memory order of the input's layout (so a
channels-last input gives a channels-last result, as pixelfold's does), written from the definition of the
orders and independent of :mod:`pixelfold.rearrange`; ``einops_*`` are the same with ``einops.rearrange``
(which returns a contiguous tensor). A channel group of ``R = prod(block)`` phases is ordered ``crd``
(channel major), ``dcr`` (phase major, row-major phases) or ``focus`` (phase major, first offset fastest).

>>> x = torch.arange(16.).reshape(1, 1, 4, 4)
>>> torch.equal(s2d(x, (2, 2), "crd"), torch.nn.functional.pixel_unshuffle(x, 2))
True
>>> torch.equal(d2s(s2d(x, (2, 2), "focus"), (2, 2), "focus"), x)
True
>>> xl = x.expand(1, 3, 4, 4).contiguous(memory_format=torch.channels_last)
>>> y = s2d(xl, (2, 2), "dcr")
>>> y.is_contiguous(memory_format=torch.channels_last), torch.equal(y, s2d(xl.contiguous(), (2, 2), "dcr"))
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def channels_last(x: torch.Tensor) -> bool:
    """``x`` is stored with the channel dim innermost (and is not also plain contiguous)."""
    return x.size(1) > 1 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous()


def _chan(order: str, phases: list[int], c: int) -> list[int]:
    return {"crd": [c, *phases], "dcr": [*phases, c], "focus": [*reversed(phases), c]}[order]


def _factor_names(order: str, n: int) -> list[str]:
    return [str(a) for a in _chan(order, list(range(n)), -1)]  # "-1" is the channel factor


def s2d(x: torch.Tensor, block: Sequence[int], order: str) -> torch.Tensor:
    """Space-to-depth by one permute in the input's memory order."""
    N, C, *S = x.shape
    n = len(S)
    outer = [s // b for s, b in zip(S, block)]
    R = math.prod(block)
    split = [d for o, b in zip(outer, block) for d in (o, b)]
    if channels_last(x):
        v = x.movedim(1, -1).reshape(N, *split, C)
        perm = [0, *[1 + 2 * i for i in range(n)], *_chan(order, [2 + 2 * i for i in range(n)], 2 * n + 1)]
        return v.permute(perm).contiguous().view(N, *outer, C * R).movedim(-1, 1)
    v = x.reshape(N, C, *split)
    perm = [0, *_chan(order, [3 + 2 * i for i in range(n)], 1), *[2 + 2 * i for i in range(n)]]
    return v.permute(perm).reshape(N, C * R, *outer)


def d2s(x: torch.Tensor, block: Sequence[int], order: str) -> torch.Tensor:
    """Depth-to-space by one permute in the input's memory order."""
    N, CR, *S = x.shape
    n = len(S)
    R = math.prod(block)
    C = CR // R
    names = _factor_names(order, n)
    sizes = [C if a == "-1" else block[int(a)] for a in names]
    full = [s * b for s, b in zip(S, block)]
    if channels_last(x):
        v = x.movedim(1, -1).reshape(N, *S, *sizes)
        at = {a: 1 + n + k for k, a in enumerate(names)}
        perm = [0, *[d for i in range(n) for d in (1 + i, at[str(i)])], at["-1"]]
        return v.permute(perm).contiguous().view(N, *full, C).movedim(-1, 1)
    v = x.reshape(N, *sizes, *S)
    at = {a: 1 + k for k, a in enumerate(names)}
    perm = [0, at["-1"], *[d for i in range(n) for d in (2 + n + i, at[str(i)])]]
    return v.permute(perm).reshape(N, C, *full)


_SP = ("h", "w", "d")


def einops_patterns(n: int, order: str) -> tuple[str, str]:
    """The ``einops.rearrange`` patterns of space_to_depth and depth_to_space (1-3-D; ``h w d`` spatial).

    >>> einops_patterns(2, "dcr")[0]
    'n c (h b0) (w b1) -> n (b0 b1 c) h w'
    """
    sp = _SP[:n]
    names = ["c" if a == "-1" else f"b{a}" for a in _factor_names(order, n)]
    full = " ".join(f"({s} b{i})" for i, s in enumerate(sp))
    packed = f"({' '.join(names)})"
    return f"n c {full} -> n {packed} {' '.join(sp)}", f"n {packed} {' '.join(sp)} -> n c {full}"


def einops_block(n: int, block: Sequence[int]) -> dict[str, int]:
    return {f"b{i}": b for i, b in enumerate(block)}
