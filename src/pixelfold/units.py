"""Units and their operators: what one layer or adjacent pair is (a conv, a transposed conv, a pair, a lone rearrangement), and the operators (:class:`Op`) it emits as it stands."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from . import layers as L
from .spec import ConvSpec

Shape = "tuple[int, ...] | None"
_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PLAIN_CONVTS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# ---------------------------------------------------------------------------- operators
@dataclass(frozen=True)
class Op:
    """One operator a form emits, as a target's compiler sees it.

    ``kind`` is ``conv``, ``conv_transpose``, ``space_to_depth``, ``depth_to_space``, ``pad``,
    ``strided_slice``, ``slice``, ``concat``, ``matmul``, ``transpose``, ``reshape``. Convs carry their
    :class:`ConvSpec`; rearrangements their ``block``, ``order`` and ``channels`` (the channels of the
    spatial side) and, where the input shape is known, ``grid``: the batch and the spatial sizes on the
    *depth* side (``(N, H/b_1, W/b_2)``); the rest what a constraint can ask of them (``rank``, ``mode``,
    ``strides``). A lowered transpose with a known size has ``axes_product``: the largest product of
    ``rank - 2`` of its axes (Vela's TRANSPOSE size rule).
    """

    kind: str
    spec: ConvSpec | None = None
    block: tuple[int, ...] | None = None
    order: str | None = None
    channels: int | None = None
    rank: int | None = None
    mode: str | None = None
    strides: tuple[int, ...] | None = None
    grid: tuple[int, ...] | None = None
    note: str = ""

    def attrs(self) -> dict[str, Any]:
        """The attributes a target's constraints test (see :mod:`pixelfold.targets`)."""
        out: dict[str, Any] = {"kind": self.kind}
        s = self.spec
        if s is not None:
            out.update(dims=s.dims, kernel=s.kernel, stride=s.stride, dilation=s.dilation, groups=s.groups,
                       dilated_kernel=s.span,
                       in_channels=s.in_channels, out_channels=s.out_channels, padding_mode=s.padding_mode,
                       padding=tuple(v for pair in s.padding for v in pair),
                       padding_valid=all(lo == hi == 0 for lo, hi in s.padding),
                       depthwise=s.groups > 1 and s.groups == s.in_channels, bias=s.bias,
                       output_padding=s.output_padding)
            if s.transposed:
                out["tflite_padding"] = tflite_transposed_padding(s)
        for name in ("block", "order", "channels", "rank", "mode", "strides"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        if self.block is not None:
            out["dims"] = len(self.block)
        if self.kind == "transpose" and self.note.startswith("lowered"):
            out["axes_product"] = transpose_axes_product(self)
        return out

    def __str__(self) -> str:
        if self.spec is not None:
            return str(self.spec)
        parts = [self.kind]
        if self.block is not None:
            parts.append("×".join(map(str, self.block)))
        if self.order is not None:
            parts.append(self.order)
        if self.rank is not None:
            parts.append(f"rank {self.rank}")
        if self.mode is not None:
            parts.append(self.mode)
        if self.strides is not None:
            parts.append("stride " + "×".join(map(str, self.strides)))
        return " ".join(parts)


def tflite_transposed_padding(spec: ConvSpec) -> str:
    """How a transposed conv's cropping reads in TFLite: ``VALID`` (nothing cropped), ``SAME`` (output = input × stride,
    the crop split as TensorFlow splits it: the smaller half first) or ``explicit`` (anything else).

    torch's ``padding=p, output_padding=q`` crops ``p`` before and ``p - q`` after each dim.

    >>> from torch import nn
    >>> from pixelfold.spec import ConvSpec
    >>> [tflite_transposed_padding(ConvSpec.from_module(nn.ConvTranspose2d(8, 8, k, s, p, q)))
    ...  for k, s, p, q in ((4, 2, 1, 0), (9, 3, 3, 0), (9, 3, 4, 2), (2, 2, 0, 0), (3, 2, 0, 1))]
    ['SAME', 'SAME', 'explicit', 'VALID', 'VALID']
    """
    if all(lo == 0 and hi - q <= 0 for (lo, hi), q in zip(spec.padding, spec.output_padding)):
        return "VALID"  # nothing cropped; output_padding only extends (a VALID TRANSPOSE_CONV + PAD)
    for (lo, hi), q, span, st in zip(spec.padding, spec.output_padding, spec.span, spec.stride):
        total = span - st
        if total < 0 or lo != total // 2 or hi - q != total - total // 2:
            return "explicit"
    return "SAME"


def transpose_axes(op: Op) -> tuple[int, ...] | None:
    """The axis sizes of the core transpose of a lowered rearrangement (``None`` where the size is unknown).

    ``reshape6`` (rank ``2n + 2``): ``N, C, H/b_1, b_1, W/b_2, b_2``; ``rank4`` (2-D): ``N·H/b_1, b_1, W/b_2,
    b_2·C``; litert-torch's writing of torch's PixelShuffle/PixelUnshuffle: ``N·C, b_1, b_2, H/b_1·W/b_2``
    (measured from Vela's reports). ``C`` is the spatial side's channels, ``H, W`` the spatial side's size.

    >>> transpose_axes(Op("transpose", block=(2, 2), channels=64, rank=4, grid=(2, 64, 64),
    ...                   note="lowered depth_to_space by litert-torch"))
    (128, 2, 2, 4096)
    """
    if op.grid is None or op.channels is None or op.block is None or op.rank is None:
        return None
    n, small, block = op.grid[0], op.grid[1:], op.block
    if op.note.endswith("by litert-torch"):
        return (n * op.channels, *block, math.prod(small))
    if op.rank == 2 * len(block) + 2:
        return (n, op.channels, *(v for pair in zip(small, block) for v in pair))
    if len(block) == 2 and op.rank == 4:
        return (n * small[0], block[0], small[1], block[1] * op.channels)
    return None


def transpose_axes_product(op: Op) -> int | None:
    """What Vela's TRANSPOSE size rule bounds (≤ 2^16 on U55/U65): the largest product of ``rank - 2`` axes,
    leading axes of size 1 dropped first (Vela's "all axes outside H/W/C equal to 1" case: a ``1×3×3×65536``
    transpose runs on U55, measured).

    Unknown sizes: ``0`` (presumed in range) for rank ≤ 4, as measured at every size tried, and ``None``
    (out of range: a ``require`` fails) above rank 4.

    >>> transpose_axes_product(Op("transpose", block=(2, 2), channels=64, rank=6, grid=(1, 128, 128), note="lowered"))
    1048576
    >>> transpose_axes_product(Op("transpose", block=(2, 2), rank=6, note="lowered")) is None
    True
    """
    axes = transpose_axes(op)
    if axes is None:
        return 0 if (op.rank or 0) <= 4 else None
    axes = list(axes)
    while len(axes) > 3 and axes[0] == 1:
        axes.pop(0)
    return math.prod(sorted(axes)[2:]) if len(axes) > 2 else max(axes)


def _grid(shape: Shape, block: tuple[int, ...], depth_side: bool) -> tuple[int, ...] | None:
    """``(N, *spatial)`` on the depth side of a rearrangement whose input has ``shape``."""
    if shape is None or len(shape) != len(block) + 2:
        return None
    spatial = shape[2:] if depth_side else tuple(s // b for s, b in zip(shape[2:], block))
    return (shape[0], *spatial)


def _conv(spec: ConvSpec) -> Op:
    return Op("conv_transpose" if spec.transposed else "conv", spec=spec)


def _rearr(kind: str, block: Sequence[int], order: str, channels: int) -> Op:
    return Op(kind, block=tuple(block), order=order, channels=channels)


# ---------------------------------------------------------------------------- units
def rearrangement_of(module: nn.Module) -> tuple[str, tuple[int, ...] | int, str] | None:
    """``(kind, block, order)`` of a rearrangement module pixelfold understands, else ``None``."""
    if isinstance(module, nn.PixelUnshuffle):
        return "space_to_depth", module.downscale_factor, "crd"
    if isinstance(module, nn.PixelShuffle):
        return "depth_to_space", module.upscale_factor, "crd"
    if isinstance(module, L.SpaceToDepth):
        return "space_to_depth", module.block, module.order
    if isinstance(module, L.DepthToSpace):
        return "depth_to_space", module.block, module.order
    return None


def unit_kind(module: nn.Module) -> str | None:
    """Which kind of unit ``module`` is (see the module docstring), or ``None``."""
    t = type(module)
    if t in _PLAIN_CONVS:
        return "conv"
    if t in _PLAIN_CONVTS:
        return "conv_transpose"
    if isinstance(module, L.SubpixelConvTranspose):
        return "conv+d2s"
    if L.is_focus(module):
        return "s2d+conv"
    if isinstance(module, nn.Sequential) and len(module) == 2:
        a, b = module[0], module[1]
        ra, rb = rearrangement_of(a), rearrangement_of(b)
        if ra is not None and ra[0] == "space_to_depth" and type(b) in _PLAIN_CONVS:
            return "s2d+conv"
        if rb is not None and rb[0] == "depth_to_space" and type(a) in _PLAIN_CONVS:
            return "conv+d2s"
    r = rearrangement_of(module)
    if r is not None:
        return "s2d" if r[0] == "space_to_depth" else "d2s"
    return None


def _pair(module: nn.Module) -> tuple[nn.Module, nn.Module]:
    if L.is_focus(module):
        inner = module.conv
        conv = inner if isinstance(inner, nn.modules.conv._ConvNd) else inner.conv
        return L.FocusSlice(), conv
    return module[0], module[1]


def unit_spec(module: nn.Module) -> ConvSpec | None:
    """The conv spec of a unit (the conv of a pair; ``None`` for a lone rearrangement)."""
    kind = unit_kind(module)
    if kind in ("conv", "conv_transpose"):
        return ConvSpec.from_module(module)
    if isinstance(module, L.SubpixelConvTranspose):
        return module.spec
    if kind == "s2d+conv":
        return ConvSpec.from_module(_pair(module)[1])
    if kind == "conv+d2s":
        return ConvSpec.from_module(module[0])
    return None


def _block_of(step: nn.Module, dims: int) -> tuple[tuple[int, ...], str]:
    found = rearrangement_of(step)
    assert found is not None
    _, block, order = found
    return (tuple(block) if not isinstance(block, int) else (block,) * dims), order


def original_ops(module: nn.Module, shape: Shape = None) -> list[Op]:
    """The operators ``module`` (a unit) emits as it is (``shape``: its input's, where known)."""
    kind = unit_kind(module)
    if kind in ("conv", "conv_transpose"):
        return [_conv(ConvSpec.from_module(module))]
    if isinstance(module, L.SubpixelConvTranspose):
        return [_conv(module.spec)]  # it *is* the transposed conv, computed another way; its original is one op
    if kind == "s2d+conv":
        step, conv = _pair(module)
        spec = ConvSpec.from_module(conv)
        block, order = _block_of(step, spec.dims)
        C = spec.in_channels // math.prod(block)
        if L.is_focus(module) or isinstance(step, L.FocusSlice):
            R = math.prod(block)
            return [*(Op("strided_slice", strides=block) for _ in range(R)), Op("concat"), _conv(spec)]
        torch_op = "torch" if isinstance(step, nn.PixelUnshuffle) else ""
        return [Op("space_to_depth", block=block, order=order, channels=C, grid=_grid(shape, block, False),
                   note=torch_op), _conv(spec)]
    if kind == "conv+d2s":
        spec = ConvSpec.from_module(module[0])
        block, order = _block_of(module[1], spec.dims)
        torch_op = "torch" if isinstance(module[1], nn.PixelShuffle) else ""
        grid = None
        if shape is not None and len(shape) == spec.dims + 2:
            grid = (shape[0], *spec.output_size(shape[2:]))
        return [_conv(spec), Op("depth_to_space", block=block, order=order,
                                channels=spec.out_channels // math.prod(block), grid=grid, note=torch_op)]
    r = rearrangement_of(module)
    if r is not None:
        return [_lone_op(module, shape)]
    return []


def _lone_op(module: nn.Module, shape: Shape) -> Op:
    """The op of a lone rearrangement module: dims and channels from its input shape (2-D when unknown)."""
    kind, block, order = rearrangement_of(module)  # type: ignore[misc]
    dims = len(shape) - 2 if shape is not None else (len(block) if not isinstance(block, int) else 2)
    b = (block,) * dims if isinstance(block, int) else tuple(block)
    channels = None
    if shape is not None:
        channels = shape[1] if kind == "space_to_depth" else shape[1] // math.prod(b)
    # nn.PixelShuffle/PixelUnshuffle are exported by torch itself (natively); pixelfold's follow the target's lowering
    torch_op = isinstance(module, (nn.PixelShuffle, nn.PixelUnshuffle))
    return Op(kind, block=b, order=order, channels=channels, grid=_grid(shape, b, kind == "depth_to_space"),
              note="torch" if torch_op else "")
