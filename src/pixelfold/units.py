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
    spatial side); the rest what a constraint can ask of them (``rank``, ``mode``, ``strides``).
    """

    kind: str
    spec: ConvSpec | None = None
    block: tuple[int, ...] | None = None
    order: str | None = None
    channels: int | None = None
    rank: int | None = None
    mode: str | None = None
    strides: tuple[int, ...] | None = None
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
        for name in ("block", "order", "channels", "rank", "mode", "strides"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        if self.block is not None:
            out["dims"] = len(self.block)
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
        return [Op("space_to_depth", block=block, order=order, channels=C, note=torch_op), _conv(spec)]
    if kind == "conv+d2s":
        spec = ConvSpec.from_module(module[0])
        block, order = _block_of(module[1], spec.dims)
        torch_op = "torch" if isinstance(module[1], nn.PixelShuffle) else ""
        return [_conv(spec), Op("depth_to_space", block=block, order=order,
                                channels=spec.out_channels // math.prod(block), note=torch_op)]
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
    return Op(kind, block=b, order=order, channels=channels, note="torch" if torch_op else "")
