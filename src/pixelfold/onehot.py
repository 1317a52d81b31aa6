"""A rearrangement as a convolution: space-to-depth as a one-hot strided conv, depth-to-space as a one-hot
transposed conv — for NPUs that run convs but not the rearrangement ops (NVIDIA DLA rebuilds them this way).

Exact for finite inputs: every output is one input times 1 plus the others times 0; an ``inf``/``NaN``
input gives ``NaN`` wherever a zero tap meets it (``0·inf``), where the rearrangement would move it.

>>> import torch
>>> m = OneHotRearrange("depth_to_space", 2, "crd", channels=3)
>>> x = torch.randn(1, 12, 4, 5)
>>> torch.equal(m(x), torch.nn.functional.pixel_shuffle(x, 2)), str(m.spec)
(True, 'ConvTranspose2d 12→3 k2×2 s2×2 p0×0')
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FoldError
from .rearrange import ORDERS, check_block, depth_to_space
from .spec import ConvSpec

__all__ = ["OneHotRearrange", "onehot_weight"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def onehot_weight(channels: int, block: Sequence[int], order: str) -> torch.Tensor:
    """``(C·R, C, *block)`` one-hot weight: deep channel ``k`` ↔ spatial channel ``c`` at offset ``o``.

    Read as a conv weight (out, in, ...) it is space-to-depth; as a transposed-conv weight (in, out, ...)
    depth-to-space, in ``order``.
    """
    b = tuple(block)
    R = math.prod(b)
    probe = torch.arange(channels * R, dtype=torch.float64).reshape(1, channels * R, *([1] * len(b)))
    where = depth_to_space(probe, b, order)[0]  # (C, *b): the deep channel that lands at (c, offset)
    weight = torch.zeros(channels * R, channels, *b)
    for idx in itertools.product(range(channels), *[range(v) for v in b]):
        weight[(int(where[idx]), *idx)] = 1.0
    return weight


class OneHotRearrange(nn.Module):
    """``space_to_depth`` / ``depth_to_space`` computed by a one-hot conv (see the module docstring).

    The weight is a buffer (nothing to train) cast to the input's dtype in ``forward``.
    """

    def __init__(self, kind: str, block: int | Sequence[int], order: str, channels: int, dims: int = 2) -> None:
        super().__init__()
        if kind not in ("space_to_depth", "depth_to_space"):
            raise FoldError(f"kind must be 'space_to_depth' or 'depth_to_space', got {kind!r}")
        if order not in ORDERS:
            raise FoldError(f"order {order!r} is not one of {ORDERS}")
        self.kind, self.order, self.channels = kind, order, int(channels)
        self.block = check_block(block, dims)
        n, b = dims, self.block
        R = math.prod(b)
        if kind == "space_to_depth":
            self.spec = ConvSpec(channels, channels * R, b, b, ((0, 0),) * n, (1,) * n, bias=False)
        else:
            self.spec = ConvSpec(channels * R, channels, b, b, ((0, 0),) * n, (1,) * n, bias=False, transposed=True)
        self.register_buffer("weight", onehot_weight(channels, b, order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype)
        if self.kind == "space_to_depth":
            return _CONV[len(self.block)](x, w, stride=self.block)
        return _CONVT[len(self.block)](x, w, stride=self.block)

    def extra_repr(self) -> str:
        return f"{self.kind} block={self.block}, order={self.order!r}, as {self.spec}"
