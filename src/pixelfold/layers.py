"""Drop-in modules for the exact forms, and the constructors that build them.

Constructors that return plain PyTorch layers (fresh parameters):

- :func:`to_space` / :func:`to_depth` — the seed equivalence, conv ↔ conv.
- :func:`merge` — a space-to-depth step + conv → one conv on the original input.
- :func:`transposed` — conv + depth-to-space → ``nn.ConvTransposeNd``.

Constructors that return pixelfold modules taking the *original* input and
returning the *original* output:

- :func:`fold` — pad → space_to_depth → conv with stride/block.
- :func:`polyphase` — any stride: phase-split input → stride-1 conv → depth_to_space.
- :func:`subpixel` — a transposed conv as conv(s) + depth_to_space.

The modules keep the original layer's ``weight``/``bias`` Parameters (the
same objects, so an optimizer that holds them keeps training them and
``state_dict`` keys match the original layer) and compute the transformed
weight in ``forward`` with one gather, so gradients are identical.
``freeze()`` bakes the transformed weight for inference.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import transforms as T
from .errors import FoldError
from .probe import merge as _merge_by_probe
from .probe import padded_conv
from .rearrange import check_block, depth_to_space, phase_permutation, space_to_depth
from .spec import ConvSpec, build_module

__all__ = [
    "SpaceToDepth",
    "DepthToSpace",
    "FocusSlice",
    "PhaseConv",
    "PatchLinear",
    "SubpixelConvTranspose",
    "to_space",
    "to_depth",
    "fold",
    "polyphase",
    "subpixel",
    "transposed",
    "merge",
    "icnr_",
]

_CONV_FN: dict[int, Callable[..., torch.Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _as_conv(module: nn.Module, what: str) -> nn.modules.conv._ConvNd:
    if type(module) not in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        from .hidden import layer_refusal  # hidden builds on this module

        refusal = layer_refusal(module, what)  # quantized, lazy, timm StdConv2d/BlurPool2d/...: say what it is
        if refusal:
            raise FoldError(refusal)
    if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise FoldError(f"{what} takes an nn.Conv1d/2d/3d, got {type(module).__name__}")
    if type(module) not in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        raise FoldError(
            f"{what}: {type(module).__name__} subclasses nn.Conv and may change its forward (e.g. timm's "
            "Conv2dSame pads in forward, StdConv2d standardises its weight); pixelfold does not rewrite it "
            "from its attributes. Convert it to a plain conv first if its forward is the standard one"
        )
    return module


# ---------------------------------------------------------------------------- rearrangement modules
class SpaceToDepth(nn.Module):
    """Module form of :func:`pixelfold.space_to_depth`.

    >>> SpaceToDepth(2)(torch.zeros(1, 3, 4, 4)).shape
    torch.Size([1, 12, 2, 2])
    """

    def __init__(self, block: int | Sequence[int], order: str = "crd") -> None:
        super().__init__()
        self.block = block
        self.order = order

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
        self.block = block
        self.order = order

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


# ---------------------------------------------------------------------------- gather maps
def _index_map(transform: Callable[[torch.Tensor], torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
    """Run a gather-only weight transform on indices: entry ``i+1`` marks source ``i``, 0 a zero.

    The transforms only move entries and insert zeros, so they run on integer
    tensors directly (int32 while the indices fit: half the memory traffic).
    """
    size = math.prod(shape)
    dtype = torch.int32 if size < 2**31 - 1 else torch.int64
    return transform(torch.arange(1, size + 1, dtype=dtype).reshape(*shape))


def _apply_map(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    flat = torch.cat([source.new_zeros(1), source.reshape(-1)])
    return flat[index]


class _GatheredConv(nn.Module):
    """Shared machinery: original weight/bias Parameters + precomputed gather maps."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def _setup_params(self, source: nn.Module, weight_fn: Callable[[torch.Tensor], torch.Tensor] | None,
                      bias_fn: Callable[[torch.Tensor], torch.Tensor] | None,
                      weight_index: torch.Tensor | None = None) -> None:
        """Share ``source``'s weight/bias Parameters; ``weight_index`` (or ``weight_fn`` run on a probe) maps them."""
        self.weight = source.weight  # type: ignore[assignment]
        self.bias = source.bias  # type: ignore[assignment]
        if weight_index is None:
            assert weight_fn is not None
            weight_index = _index_map(weight_fn, self.weight.shape)
        # int64 (the probes may be int32): ONNX's Gather/GatherND take int64 indices only
        self.register_buffer("weight_index", weight_index.to(self.weight.device, torch.long), persistent=False)
        if self.bias is not None and bias_fn is not None:
            self.register_buffer("bias_index", _index_map(bias_fn, self.bias.shape).to(self.bias.device, torch.long),
                                 persistent=False)
        else:
            self.bias_index = None
        self.frozen = False

    # The original layer's attributes, read-only, so model code that inspects them keeps working.
    spec: ConvSpec

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def out_channels(self) -> int:
        return self.spec.out_channels

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self.spec.kernel

    @property
    def stride(self) -> tuple[int, ...]:
        return self.spec.stride

    @property
    def padding(self) -> tuple[int, ...] | tuple[tuple[int, int], ...]:
        return self.spec.symmetric_padding or self.spec.padding

    @property
    def dilation(self) -> tuple[int, ...]:
        return self.spec.dilation

    @property
    def groups(self) -> int:
        return self.spec.groups

    @property
    def padding_mode(self) -> str:
        return self.spec.padding_mode

    @property
    def output_padding(self) -> tuple[int, ...]:
        return self.spec.output_padding

    @property
    def transposed(self) -> bool:
        return self.spec.transposed

    def transformed_weight(self) -> torch.Tensor:
        """The inner conv's weight, computed from the original ``weight``."""
        if self.frozen:
            return self.frozen_weight
        return _apply_map(self.weight, self.weight_index)

    def transformed_bias(self) -> torch.Tensor | None:
        """The inner conv's bias (``None`` without bias)."""
        if self.bias is None:
            return None
        if self.frozen:
            return self.frozen_bias
        if self.bias_index is None:
            return self.bias
        return _apply_map(self.bias, self.bias_index)

    @torch.no_grad()
    def freeze(self) -> "_GatheredConv":
        """Bake the transformed weight into buffers (for inference); returns ``self``.

        Later changes to ``weight`` are not seen until :meth:`unfreeze`.
        """
        self.frozen = False
        self.register_buffer("frozen_weight", self.transformed_weight().detach().clone(), persistent=False)
        bias = self.transformed_bias()
        self.register_buffer("frozen_bias", None if bias is None else bias.detach().clone(), persistent=False)
        self.frozen = True
        return self

    deploy = freeze

    def unfreeze(self) -> "_GatheredConv":
        """Go back to computing the transformed weight in ``forward``."""
        self.frozen = False
        return self


