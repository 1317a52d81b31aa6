"""How pixelfold's rearrangements are written during conversion, so that they land on a target's NPU.

pixelfold's own :func:`~pixelfold.space_to_depth` / :func:`~pixelfold.depth_to_space`
are written as one reshape to rank ``2 + 2n``, one permute and one reshape
(a **6-D** transpose in 2-D): exact and fast in PyTorch, but Arm's Ethos-U55
rejects 6-D transposes at real sizes, and native ``SPACE_TO_DEPTH`` /
``DEPTH_TO_SPACE`` run on the CPU under Vela (see ``benchmarks/results/npu_forms.md``).
:func:`lowered_rearrangements` swaps, for the duration of a ``with`` block,
the rearrangement functions that pixelfold's modules call for exact
implementations in one of these *styles*:

============  ==================================================================================
style         what the converted graph holds (2-D, block ``b0 × b1``)
============  ==================================================================================
``reshape6``  pixelfold's default: Reshape → Transpose (rank ``2 + 2n``) → Reshape
``rank4``     NHWC-formulated, every tensor rank ≤ 4: Transpose(NCHW→NHWC) → Reshape →
              Transpose(0, 2, 1, 3) → Reshape → Transpose(NHWC→NCHW); ``crd`` adds one rank-3
              Transpose. The outer transposes cancel against the NHWC layout of the TFLite graph
              (litert-torch), so ``dcr``/``focus`` become *one* rank-4 transpose on Ethos-U.
``rank4_nchw`` NCHW-formulated, rank ≤ 4, two rank-4 transposes for every order (for ONNX graphs,
              which stay NCHW)
``native``    one op where the exporter has one (ONNX ``SpaceToDepth`` in ``dcr``, ``DepthToSpace``
              ``dcr``/``crd`` through :func:`pixelfold.export.onnx_native_ops`; TFLite through
              ``torch.pixel_shuffle`` / ``pixel_unshuffle`` for ``crd``); others as ``reshape6``
============  ==================================================================================

What the compilers accept (measured with Vela 5.2 and rknn-toolkit2 2.5; ``benchmarks/results/npu_forms.md``):

- Ethos-U55/U65: ``rank4`` in ``dcr`` (one RESHAPE → TRANSPOSE(0,2,1,3) → RESHAPE after litert-torch cancels the
  layout transposes) runs at every size tried (64 ch, 256²); ``reshape6``'s 6-D TRANSPOSE falls to the CPU once a
  product of N-2 axes passes 2^16 (``Transpose with permutation 0, 1, 3, 5, 2, 4 has shape out of range``).
  ``crd`` costs a second transpose. Native SPACE_TO_DEPTH / DEPTH_TO_SPACE are not in Vela's operator list.
- Ethos-U85: every style runs; ``rank4`` ``dcr`` is the cheapest.
- rk3588 / rk3576 / rv1106: ``rank4_nchw`` (or ``rank4``) in ``dcr`` runs on the NPU for blocks 2–4; ``crd`` may
  become a CPU ``Gather`` (rv1106) or leave a CPU Reshape (rk3588); native ``SpaceToDepth`` is CPU on all of them;
  native ``DepthToSpace`` (and ``reshape6``, which RKNN matches to it) becomes a deconv, 2–14× the cycles, and block
  3 falls to the CPU on rk3588.
- rk3568: Reshape/Transpose run on the CPU in every style; only native ``DepthToSpace`` with block 2 or 4 (as a
  deconv) reaches the NPU; a space-to-depth has to be eliminated (merged into the next conv).

Every style computes exactly the same values (pure data movement, checked bit
for bit against :func:`pixelfold.space_to_depth`), so a module's math is
untouched; 1-D inputs get the same treatment at rank ≤ 3, 3-D inputs keep
the default form (no NPU judged here takes 3-D rearrangements).

>>> import torch, pixelfold
>>> x = torch.randn(2, 3, 8, 12)
>>> with lowered_rearrangements("rank4"):
...     y = pixelfold.space_to_depth(x, 2, "dcr")
>>> torch.equal(y, pixelfold.space_to_depth(x, 2, "dcr"))
True
>>> torch.equal(space_to_depth_rank4(x, (2, 3), "crd"), pixelfold.space_to_depth(x, (2, 3), "crd"))
True
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import FoldError
from ..rearrange import ORDERS, check_block
from ..rearrange import depth_to_space as _depth_to_space
from ..rearrange import space_to_depth as _space_to_depth

__all__ = [
    "STYLES",
    "lowered_rearrangements",
    "space_to_depth_rank4",
    "depth_to_space_rank4",
    "space_to_depth_rank4_nchw",
    "depth_to_space_rank4_nchw",
    "max_rank",
]

STYLES = ("reshape6", "rank4", "rank4_nchw", "native")
_Fn = Callable[..., torch.Tensor]


def _check(x: torch.Tensor, block: int | Sequence[int], order: str, name: str) -> tuple[int, ...] | None:
    """The block as a tuple for 1-D/2-D inputs, or None when the default implementation should run."""
    if order not in ORDERS:
        raise FoldError(f"order {order!r} is not one of {ORDERS}")
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        return None
    return check_block(block, x.dim() - 2)


def _s2d_divisible(x: torch.Tensor, b: tuple[int, ...]) -> bool:
    return all(s % bi == 0 for s, bi in zip(x.shape[2:], b))


# ---------------------------------------------------------------------------- rank 4, NHWC-formulated
def space_to_depth_rank4(x: torch.Tensor, block: int | Sequence[int], order: str = "crd") -> torch.Tensor:
    """:func:`pixelfold.space_to_depth` with every intermediate tensor of rank ≤ 4, formulated in NHWC.

    2-D ``dcr``: ``permute(0,2,3,1) → reshape(N·H, b0, W, b1·C) → permute(0,2,1,3) → reshape(N,H,W,b0·b1·C)
    → permute(0,3,1,2)``; ``focus`` groups ``(W·b1, C)`` instead; ``crd`` adds a rank-3 transpose of each
    position's ``(phases, C)``. 3-D inputs (and invalid ones, for the error) go to the default.

    >>> x = torch.arange(2 * 3 * 4 * 6.).reshape(2, 3, 4, 6)
    >>> all(torch.equal(space_to_depth_rank4(x, 2, o), _space_to_depth(x, 2, o)) for o in ORDERS)
    True
    """
    b = _check(x, block, order, "space_to_depth")
    if b is None or not _s2d_divisible(x, b):
        return _space_to_depth(x, block, order)
    if x.dim() == 3:
        N, C, L = x.shape
        (r,) = b
        t = x.permute(0, 2, 1)  # (N, L·r, C) = [n, l, i, c]
        if order == "crd":
            t = t.reshape(N * (L // r), r, C).permute(0, 2, 1)  # [n l, c, i]
        return t.reshape(N, L // r, r * C).permute(0, 2, 1)
    N, C, Hb, Wb = x.shape
    b0, b1 = b
    H, W = Hb // b0, Wb // b1
    t = x.permute(0, 2, 3, 1)  # (N, H·b0, W·b1, C) = [n, h, i, w, j, c]
    if order == "focus":
        t = t.reshape(N * H, b0, W * b1, C).permute(0, 2, 1, 3)  # [n h, w j, i, c]
    else:
        t = t.reshape(N * H, b0, W, b1 * C).permute(0, 2, 1, 3)  # [n h, w, i, j c]
        if order == "crd":
            t = t.reshape(N * H * W, b0 * b1, C).permute(0, 2, 1)  # [n h w, c, i j]
    return t.reshape(N, H, W, b0 * b1 * C).permute(0, 3, 1, 2)


def depth_to_space_rank4(x: torch.Tensor, block: int | Sequence[int], order: str = "crd") -> torch.Tensor:
    """:func:`pixelfold.depth_to_space` with every intermediate tensor of rank ≤ 4, formulated in NHWC.

    2-D ``dcr``: ``permute(0,2,3,1) → reshape(N·H, W, b0, b1·C) → permute(0,2,1,3) → reshape(N,H·b0,W·b1,C)
    → permute(0,3,1,2)``; the inverse of :func:`space_to_depth_rank4`.

    >>> y = torch.arange(2 * 12 * 2 * 3.).reshape(2, 12, 2, 3)
    >>> all(torch.equal(depth_to_space_rank4(y, 2, o), _depth_to_space(y, 2, o)) for o in ORDERS)
    True
    """
    b = _check(x, block, order, "depth_to_space")
    if b is None or x.size(1) % math.prod(b):
        return _depth_to_space(x, block, order)
    R = math.prod(b)
    if x.dim() == 3:
        N, CR, L = x.shape
        C = CR // R
        t = x.permute(0, 2, 1)  # (N, L, C·r)
        if order == "crd":
            t = t.reshape(N * L, C, R).permute(0, 2, 1)  # [n l, i, c]
        return t.reshape(N, L * R, C).permute(0, 2, 1)
    N, CR, H, W = x.shape
    b0, b1 = b
    C = CR // R
    t = x.permute(0, 2, 3, 1)  # (N, H, W, C·R)
    if order == "crd":
        t = t.reshape(N * H * W, C, R).permute(0, 2, 1)  # [n h w, i j, c]: now dcr
    if order == "focus":
        t = t.reshape(N * H, W * b1, b0, C).permute(0, 2, 1, 3)  # [n h, i, w j, c]
    else:
        t = t.reshape(N * H, W, b0, b1 * C).permute(0, 2, 1, 3)  # [n h, i, w, j c]
    return t.reshape(N, H * b0, W * b1, C).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------- rank 4, NCHW-formulated
def _factor_split(order: str, C: int, b: tuple[int, int]) -> tuple[int, int, int, int]:
    """(pre_j, post_j, pre_i, post_i): channel factors before/after the column phase j, then around the row phase i."""
    axes = {"crd": ["c", "0", "1"], "dcr": ["0", "1", "c"], "focus": ["1", "0", "c"]}[order]
    size = {"c": C, "0": b[0], "1": b[1]}
    k = axes.index("1")
    pre_j, post_j = math.prod(size[a] for a in axes[:k]), math.prod(size[a] for a in axes[k + 1:])
    rest = [a for a in axes if a != "1"]
    k = rest.index("0")
    pre_i, post_i = math.prod(size[a] for a in rest[:k]), math.prod(size[a] for a in rest[k + 1:])
    return pre_j, post_j, pre_i, post_i


def depth_to_space_rank4_nchw(x: torch.Tensor, block: int | Sequence[int], order: str = "crd") -> torch.Tensor:
    """:func:`pixelfold.depth_to_space` as two rank-4 transposes in NCHW (any order): j moves behind w, then i behind h.

    >>> y = torch.arange(2 * 12 * 2 * 3.).reshape(2, 12, 2, 3)
    >>> all(torch.equal(depth_to_space_rank4_nchw(y, (2, 3), o), _depth_to_space(y, (2, 3), o)) for o in ORDERS)
    True
    """
    b = _check(x, block, order, "depth_to_space")
    if b is None or x.dim() != 4 or x.size(1) % math.prod(b):
        return depth_to_space_rank4(x, block, order) if b is not None and x.dim() == 3 else _depth_to_space(x, block, order)
    N, CR, H, W = x.shape
    b0, b1 = b
    C = CR // (b0 * b1)
    pre_j, post_j, pre_i, post_i = _factor_split(order, C, b)
    t = x.reshape(N * pre_j, b1, post_j * H, W).permute(0, 2, 3, 1)  # [n pre_j, post_j h, w, j]
    t = t.reshape(N * pre_i, b0, post_i * H, W * b1).permute(0, 2, 1, 3)  # [n pre_i, post_i h, i, w j]
    return t.reshape(N, C, H * b0, W * b1)


def space_to_depth_rank4_nchw(x: torch.Tensor, block: int | Sequence[int], order: str = "crd") -> torch.Tensor:
    """:func:`pixelfold.space_to_depth` as two rank-4 transposes in NCHW (any order); inverse of the above.

    >>> x = torch.arange(2 * 3 * 4 * 6.).reshape(2, 3, 4, 6)
    >>> all(torch.equal(space_to_depth_rank4_nchw(x, (2, 3), o), _space_to_depth(x, (2, 3), o)) for o in ORDERS)
    True
    """
    b = _check(x, block, order, "space_to_depth")
    if b is None or x.dim() != 4 or not _s2d_divisible(x, b):
        return space_to_depth_rank4(x, block, order) if b is not None and x.dim() == 3 else _space_to_depth(x, block, order)
    N, C, Hb, Wb = x.shape
    b0, b1 = b
    H, W = Hb // b0, Wb // b1
    pre_j, post_j, pre_i, post_i = _factor_split(order, C, b)
    t = x.reshape(N * pre_i, post_i * H, b0, W * b1).permute(0, 2, 1, 3)  # [n pre_i, i, post_i h, w j]
    t = t.reshape(N * pre_j, post_j * H, W, b1).permute(0, 3, 1, 2)  # [n pre_j, j, post_j h, w]
    return t.reshape(N, C * b0 * b1, H, W)


# ---------------------------------------------------------------------------- native (TFLite: pixel_shuffle)
def _torch_native_s2d(x: torch.Tensor, block: int | Sequence[int], order: str = "crd") -> torch.Tensor:
    b = _check(x, block, order, "space_to_depth")
    if b is not None and x.dim() == 4 and b[0] == b[1] > 1 and order == "crd" and _s2d_divisible(x, b):
        return F.pixel_unshuffle(x, b[0])
    return _space_to_depth(x, block, order)


def _torch_native_d2s(x: torch.Tensor, block: int | Sequence[int], order: str = "crd") -> torch.Tensor:
    b = _check(x, block, order, "depth_to_space")
    if b is not None and x.dim() == 4 and b[0] == b[1] > 1 and order == "crd" and x.size(1) % (b[0] * b[1]) == 0:
        return F.pixel_shuffle(x, b[0])
    return _depth_to_space(x, block, order)


_IMPLS: dict[str, tuple[_Fn, _Fn]] = {
    "rank4": (space_to_depth_rank4, depth_to_space_rank4),
    "rank4_nchw": (space_to_depth_rank4_nchw, depth_to_space_rank4_nchw),
    "native_torch": (_torch_native_s2d, _torch_native_d2s),
}


def max_rank(style: str, dims: int = 2) -> int:
    """The highest tensor rank a style's rearrangement graph holds for ``dims`` spatial dims.

    >>> max_rank("reshape6"), max_rank("rank4"), max_rank("rank4", dims=1)
    (6, 4, 3)
    """
    if style not in STYLES:
        raise FoldError(f"lowering style {style!r} is not one of {STYLES}")
    if style in ("rank4", "rank4_nchw") and dims <= 2:
        return dims + 2
    return 2 + 2 * dims


@contextlib.contextmanager
def _swapped(s2d: _Fn, d2s: _Fn) -> Iterator[None]:
    """Rebind ``space_to_depth`` / ``depth_to_space`` in every loaded pixelfold module (restored afterwards)."""
    from ..export import _SWAP_LOCK

    with _SWAP_LOCK:
        patched: list[tuple[Any, str, Any]] = []
        try:
            for name, module in list(sys.modules.items()):
                if module is None or not (name == "pixelfold" or name.startswith("pixelfold.")):
                    continue
                if name == __name__:
                    continue
                for attr, original, new in (("space_to_depth", _space_to_depth, s2d),
                                            ("depth_to_space", _depth_to_space, d2s)):
                    if getattr(module, attr, None) is original:
                        patched.append((module, attr, original))
                        setattr(module, attr, new)
            yield
        finally:
            for module, attr, original in reversed(patched):
                setattr(module, attr, original)


@contextlib.contextmanager
def lowered_rearrangements(style: str = "rank4", *, exporter: str = "onnx") -> Iterator[None]:
    """Within the block, pixelfold's modules write their rearrangements in ``style`` (see the module docs).

    ``exporter`` matters for ``"native"`` only: ``"onnx"`` routes through
    :func:`pixelfold.export.onnx_native_ops` (``SpaceToDepth`` for ``dcr``,
    ``DepthToSpace`` for ``dcr``/``crd``; pass
    :func:`pixelfold.export.onnx_translation_table` to the exporter, as
    :func:`pixelfold.export.to_onnx` does), ``"tflite"`` through
    ``torch.pixel_shuffle`` / ``pixel_unshuffle`` (``crd``, square blocks).
    Code that imported the functions under its own names is not rerouted.

    >>> import pixelfold
    >>> y = torch.randn(1, 8, 3, 3)
    >>> with lowered_rearrangements("rank4_nchw"):
    ...     z = pixelfold.DepthToSpace(2, "focus")(y)
    >>> torch.equal(z, pixelfold.depth_to_space(y, 2, "focus"))
    True
    >>> with lowered_rearrangements("rank6"):
    ...     pass
    Traceback (most recent call last):
    ...
    pixelfold.errors.FoldError: lowering style 'rank6' is not one of ('reshape6', 'rank4', 'rank4_nchw', 'native'); ...
    """
    if style not in STYLES:
        raise FoldError(
            f"lowering style {style!r} is not one of {STYLES}; 'rank4' keeps every tensor at rank <= 4 "
            "(Ethos-U, RKNN), 'native' uses the exporter's own op"
        )
    if exporter not in ("onnx", "tflite"):
        raise FoldError(f"exporter must be 'onnx' or 'tflite', got {exporter!r}")
    if style == "reshape6":
        yield
        return
    if style == "native" and exporter == "onnx":
        from ..export import onnx_native_ops

        with onnx_native_ops():
            yield
        return
    key = "native_torch" if style == "native" else style
    with _swapped(*_IMPLS[key]):
        yield
