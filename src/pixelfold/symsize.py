"""Size arithmetic that stays exact when sizes are symbolic (torch.export SymInts, TorchScript-traced tensors).

Exporters lower size arithmetic in their own way: the TorchScript ONNX exporter and OpenVINO's PyTorch
frontend turn floor division into a truncating division, so ``-(-n // b)`` (ceil by negation) is wrong
once it is recorded; a Python ``if`` on a size is baked in for the example. pixelfold's modules therefore
use only non-negative floor divisions, and when the sizes are symbolic they take a branch-free path
(constant pads, then :func:`narrow` to the computed length) whose result is the same at every size.

>>> ceil_div(5, 2), ceil_div(4, 2), ceil_div(0, 3)
(3, 2, 0)
>>> is_symbolic([3, 4]), is_symbolic([torch.tensor(3), 4])
(False, True)
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["ceil_div", "clamp_min0", "fit", "is_symbolic", "narrow", "space_to_depth_unfold"]


def is_symbolic(sizes: Sequence[Any]) -> bool:
    """True if any size is not a plain int (a ``torch.SymInt`` under torch.export, a tensor under tracing)."""
    return any(not isinstance(v, int) or isinstance(v, torch.SymInt) for v in sizes)


def ceil_div(n: Any, b: int) -> Any:
    """``ceil(n / b)`` for ``n >= 0`` and ``b >= 1`` with a floor division of non-negative operands only."""
    return (n + (b - 1)) // b


def clamp_min0(v: Any) -> Any:
    """``max(v, 0)`` for an int, a SymInt or a 0-dim tensor, with no Python branch on the value.

    >>> clamp_min0(-3), clamp_min0(2), int(clamp_min0(torch.tensor(-1)))
    (0, 2, 0)
    """
    if isinstance(v, torch.Tensor):
        return torch.clamp(v, min=0)
    if isinstance(v, torch.SymInt):
        return torch.sym_max(v, 0)
    return max(v, 0)


def narrow(x: torch.Tensor, dim: int, length: Any, start: Any = 0) -> torch.Tensor:
    """``x`` restricted to ``[start, start + length)`` along ``dim`` (symbolic bounds are traced, not baked).

    A slice, not ``Tensor.narrow``: the tracer records a slice's bounds as graph values.

    >>> narrow(torch.arange(5), 0, 3).tolist()
    [0, 1, 2]
    """
    end = start + length
    if isinstance(end, torch.SymInt):  # equal in value (callers never ask past the end), but export needs no guard
        end = torch.sym_min(end, x.shape[dim])
    return x[(slice(None),) * dim + (slice(start, end),)]


def fit(x: torch.Tensor, sizes: Sequence[Any], low: Sequence[int] | None = None) -> torch.Tensor:
    """``x`` zero-extended or cropped at the end of each spatial dim to ``sizes``, with no branch on the sizes.

    ``low``: zeros put before each dim first (counted in ``sizes``), in the same ``F.pad``.

    One ``F.pad`` whose (possibly negative) high-side amounts are ``size - current``: exporters keep
    them as graph values (ONNX ``Pad``, which crops for negative pads), and torch.export needs no guard
    beyond ``size > 0``. The result is a new tensor (contiguous), not a view.

    >>> fit(torch.ones(1, 1, 3, 3), (2, 5)).shape
    torch.Size([1, 1, 2, 5])
    >>> fit(torch.ones(1, 1, 3), (5,), low=(1,))[0, 0].tolist()
    [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    n = len(sizes)
    spatial = x.shape[x.dim() - n:]
    lows = list(low) if low is not None else [0] * n
    pads: list[Any] = []
    for want, have, lo in zip(reversed(list(sizes)), reversed(list(spatial)), reversed(lows)):
        pads += [lo, want - have - lo]
    return torch.nn.functional.pad(x, pads)


def space_to_depth_unfold(x: torch.Tensor, block: Sequence[int], order: str) -> torch.Tensor:
    """:func:`pixelfold.space_to_depth` by ``Tensor.unfold`` (the caller guarantees divisible sizes).

    The same values as the reshape form, but no view splits a symbolic dim, so torch.export needs no
    divisibility guard its solver cannot prove (``Mod(2*k + 2, k + 1)``); used when sizes are symbolic.

    >>> import pixelfold
    >>> x = torch.randn(2, 3, 4, 6)
    >>> all(torch.equal(space_to_depth_unfold(x, (2, 3), o), pixelfold.space_to_depth(x, (2, 3), o))
    ...     for o in ("crd", "dcr", "focus"))
    True
    """
    from .rearrange import _channel_axes

    n = len(block)
    N, C = x.shape[0], x.shape[1]
    u = x
    for i, b in enumerate(block):
        u = u.unfold(2 + i, b, b)  # (N, C, *outer, b_0, ..., b_i)
    pos = {"c": 1, **{str(i): 2 + n + i for i in range(n)}}
    perm = [0, *[pos[a] for a in _channel_axes(n, order)], *range(2, 2 + n)]
    R = 1
    for b in block:
        R *= b
    return u.permute(perm).reshape(N, C * R, *u.shape[2:2 + n])