# ---------------------------------------------------------------------------- fold / polyphase
class PhaseConv(_GatheredConv):
    """A conv computed on phase-split input and output: the module behind :func:`fold` and :func:`polyphase`.

    ``forward(x)`` equals the original conv's ``forward(x)`` for every input
    it accepts: pad (with the original padding mode), crop or zero-extend to
    the needed length, ``space_to_depth(in_block)``, a padding-free conv with
    stride ``s*out_block/in_block``, ``depth_to_space(out_block)``, crop.
    """

    def __init__(self, conv: nn.Module, in_block: Sequence[int], out_block: Sequence[int], order: str = "crd") -> None:
        super().__init__()
        conv = _as_conv(conv, "fold/polyphase")
        self.spec = ConvSpec.from_module(conv)
        n = self.spec.dims
        self.in_block = check_block(in_block, n)
        self.out_block = check_block(out_block, n)
        self.order = order
        index, self.inner, self.live_phases = self._phase_index()
        self._setup_params(
            conv, None,
            (lambda b: T.phase_bias(b, self.out_block, order)) if math.prod(self.out_block) > 1 else None,
            weight_index=index,
        )

    def _phase_index(self) -> tuple[torch.Tensor, ConvSpec, list[tuple[int, ...]] | None]:
        """The inner weight's gather map, the inner spec, and the input phases read (``None``: all).

        The map moves every ``(o, c)`` kernel the same way, so the spatial part
        is computed once on a ``(1, 1, *K)`` probe (``S[j, u, q]``: which tap of
        the kernel output phase ``j`` reads from input phase ``u`` at ``q``)
        and broadcast over the channels: milliseconds even for ResNet-50's
        2048×1024 downsample conv. Input phases no tap reads (a kernel
        smaller than the block, e.g. 1×1/2) are left out of the map and not
        gathered in ``forward`` (``crd`` only: the stack of slices yields that order).
        """
        spec, order = self.spec, self.order
        O, Cg, *K = spec.weight_shape()
        single = spec.replace(in_channels=1, out_channels=1, groups=1)
        probe = torch.arange(1, math.prod(K) + 1, dtype=torch.int32).reshape(1, 1, *K)
        S, _, inner = T.phase_conv_weight(probe, None, single, self.in_block, self.out_block, "crd")
        R_out, R_in, *Q = S.shape
        live = S.ne(0).transpose(0, 1).reshape(R_in, -1).any(1)
        phases = None
        if order == "crd" and not bool(live.all()):
            keep = torch.nonzero(live).flatten()
            S = S[:, keep]
            phases = [tuple(int(v) for v in torch.unravel_index(p, tuple(self.in_block))) for p in keep]
        R_kept = S.shape[1]
        dtype = torch.int32 if O * Cg * math.prod(K) < 2**31 - 1 else torch.int64
        ones = [1] * len(Q)
        base = (torch.arange(O, dtype=dtype).view(O, 1, 1, 1, *ones) * Cg
                + torch.arange(Cg, dtype=dtype).view(1, 1, Cg, 1, *ones)) * math.prod(K)
        taps = S.to(dtype).view(1, R_out, 1, R_kept, *Q)
        index = torch.where(taps != 0, base + taps, 0).reshape(O * R_out, Cg * R_kept, *Q)
        if order != "crd":
            index = T._permute_in(index, self.in_block, order, spec.groups, inverse=True)
            if R_out > 1:
                index = T._permute_out(index, self.out_block, order)
        inner = inner.replace(in_channels=spec.in_channels * R_kept, out_channels=spec.out_channels * R_out,
                              groups=spec.groups)
        return index, inner, phases

    def _gather_phases(self, x: torch.Tensor) -> torch.Tensor:
        if self.live_phases is None:
            return space_to_depth(x, self.in_block, self.order)
        parts = [x[(slice(None), slice(None), *[slice(u, None, b) for u, b in zip(off, self.in_block)])]
                 for off in self.live_phases]
        return parts[0] if len(parts) == 1 else torch.stack(parts, 2).flatten(1, 2)

    def _geometry(self, spatial: Sequence[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """Output size and the (lo, hi) zero padding (negative: crop) after mode padding."""
        out = self.spec.output_size(spatial)
        if any(o < 1 for o in out):
            raise FoldError(
                f"input of spatial size {tuple(spatial)} is too small for {self.spec} (output would be {out}); "
                "the original conv rejects it too: pass a larger input"
            )
        extra = []
        for L, (lo, hi), n_out, s2, Q, B, b in zip(spatial, self.spec.padding, out, self.inner.stride,
                                                   self.inner.kernel, self.in_block, self.out_block):
            blocks = -(-n_out // b)
            needed = ((blocks - 1) * s2 + Q) * B
            extra.append((0, needed - (L + lo + hi)))
        return list(out), extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.spec.dims
        if x.dim() != n + 2:
            raise FoldError(f"expected input of rank {n + 2} (N, C, *spatial), got shape {tuple(x.shape)}")
        out, extra = self._geometry(x.shape[2:])
        pads = [(lo, hi + e) for (lo, hi), (_, e) in zip(self.spec.padding, extra)]
        mode = self.spec.padding_mode
        conv_pad: list[int] = [0] * n
        if mode == "zeros":
            if all(lo == hi and lo % B == 0 for (lo, hi), B in zip(pads, self.in_block)):
                conv_pad = [lo // B for (lo, _), B in zip(pads, self.in_block)]
            else:
                x = F.pad(x, [v for lo, hi in reversed(pads) for v in (lo, hi)])
        else:
            if any(lo or hi for lo, hi in self.spec.padding):
                x = F.pad(x, [v for lo, hi in reversed(self.spec.padding) for v in (lo, hi)],
                          mode=mode)
            if any(e for _, e in extra):
                x = F.pad(x, [v for _, e in reversed(extra) for v in (0, e)])
        x = self._gather_phases(x)
        y = _CONV_FN[n](x, self.transformed_weight(), self.transformed_bias(), self.inner.stride, conv_pad,
                        1, self.spec.groups)
        if math.prod(self.out_block) > 1:
            y = depth_to_space(y, self.out_block, self.order)
            y = y[(slice(None), slice(None), *[slice(0, o) for o in out])]
        return y

    def extra_repr(self) -> str:
        phases = "" if self.live_phases is None else f", phases read={self.live_phases}"
        return (f"original: {self.spec}\n  inner: {self.inner}\n  in_block={self.in_block}, "
                f"out_block={self.out_block}, order={self.order!r}{phases}, frozen={self.frozen}")


def fold(conv: nn.Module, block: int | Sequence[int], order: str = "crd") -> PhaseConv:
    """The conv as pad → space_to_depth(block) → conv with stride ``stride/block`` → (nothing to crop).

    Works for any conv whose stride is divisible by ``block`` in every dim:
    any padding (amount, asymmetric ``"same"``, every padding mode), dilation,
    groups, bias, and inputs whose size is not a multiple of the block.

    >>> stem = torch.nn.Conv2d(3, 64, 7, stride=2, padding=3)
    >>> folded = fold(stem, 2)                # MLPerf's TPU stem: 4×4/1 conv on 12 channels
    >>> str(folded.inner)
    'Conv2d 12→64 k4×4 s1×1 p0×0'
    >>> x = torch.randn(1, 3, 33, 35)
    >>> torch.allclose(folded(x), stem(x), atol=1e-5)
    True
    """
    conv = _as_conv(conv, "fold")
    spec = ConvSpec.from_module(conv)
    b = check_block(block, spec.dims)
    T.check_stride_divisible(spec.stride, b)
    return PhaseConv(conv, b, (1,) * spec.dims, order)


def polyphase(conv: nn.Module, block: int | Sequence[int] = 1, order: str = "crd") -> PhaseConv:
    """The conv as space_to_depth(stride·block) → stride-1 conv → depth_to_space(block), for any stride.

    With stride 1 and ``block = r`` this is the exact, cheap form of "the
    same rK×rK kernel at stride 1" from the seed question: the input and the
    output are both cut into r×r phases and a stride-1 conv maps one to the other.

    >>> big = torch.nn.Conv2d(1, 1, 48, bias=False)      # a 48×48 kernel at stride 1
    >>> poly = polyphase(big, 16)
    >>> str(poly.inner)
    'Conv2d 256→256 k4×4 s1×1 p0×0'
    >>> x = torch.randn(1, 1, 80, 80)
    >>> torch.allclose(poly(x), big(x), atol=1e-4)
    True
    """
    conv = _as_conv(conv, "polyphase")
    spec = ConvSpec.from_module(conv)
    b = check_block(block, spec.dims)
    return PhaseConv(conv, tuple(s * bi for s, bi in zip(spec.stride, b)), b, order)


class PatchLinear(_GatheredConv):
    """A patchify conv (kernel = stride, no padding, no dilation, one group) as one matrix product.

    ``F.linear(space_to_depth(x, k) in NHWC order, W.reshape(O, C·prod(k)))`` — the
    "patch embedding is a linear layer" view. Whether it beats the conv
    depends on the BLAS and the shapes: :func:`pixelfold.tune` measures it.
    ``order`` is the patch vector's layout: ``"crd"`` (channel-major, the
    weight's own flattening) or ``"dcr"`` (pixel-major: for a
    ``channels_last`` input the patches are then copies of contiguous runs).
    The output is the ``(N, *out, O)`` product viewed as ``(N, O, *out)``,
    i.e. channels-last memory.

    >>> patch = torch.nn.Conv2d(3, 8, 4, stride=4)
    >>> m = PatchLinear(patch)
    >>> x = torch.randn(1, 3, 10, 9)              # the remainder rows/cols are ignored, as by the conv
    >>> torch.allclose(m(x), patch(x), atol=1e-5)
    True
    """

    def __init__(self, conv: nn.Module, order: str = "crd") -> None:
        super().__init__()
        conv = _as_conv(conv, "PatchLinear")
        if order not in ("crd", "dcr"):
            raise FoldError(f"PatchLinear order must be 'crd' or 'dcr', got {order!r}")
        self.order = order
        self.spec = ConvSpec.from_module(conv)
        s = self.spec
        if (s.kernel != s.stride or any(lo or hi for lo, hi in s.padding) or any(d != 1 for d in s.dilation)
                or s.groups != 1):
            raise FoldError(
                f"PatchLinear needs kernel == stride, padding 0, dilation 1 and groups 1, got {s}; "
                "use pixelfold.fold for other strided convs"
            )
        if order == "crd":  # channel c·R + phase: the weight's own flattening
            flatten = lambda w: w.reshape(w.shape[0], -1)  # noqa: E731
        else:  # phase·C + c
            flatten = lambda w: w.movedim(1, -1).reshape(w.shape[0], -1)  # noqa: E731
        self._setup_params(conv, flatten, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.spec.dims
        k = self.spec.kernel
        out = self.spec.output_size(x.shape[2:])
        x = x[(slice(None), slice(None), *[slice(0, o * ki) for o, ki in zip(out, k)])]
        patches = space_to_depth(x, k, self.order).movedim(1, -1)  # (N, *out, C·R)
        y = F.linear(patches, self.transformed_weight(), self.transformed_bias())
        return y.movedim(n + 1, 1)  # not movedim(-1, ...): the TorchScript ONNX exporter mis-writes negative dims

    def extra_repr(self) -> str:
        return f"original: {self.spec}, order={self.order!r}, frozen={self.frozen}"


# ---------------------------------------------------------------------------- transposed convs
class SubpixelConvTranspose(_GatheredConv):
    """A transposed conv computed as stride-1 conv(s) + depth_to_space(stride): see :func:`subpixel`."""

    def __init__(self, convt: nn.Module, form: str = "shared", order: str = "crd") -> None:
        super().__init__()
        if not isinstance(convt, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            raise FoldError(f"subpixel takes an nn.ConvTranspose1d/2d/3d, got {type(convt).__name__}")
        if form not in ("shared", "phases"):
            raise FoldError(f"form {form!r} is not 'shared' or 'phases'")
        if form == "phases" and order != "crd":
            raise FoldError("form='phases' interleaves its outputs itself; order applies only to form='shared'")
        self.spec = ConvSpec.from_module(convt)
        if self.spec.padding_mode != "zeros":
            raise FoldError(f"transposed convs support only padding_mode='zeros', got {self.spec.padding_mode!r}")
        self.form = form
        self.order = order
        w0 = convt.weight.detach()
        _, _, self.inner = T.subpixel_weight(w0, None, self.spec, order)
        if form == "shared":
            self._setup_params(
                convt,
                lambda w: T.subpixel_weight(w, None, self.spec, order)[0],
                lambda b: T.phase_bias(b, self.spec.stride, order),
            )
        else:
            phases = T.subpixel_phase_weights(w0, self.spec)
            live = [i for i, (_, w, _) in enumerate(phases) if w is not None]
            self.live = live

            def stack(w: torch.Tensor) -> torch.Tensor:
                ws = T.subpixel_phase_weights(w, self.spec)
                return torch.cat([ws[i][1].reshape(-1) for i in live])  # type: ignore[union-attr]

            self.phase_shapes = [tuple(phases[i][1].shape) for i in live]  # type: ignore[union-attr]
            self._setup_params(convt, stack, None)

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

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        n = self.spec.dims
        if x.dim() != n + 2:
            raise FoldError(f"expected input of rank {n + 2} (N, C, *spatial), got shape {tuple(x.shape)}")
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
        bias = self.bias if not self.frozen else self.frozen_bias
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
        m = self.spec.module_type()(**self.spec.module_kwargs(), device=self.weight.device, dtype=self.weight.dtype)
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


# ---------------------------------------------------------------------------- seed equivalence
def to_space(conv: nn.Module, block: int | Sequence[int], order: str = "crd") -> nn.Module:
    """The conv that acts on ``depth_to_space(x, block, order)`` and returns ``conv(x)``.

    Kernel ``rK``, stride ``rS``, padding ``rP`` (dilation written out), channels
    ``C/r²`` — the seed question, answered: a 3×3 conv on 256×H×W *is* a
    48×48 conv with stride 16 on 1×16H×16W.

    >>> conv = torch.nn.Conv2d(256, 1, 3, padding=1)
    >>> big = to_space(conv, 16)
    >>> big
    Conv2d(1, 1, kernel_size=(48, 48), stride=(16, 16), padding=(16, 16))
    >>> x = torch.randn(1, 256, 8, 8)
    >>> import pixelfold
    >>> torch.allclose(big(pixelfold.depth_to_space(x, 16)), conv(x), atol=1e-4)
    True
    """
    conv = _as_conv(conv, "to_space")
    spec = ConvSpec.from_module(conv)
    w, new = T.to_space_weight(conv.weight.detach(), spec, block, order)
    # asymmetric padding (padding='same' with an even kernel) comes back as nn.Sequential(ZeroPadNd, conv)
    return padded_conv(new, w, None if conv.bias is None else conv.bias.detach(), like=conv)


def to_depth(conv: nn.Module, block: int | Sequence[int], order: str = "crd") -> nn.Module:
    """The conv that acts on ``space_to_depth(x, block, order)`` and returns ``conv(x)``.

    Needs stride and padding divisible by the block (use :func:`fold`
    otherwise); the kernel is zero-padded up to a multiple of the block.

    >>> conv = torch.nn.Conv2d(1, 1, 48, stride=16, padding=16)
    >>> to_depth(conv, 16)
    Conv2d(256, 1, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    """
    conv = _as_conv(conv, "to_depth")
    spec = ConvSpec.from_module(conv)
    w, new = T.to_depth_weight(conv.weight.detach(), spec, block, order)
    return build_module(new, w, None if conv.bias is None else conv.bias.detach(), like=conv)


def merge(module: nn.Module, conv: nn.Module | None = None) -> nn.Module:
    """One conv on the original input, from a space-to-depth step followed by a conv.

    ``module`` is ``nn.Sequential(step, conv)``, a Focus-style module (its
    ``forward`` is ``self.conv(space_to_depth(x))``: YOLOv5's ``Focus``, YOLOX's,
    SPD-Conv's), or the step itself with ``conv`` given separately. The step is
    recognised by what it does, not by its class: :mod:`pixelfold.probe` runs a
    deep copy on index-valued inputs and derives the block and the channel
    order it applies (pixelfold's :class:`SpaceToDepth` in any order,
    :class:`FocusSlice`, ``nn.PixelUnshuffle``, timm's ``SpaceToDepth`` as in
    TResNet, any slice order), or refuses with the reason. A grouped conv
    merges too: the result has as many groups as its channel order allows
    (``groups=1`` when the order mixes the groups, with zeros between them).
    A conv wrapper after the step (YOLOv5's ``Conv``, timm's ``ConvNormAct``:
    conv → norm → act, reached only through the conv) comes back as that
    wrapper with its conv merged. Asymmetric padding (``padding='same'`` with
    an even kernel) comes back as ``nn.Sequential(ZeroPadNd, conv)``.

    >>> focus = torch.nn.Sequential(FocusSlice(), torch.nn.Conv2d(12, 32, 3, padding=1))
    >>> merge(focus)                         # what YOLOv5 replaced Focus with
    Conv2d(3, 32, kernel_size=(6, 6), stride=(2, 2), padding=(2, 2))
    >>> merge(nn.PixelUnshuffle(2), nn.Conv2d(12, 6, 3, groups=3))      # the groups survive in crd order
    Conv2d(3, 6, kernel_size=(6, 6), stride=(2, 2), groups=3)
    """
    return _merge_by_probe(module, conv)


# ---------------------------------------------------------------------------- init
@torch.no_grad()
def icnr_(
    weight: torch.Tensor,
    block: int | Sequence[int],
    order: str = "crd",
    init: Callable[[torch.Tensor], torch.Tensor] = nn.init.kaiming_normal_,
) -> torch.Tensor:
    """ICNR init (Aitken et al. 2017) of a conv weight that feeds ``depth_to_space(block, order)``.

    Each output channel's ``prod(block)`` sub-kernels start identical, so the
    sub-pixel conv starts as nearest-neighbour upsampling of a conv: no
    checkerboard. The grouping follows ``order`` (``repeat_interleave`` for
    ``crd``, which ``nn.PixelShuffle`` uses; ``repeat`` for ``dcr``).

    >>> conv = torch.nn.Conv2d(8, 3 * 4, 3, padding=1)
    >>> _ = icnr_(conv.weight, 2)
    >>> torch.equal(conv.weight[0], conv.weight[3]), torch.equal(conv.weight[0], conv.weight[4])
    (True, False)
    """
    n = weight.dim() - 2
    b = check_block(block, n)
    R = math.prod(b)
    if weight.shape[0] % R:
        raise FoldError(f"weight has {weight.shape[0]} output channels, not divisible by prod(block) = {R}; "
                        "pass the block of the depth_to_space that follows the conv")
    sub = torch.empty(weight.shape[0] // R, *weight.shape[1:], dtype=weight.dtype, device=weight.device)
    init(sub)
    full = sub.repeat_interleave(R, 0)  # crd grouping
    if order != "crd":
        full = full.index_select(0, phase_permutation(weight.shape[0] // R, b, order).to(full.device))
    weight.copy_(full)
    return weight
