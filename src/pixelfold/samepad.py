"""timm's ``Conv2dSame`` folded exactly: TF-"same" padding computed per input, then a :class:`PhaseConv`."""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FoldError
from .layers import PhaseConv
from .rearrange import check_block
from .symsize import ceil_div, clamp_min0, is_symbolic

__all__ = ["SamePadPhaseConv"]

Block = Union[int, Sequence[int]]


class SamePadPhaseConv(PhaseConv):
    """timm's ``Conv2dSame`` folded exactly: TF-"same" padding computed per input, then a :class:`PhaseConv`.

    ``Conv2dSame`` says ``padding=0`` but pads ``max((ceil(L/s)-1)*s + d*(k-1) + 1 - L, 0)``
    per dim in forward (the smaller half first), so it is the conv with
    padding 0 applied to a padded input; this module pads the same way and
    folds the padding-free conv. It keeps the original ``weight``/``bias``.

    >>> conv = torch.nn.Conv2d(3, 8, 3, stride=2, bias=False)        # stands in for Conv2dSame
    >>> m = SamePadPhaseConv(conv, 2)
    >>> x = torch.randn(1, 3, 9, 10)
    >>> ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 1, 1)), conv.weight, stride=2)
    >>> torch.allclose(m(x), ref, atol=1e-6)
    True
    """

    def __init__(self, conv: nn.Module, in_block: Block, out_block: Block | None = None,
                 order: str = "crd") -> None:
        if not isinstance(conv, nn.Conv2d):
            raise FoldError(f"SamePadPhaseConv takes an nn.Conv2d (timm Conv2dSame), got {type(conv).__name__}")
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                          conv.groups, bias=conv.bias is not None, device="meta")
        plain.weight = conv.weight
        plain.bias = conv.bias
        super().__init__(plain, check_block(in_block, 2), check_block(out_block or 1, 2), order)
        self.same_kernel = tuple(conv.kernel_size)
        self.same_stride = tuple(conv.stride)
        self.same_dilation = tuple(conv.dilation)

    def same_padding(self, spatial: Sequence[int]) -> list[tuple[int, int]]:
        """The ``(lo, hi)`` padding timm's ``pad_same`` applies for an input of this spatial size."""
        out = []
        for L, k, s, d in zip(spatial, self.same_kernel, self.same_stride, self.same_dilation):
            span = (k - 1) * d + 1
            # ceil(L/s)·s - L lies in [0, s-1]: the total is never negative when span >= s (no clamp to trace)
            total = (ceil_div(L, s) - 1) * s + span - L
            if span < s:
                total = clamp_min0(total)
            out.append((total // 2, total - total // 2))
        return out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = self.same_padding(x.shape[2:])
        if is_symbolic(x.shape[2:]):  # sizes are graph values: always pad (possibly by 0), no branch on them
            x = F.pad(x, [v for lo, hi in reversed(pads) for v in (lo, hi)])
        elif any(lo or hi for lo, hi in pads):
            x = F.pad(x, [v for lo, hi in reversed(pads) for v in (lo, hi)])
        return super()._forward(x)
