"""The rearrangement modules (:class:`SpaceToDepth`, :class:`DepthToSpace`, :class:`FocusSlice`) and the test for a Focus-style slicing step."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .errors import FoldError
from .rearrange import (
    ORDERS,
    check_block,
    depth_to_space,
    space_to_depth,
)


# ---------------------------------------------------------------------------- rearrangement modules
def _module_block(block: int | Sequence[int]) -> int | tuple[int, ...]:
    """A rearrangement module's block, checked when it is built (the dims are checked on the first input)."""
    if isinstance(block, int) and not isinstance(block, bool):
        b: int | tuple[int, ...] = check_block(block, 1)[0]
    else:
        try:
            n = len(block)  # type: ignore[arg-type]
        except TypeError:
            raise FoldError(f"block must be a positive int or a tuple of positive ints, got {block!r}") from None
        b = check_block(block, n)
    return b


def _module_order(order: str) -> str:
    if order not in ORDERS:
        raise FoldError(f"order {order!r} is not one of {ORDERS}")
    return order

class SpaceToDepth(nn.Module):
    """Module form of :func:`pixelfold.space_to_depth`.

    >>> SpaceToDepth(2)(torch.zeros(1, 3, 4, 4)).shape
    torch.Size([1, 12, 2, 2])
    """

    def __init__(self, block: int | Sequence[int], order: str = "crd") -> None:
        super().__init__()
        self.block = _module_block(block)
        self.order = _module_order(order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return space_to_depth(x, self.block, self.order)

    def extra_repr(self) -> str:
        return f"block={self.block}, order={self.order!r}"


class DepthToSpace(nn.Module):
    """Module form of :func:`pixelfold.depth_to_space`.

    >>> DepthToSpace(2)(torch.zeros(1, 12, 2, 2)).shape
    torch.Size([1, 3, 4, 4])
    """

    def __init__(self, block: int | Sequence[int], order: str = "crd") -> None:
        super().__init__()
        self.block = _module_block(block)
        self.order = _module_order(order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(x, self.block, self.order)

    def extra_repr(self) -> str:
        return f"block={self.block}, order={self.order!r}"


class FocusSlice(SpaceToDepth):
    """YOLOv5's Focus rearrangement: ``cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)``.

    That is ``space_to_depth(x, 2, order="focus")``.

    >>> x = torch.randn(1, 3, 4, 4)
    >>> ref = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
    >>> torch.equal(FocusSlice()(x), ref)
    True
    """

    def __init__(self, block: int | Sequence[int] = 2) -> None:
        super().__init__(block, "focus")


def is_focus(module: nn.Module) -> bool:
    """True for a Focus-style module that :func:`merge` takes: its ``forward`` is ``self.conv(space_to_depth(x))``.

    Recognised by behaviour, not by name: the module holds nothing but its
    ``.conv`` (a conv, or a wrapper such as YOLOv5's ``Conv`` holding one), and
    a probe of a deep copy (``.conv`` replaced by a recorder) shows a pure
    space-to-depth in any block and channel order (YOLOv5, YOLOX, SPD-Conv, ...).

    >>> class Focus(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv = nn.Conv2d(12, 8, 3, padding=1)
    ...     def forward(self, x):
    ...         return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))
    >>> class NotFocus(Focus):
    ...     def forward(self, x):
    ...         return self.conv(torch.cat([x[..., ::2, ::2]] * 4, 1))
    >>> is_focus(Focus()), is_focus(NotFocus()), is_focus(nn.Conv2d(3, 8, 3))
    (True, False, False)
    """
    from .probe import focus_map, focus_unit

    if focus_unit(module) is None:
        return False
    try:
        step, _ = focus_map(module)
    except FoldError:
        return False
    return math.prod(step.block) > 1  # block 1: a plain wrapper, nothing to merge
