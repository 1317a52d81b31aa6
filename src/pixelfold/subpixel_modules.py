"""Transposed convs: :class:`SubpixelConvTranspose` (one stride-1 conv + depth-to-space, or one conv per phase) and :func:`transposed` (conv + depth-to-space → one transposed conv)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import transforms as T
from .errors import FoldError
from .gathered import (
    _CONV_FN,
    _as_conv,
    _batched,
    _finish,
    _GatheredConv,
    _index_map,
)
from .rearrange import (
    depth_to_space,
)
from .rearrange_modules import (
    DepthToSpace,
)
from .spec import ConvSpec, build_module, empty_module


# ---------------------------------------------------------------------------- transposed convs
class SubpixelConvTranspose(_GatheredConv):
    """A transposed conv computed as stride-1 conv(s) + depth_to_space(stride): see :func:`subpixel`."""

    def __init__(self, convt: nn.Module, form: str = "shared", order: str = "crd") -> None:
        super().__init__()
        convt = _as_conv(convt, "subpixel", transposed=True)
        if form not in ("shared", "phases"):
            raise FoldError(f"form {form!r} is not 'shared' or 'phases'")
        if form == "phases" and order != "crd":
            raise FoldError("form='phases' interleaves its outputs itself; order applies only to form='shared'")
        self.spec = ConvSpec.from_module(convt)
        if self.spec.padding_mode != "zeros":
            raise FoldError(f"transposed convs support only padding_mode='zeros', got {self.spec.padding_mode!r}")
        self.form = form
        self.order = order
        self._share_params(convt)

    def _build_maps(self) -> None:
        spec, order = self.spec, self.order
        probe = torch.zeros(spec.weight_shape())
        _, _, self.inner = T.subpixel_weight(probe, None, spec, order)
        if self.form == "shared":
            self._register_map("weight_index", _index_map(lambda w: T.subpixel_weight(w, None, spec, order)[0],
                                                          self.weight.shape))
            bias_index = None
            if self.bias is not None:
                bias_index = _index_map(lambda b: T.phase_bias(b, spec.stride, order), self.bias.shape)
            self._register_map("bias_index", bias_index)
            return
        phases = T.subpixel_phase_weights(probe, spec)
        live = [i for i, (_, w, _) in enumerate(phases) if w is not None]
        self.live = live
        self.phase_shapes = [tuple(phases[i][1].shape) for i in live]  # type: ignore[union-attr]

        def stack(w: torch.Tensor) -> torch.Tensor:
            ws = T.subpixel_phase_weights(w, spec)
            return torch.cat([ws[i][1].reshape(-1) for i in live])  # type: ignore[union-attr]

        self._register_map("weight_index", _index_map(stack, self.weight.shape))
        self._register_map("bias_index", None)

    @property
    def macs_per_position(self) -> int:
        """MACs per input position and batch item of this form (compare with the original's)."""
        cg = self.spec.in_channels // self.spec.groups
        if self.form == "shared":
            return self.inner.out_channels * cg * math.prod(self.inner.kernel)
        return sum(s[0] * s[1] * math.prod(s[2:]) for s in self.phase_shapes)

    def _spec_for(self, x: torch.Tensor, output_size: Sequence[int] | None) -> ConvSpec:
        """The spec with the output padding that ``output_size`` asks for (as ``nn.ConvTranspose`` does)."""
        if output_size is None:
            return self.spec
        n = self.spec.dims
        size = list(output_size)[-n:]
        if len(size) != n:
            raise FoldError(f"output_size {list(output_size)} must have {n} or {n + 2} entries")
        minimum = self.spec.replace(output_padding=(0,) * n).output_size(x.shape[2:])
        pad = []
        for i, (want, lo, s) in enumerate(zip(size, minimum, self.spec.stride)):
            if not lo <= want <= lo + s - 1:
                raise FoldError(f"output_size {want} in dim {i} is not between {lo} and {lo + s - 1} for input "
                                f"size {x.shape[2 + i]}")
            pad.append(want - lo)
        return self.spec.replace(output_padding=tuple(pad))

    def forward(self, input: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        """The original transposed conv's ``forward(input, output_size)`` (batched or unbatched)."""
        x, unbatched = _batched(input, self.spec.dims)
        return _finish(self._forward(x, output_size), x, unbatched)

    def _forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        n = self.spec.dims
        if x.dim() != n + 2:
            raise FoldError(f"expected input of rank {n + 2} (N, C, *spatial) or {n + 1} (C, *spatial), "
                            f"got shape {tuple(x.shape)}")
        spec = self._spec_for(x, output_size)
        out = spec.output_size(x.shape[2:])
        if self.form == "shared":
            padding = self.inner.padding if spec is self.spec else T.subpixel_padding(spec)
            pad = tuple(lo for lo, _ in padding)
            if any(lo != hi or lo < 0 for lo, hi in padding):
                x = F.pad(x, [v for lo, hi in reversed(padding) for v in (lo, hi)])
                pad = (0,) * n
            y = _CONV_FN[n](x, self.transformed_weight(), self.transformed_bias(), 1, pad, 1, self.spec.groups)
            y = depth_to_space(y, self.spec.stride, self.order)
        else:
            y = self._phases_forward(x, spec)
        return y[(slice(None), slice(None), *[slice(0, o) for o in out])]

    def _phases_forward(self, x: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
        n = self.spec.dims
        flat = self.transformed_weight()
        bias = self.transformed_bias()
        blocks = [L + g["extra"] for L, g in zip(x.shape[2:], T.subpixel_geometry(spec))]
        outs: list[torch.Tensor] = []
        offset = 0
        shapes = iter(self.phase_shapes)
        live = set(self.live)
        for i, pads in enumerate(T.subpixel_phase_padding(spec)):
            if i in live:
                shape = next(shapes)
                w = flat[offset: offset + math.prod(shape)].reshape(shape)
                offset += math.prod(shape)
                xi = F.pad(x, [v for lo, hi in reversed(pads) for v in (lo, hi)])
                outs.append(_CONV_FN[n](xi, w, bias, 1, 0, 1, self.spec.groups))
            else:
                z = x.new_zeros(x.shape[0], self.spec.out_channels, *blocks)
                outs.append(z if bias is None else z + bias.view(-1, *[1] * n))
        y = torch.stack(outs, 2).flatten(1, 2)  # (N, O*R, *blocks), crd order
        return depth_to_space(y, self.spec.stride, "crd")

    def extra_repr(self) -> str:
        inner = str(self.inner) if self.form == "shared" else f"{len(self.live)} phase convs {self.phase_shapes}"
        return f"original: {self.spec}\n  form={self.form!r}: {inner}, order={self.order!r}, frozen={self.frozen}"

    def to_transposed(self) -> nn.Module:
        """The original ``nn.ConvTransposeNd`` (sharing this module's parameters)."""
        m = empty_module(self.spec, self.weight.device, self.weight.dtype)
        m.weight = self.weight
        m.bias = self.bias
        return m


def subpixel(convt: nn.Module, form: str = "shared", order: str = "crd") -> SubpixelConvTranspose:
    """A transposed conv as stride-1 conv(s) + depth_to_space(stride), exactly.

    ``form="shared"``: one conv with ``out_channels * prod(stride)`` outputs
    over a window shared by all phases (exports as Conv + DepthToSpace; may
    hold zero taps). ``form="phases"``: one conv per output phase with its
    own window, then interleave (the same MACs as the transposed conv).

    >>> up = torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
    >>> sp = subpixel(up)
    >>> str(sp.inner)                       # 3×3 per phase: 2.25× the MACs of 2×2
    'Conv2d 8→16 k3×3 s1×1 p1×1'
    >>> x = torch.randn(1, 8, 5, 6)
    >>> torch.allclose(sp(x), up(x), atol=1e-5), torch.allclose(subpixel(up, "phases")(x), up(x), atol=1e-5)
    (True, True)
    """
    return SubpixelConvTranspose(convt, form, order)


def transposed(module: nn.Module, trim: bool = True) -> nn.Module:
    """The ``nn.ConvTransposeNd`` equal to a conv followed by depth-to-space.

    Accepts a :class:`SubpixelConvTranspose` (returns its original layer, sharing its Parameters) or
    ``nn.Sequential(conv, nn.PixelShuffle(r) | DepthToSpace(r, order))`` with a
    stride-1, undilated conv with equal zero padding on both sides. The
    result has kernel ``k*r``, stride ``r`` and padding ``(k-1-p)*r``; with
    ``trim`` (default), all-zero taps at both ends of the kernel are dropped
    with the same amount of padding (exact; a conv + shuffle that came from a
    ``ConvTranspose(4, 2, 1)`` comes back as one).

    >>> seq = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1, bias=False), torch.nn.PixelShuffle(2))
    >>> t = transposed(seq)
    >>> t
    ConvTranspose2d(8, 4, kernel_size=(6, 6), stride=(2, 2), padding=(2, 2), bias=False)
    >>> x = torch.randn(1, 8, 5, 5)
    >>> torch.allclose(t(x), seq(x), atol=1e-5)
    True
    """
    if isinstance(module, SubpixelConvTranspose):
        return module.to_transposed()
    parts = list(module.children()) if isinstance(module, nn.Sequential) else []
    if len(parts) != 2 or not isinstance(parts[1], (nn.PixelShuffle, DepthToSpace)):
        raise FoldError(
            f"transposed takes a SubpixelConvTranspose or nn.Sequential(conv, PixelShuffle|DepthToSpace), "
            f"got {type(module).__name__}"
        )
    conv = _as_conv(parts[0], "transposed")
    shuffle = parts[1]
    if isinstance(shuffle, nn.PixelShuffle):
        if conv.weight.dim() != 4:
            raise FoldError("nn.PixelShuffle is 2-D; use pixelfold.DepthToSpace for 1-D/3-D")
        block: int | Sequence[int] = shuffle.upscale_factor
        order = "crd"
    else:
        block, order = shuffle.block, shuffle.order
    spec = ConvSpec.from_module(conv)
    w, b, new = T.transposed_weight(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(),
                                    spec, block, order)
    if trim:
        w, new = T.trim_zero_taps(w, new)
    return build_module(new, w, b, like=conv)
