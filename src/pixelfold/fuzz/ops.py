"""Independent rearrangements for the fuzz harness's *original* layers.

The fuzz compares pixelfold's forms with the layers a user starts from. Where
such a layer is not in PyTorch (space-to-depth in ``dcr``/``focus`` order,
1-D/3-D pixel shuffles, YOLOv5's ``Focus``), it is written here from the
definitions in the README's channel-order table, by a different algorithm
from :mod:`pixelfold.rearrange` (one strided slice per phase instead of a
reshape/permute), so that the two cannot share a mistake:

==========  =======================  ==============================================
order       channel of phase ``p``   phases in channel order
==========  =======================  ==============================================
``crd``     ``c * R + p``            row-major offsets (last dim fastest)
``dcr``     ``p * C + c``            row-major offsets
``focus``   ``p * C + c``            first dim fastest (YOLOv5: (0,0),(1,0),(0,1),(1,1))
==========  =======================  ==============================================

>>> x = torch.arange(16.).reshape(1, 1, 4, 4)
>>> torch.equal(s2d(x, (2, 2), "crd"), torch.nn.functional.pixel_unshuffle(x, 2))
True
>>> torch.equal(d2s(s2d(x, (2, 1), "focus"), (2, 1), "focus"), x)
True
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
from torch import nn

from ..zoo import FocusOf

__all__ = ["phases", "s2d", "d2s", "tie", "S2D", "D2S", "Focus"]


def phases(block: Sequence[int], order: str) -> list[tuple[int, ...]]:
    """The phase offsets in the order their channel groups appear.

    >>> phases((2, 2), "dcr"), phases((2, 2), "focus")
    ([(0, 0), (0, 1), (1, 0), (1, 1)], [(0, 0), (1, 0), (0, 1), (1, 1)])
    """
    row_major = list(itertools.product(*[range(b) for b in block]))
    if order == "focus":
        return sorted(row_major, key=lambda p: p[::-1])
    if order in ("crd", "dcr"):
        return row_major
    raise ValueError(f"order {order!r}")


def _phase_slice(offset: Sequence[int], block: Sequence[int]) -> tuple[slice, ...]:
    return (slice(None), slice(None), *[slice(o, None, b) for o, b in zip(offset, block)])


def s2d(x: torch.Tensor, block: Sequence[int], order: str) -> torch.Tensor:
    """``(N, C, *S) -> (N, C*R, *S/b)`` by one strided slice per phase (sizes must divide)."""
    block = tuple(block)
    if any(s % b for s, b in zip(x.shape[2:], block)):
        raise ValueError(f"size {tuple(x.shape[2:])} not divisible by block {block}")
    parts = [x[_phase_slice(p, block)] for p in phases(block, order)]
    return torch.stack(parts, 2 if order == "crd" else 1).flatten(1, 2)


def d2s(y: torch.Tensor, block: Sequence[int], order: str) -> torch.Tensor:
    """The inverse of :func:`s2d`: each phase's channels written to its strided slice."""
    block = tuple(block)
    N, CR, *S = y.shape
    R = math.prod(block)
    C = CR // R
    parts = y.unflatten(1, (C, R) if order == "crd" else (R, C))
    out = y.new_zeros(N, C, *[s * b for s, b in zip(S, block)])
    for k, p in enumerate(phases(block, order)):
        out[_phase_slice(p, block)] = parts[:, :, k] if order == "crd" else parts[:, k]
    return out


def tie(bias: torch.Tensor, R: int, order: str) -> torch.Tensor:
    """A per-channel bias ``(O,)`` repeated over the ``R`` phases of a following depth-to-space.

    >>> tie(torch.tensor([1., 2.]), 2, "crd").tolist(), tie(torch.tensor([1., 2.]), 2, "dcr").tolist()
    ([1.0, 1.0, 2.0, 2.0], [1.0, 2.0, 1.0, 2.0])
    """
    return bias.repeat_interleave(R) if order == "crd" else bias.repeat(R)


class S2D(nn.Module):
    """Module form of :func:`s2d` (an original layer for ``merge``)."""

    def __init__(self, block: Sequence[int], order: str) -> None:
        super().__init__()
        self.block, self.order = tuple(block), order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return s2d(x, self.block, self.order)


class D2S(nn.Module):
    """Module form of :func:`d2s` (an original layer for ``transposed``)."""

    def __init__(self, block: Sequence[int], order: str) -> None:
        super().__init__()
        self.block, self.order = tuple(block), order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return d2s(x, self.block, self.order)


Focus = FocusOf  # YOLOv5's Focus around a given conv (named Focus, as YOLOv5 names it)
