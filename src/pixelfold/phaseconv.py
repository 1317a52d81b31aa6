"""Fold and polyphase (:class:`PhaseConv`) and patchify-as-linear (:class:`PatchLinear`)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import transforms as T
from .errors import FoldError
from .gathered import (
    _CONV_FN,
    _SPACE_TO_DEPTH,
    _as_conv,
    _batched,
    _check_form_size,
    _finish,
    _GatheredConv,
    conv_output_format,
    _index_map,
)
from .rearrange import (
    check_block,
    depth_to_space,
    space_to_depth,
)
from .spec import ConvSpec
from .symsize import ceil_div, fit, is_symbolic, space_to_depth_unfold


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
        self._share_params(conv)

    def _build_maps(self) -> None:
        """The inner weight's gather map, the inner spec, and the input phases read (``live_phases``, ``None``: all).

        The map moves every ``(o, c)`` kernel the same way, so only its spatial part is stored:
        ``weight_index[j, u, *q]`` is which tap of the kernel (1-based, 0 = a zero tap) output phase ``j``
        reads from input phase ``u`` at inner tap ``q``, computed on a ``(1, 1, *K)`` probe. It does not
        grow with the channels (a 2048×1024 conv has the same map as a 1×1 one); ``forward`` gathers every
        kernel with it and reorders channels with two small permutations for ``dcr``/``focus``. Input
        phases no tap reads (a kernel smaller than the block, e.g. 1×1/2) are left out of the map and not
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
        self.inner = inner.replace(in_channels=spec.in_channels * R_kept, out_channels=spec.out_channels * R_out,
                                   groups=spec.groups)
        _check_form_size(self.inner, self.weight, self._size_hint)
        self.live_phases = phases
        self._register_map("weight_index", S)
        in_perm = out_perm = None
        if order != "crd":
            in_perm = T._permute_in(torch.arange(Cg * R_kept).view(1, -1), self.in_block, order, spec.groups,
                                    inverse=True).flatten()
            if R_out > 1:
                out_perm = T._permute_out(torch.arange(O * R_out), self.out_block, order)
        self._register_map("in_perm", in_perm)
        self._register_map("out_perm", out_perm)
        bias_index = None
        if self.bias is not None and R_out > 1:
            bias_index = _index_map(lambda b: T.phase_bias(b, self.out_block, order), self.bias.shape)
        self._register_map("bias_index", bias_index)

    def _gather_weight(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The inner weight gathered from ``weight`` (default: the original ``weight``; subclasses pass the weight
        the original computes in forward, e.g. timm's standardised one)."""
        w0 = self.weight if weight is None else weight
        O, Cg, *K = w0.shape
        R_out, R_kept, *Q = self.weight_index.shape
        flat = torch.cat([w0.new_zeros(O, Cg, 1), w0.flatten(2)], 2)
        w = flat[:, :, self.weight_index.reshape(-1)].view(O, Cg, R_out, R_kept, *Q)
        w = w.transpose(1, 2).reshape(O * R_out, Cg * R_kept, *Q)
        if self.in_perm is not None:
            w = w.index_select(1, self.in_perm)
        if self.out_perm is not None:
            w = w.index_select(0, self.out_perm)
        return w

    @property
    def weight_numel(self) -> int:
        return math.prod(self.inner.weight_shape())

    def _size_hint(self) -> str:
        """Smaller blocks of the same kind and the inner weights they give (for the too-big message)."""
        spec, n = self.spec, self.spec.dims
        options = []
        for r in (8, 4, 2, 1):
            if self.out_block != (1,) * n:  # polyphase: out_block r, in_block stride * r
                blocks = ((r,) * n, tuple(s * r for s in spec.stride))
                label = f"polyphase(conv, {r})"
            else:  # fold: in_block r dividing the stride
                if any(s % r for s in spec.stride if s > 1):
                    continue
                blocks = ((1,) * n, tuple(r if s > 1 else 1 for s in spec.stride))
                label = f"fold(conv, {r})"
            if max(blocks[1]) >= max(self.in_block):
                continue
            R_out, R_in = math.prod(blocks[0]), math.prod(blocks[1])
            Q = [-(-(d * (k - 1) + 1 + (b - 1) * s) // B)
                 for k, d, s, b, B in zip(spec.kernel, spec.dilation, spec.stride, blocks[0], blocks[1])]
            numel = spec.out_channels * R_out * (spec.in_channels // spec.groups) * R_in * math.prod(Q)
            options.append(f"{label}: {numel:,} weights")
        return "; ".join(options)

    def _gather_phases(self, x: torch.Tensor) -> torch.Tensor:
        if self.live_phases is None:
            if isinstance(x.shape[-1], torch.SymInt) and space_to_depth is _SPACE_TO_DEPTH:  # torch.export
                return space_to_depth_unfold(x, self.in_block, self.order)
            return space_to_depth(x, self.in_block, self.order)
        parts = [x[(slice(None), slice(None), *[slice(u, None, b) for u, b in zip(off, self.in_block)])]
                 for off in self.live_phases]
        return parts[0] if len(parts) == 1 else torch.stack(parts, 2).flatten(1, 2)

    def _geometry(self, spatial: Sequence[Any]) -> tuple[list[Any], list[tuple[int, Any]], list[Any]]:
        """Output size, the (lo, hi) zero padding (negative: crop) after mode padding, and the padded length.

        Only non-negative floor divisions (exact when an exporter lowers them to truncation) and no branch
        on the sizes when they are symbolic (the too-small check then is the inner conv's own).
        """
        out = self.spec.output_size(spatial)
        if not is_symbolic(spatial) and any(o < 1 for o in out):
            raise FoldError(
                f"input of spatial size {tuple(spatial)} is too small for {self.spec} (output would be {out}); "
                "the original conv rejects it too: pass a larger input"
            )
        extra, needed_all = [], []
        for L, (lo, hi), n_out, s2, Q, B, b in zip(spatial, self.spec.padding, out, self.inner.stride,
                                                   self.inner.kernel, self.in_block, self.out_block):
            blocks = ceil_div(n_out, b)
            needed = ((blocks - 1) * s2 + Q) * B
            extra.append((0, needed - (L + lo + hi)))
            needed_all.append(needed)
        return list(out), extra, needed_all

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """The original conv's ``forward(input)`` (batched ``(N, C, *spatial)`` or unbatched ``(C, *spatial)``)."""
        x, unbatched = _batched(input, self.spec.dims)
        return _finish(self._forward(x), x, unbatched)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.spec.dims
        if x.dim() != n + 2:
            raise FoldError(f"expected input of rank {n + 2} (N, C, *spatial) or {n + 1} (C, *spatial), "
                            f"got shape {tuple(x.shape)}")
        spatial = x.shape[2:]
        out, extra, needed = self._geometry(spatial)
        mode = self.spec.padding_mode
        conv_pad: list[int] = [0] * n
        if is_symbolic(spatial):
            # no Python branch on the sizes (they are graph values): pad by the constant padding, then one
            # zero pad / crop to the needed length (see pixelfold.symsize)
            low = [lo for lo, _ in self.spec.padding]
            if mode != "zeros":
                if any(lo or hi for lo, hi in self.spec.padding):
                    x = F.pad(x, [v for lo, hi in reversed(self.spec.padding) for v in (lo, hi)], mode=mode)
                low = [0] * n
            x = fit(x, needed, low)
        else:
            pads = [(lo, hi + e) for (lo, hi), (_, e) in zip(self.spec.padding, extra)]
            if mode == "zeros":
                # (the conv's own padding only where every phase is longer than 1: PyTorch's float64 conv
                # backward fails on a size-1 input dim with padding, "grad_weight must be contiguous")
                if all(lo == hi and lo % B == 0 and L >= 2 * B
                       for (lo, hi), B, L in zip(pads, self.in_block, spatial)):
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
            if is_symbolic(spatial):
                y = fit(y, out)
            else:
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
    ``memory_format="conv"`` (the default) gives the output the conv's memory
    format: for a contiguous input the product is computed as
    ``W @ patchesᵀ``, one GEMM per item that writes ``(N, O, *out)``
    directly; for a channels-last input as one ``patches @ Wᵀ`` viewed as
    ``(N, O, *out)``. ``memory_format="channels_last"`` always computes the
    one ``patches @ Wᵀ`` and returns its view — the "patch embedding is a
    linear layer" swap users write (``F.linear(...).movedim(-1, 1)``): the
    same values, but channels-last strides even for a contiguous input, so a
    downstream ``.view(N, O, -1)`` fails where ``.flatten(2)`` works (and
    ``.flatten(2).transpose(1, 2)``, ViT's next step, is then free).

    >>> patch = torch.nn.Conv2d(3, 8, 4, stride=4)
    >>> m = PatchLinear(patch)
    >>> x = torch.randn(1, 3, 10, 9)              # the remainder rows/cols are ignored, as by the conv
    >>> torch.allclose(m(x), patch(x), atol=1e-5)
    True
    """

    memory_format: str = "conv"  # the class default: modules pickled before the option existed load as "conv"

    def __init__(self, conv: nn.Module, order: str = "crd", memory_format: str = "conv") -> None:
        super().__init__()
        conv = _as_conv(conv, "PatchLinear")
        if order not in ("crd", "dcr"):
            raise FoldError(f"PatchLinear order must be 'crd' or 'dcr', got {order!r}")
        if memory_format not in ("conv", "channels_last"):
            raise FoldError(f"PatchLinear memory_format must be 'conv' (the conv's own output format) or "
                            f"'channels_last' (the matrix product's, no copy), got {memory_format!r}")
        self.order = order
        self.memory_format = memory_format
        self.spec = ConvSpec.from_module(conv)
        s = self.spec
        if (s.kernel != s.stride or any(lo or hi for lo, hi in s.padding) or any(d != 1 for d in s.dilation)
                or s.groups != 1):
            raise FoldError(
                f"PatchLinear needs kernel == stride, padding 0, dilation 1 and groups 1, got {s}; "
                "use pixelfold.fold for other strided convs"
            )
        self._share_params(conv)

    def _build_maps(self) -> None:
        if self.order == "crd":  # channel c·R + phase: the weight's own flattening
            flatten = lambda w: w.reshape(w.shape[0], -1)  # noqa: E731
        else:  # phase·C + c
            flatten = lambda w: w.movedim(1, -1).reshape(w.shape[0], -1)  # noqa: E731
        self._register_map("weight_index", _index_map(flatten, self.weight.shape))
        self._register_map("bias_index", None)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """The original conv's ``forward(input)`` (batched or unbatched), in the conv's memory format unless
        ``memory_format="channels_last"``."""
        x, unbatched = _batched(input, self.spec.dims)
        y = self._forward(x)
        if self.memory_format == "channels_last" and not unbatched:
            return y
        return _finish(y, x, unbatched)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.spec.dims
        k = self.spec.kernel
        if isinstance(x.shape[-1], torch.SymInt):
            # torch.export with dynamic sizes: the matmul's reshapes need stride guards its solver cannot
            # prove, so the program records the conv this module equals (the same weight, reshaped back)
            w = self.transformed_weight()
            C = self.spec.in_channels
            w = w.view(w.shape[0], C, *k) if self.order == "crd" else w.view(w.shape[0], *k, C).movedim(-1, 1)
            return _CONV_FN[n](x, w, self.transformed_bias(), k)
        patches = self._patch_view(x)
        if patches is not None:  # one patch per item, already in the patch vector's memory order: no copy
            y = F.linear(patches, self.transformed_weight(), self.transformed_bias())
            return y.view(y.shape[0], y.shape[1], *[1] * n)
        patches, weight, bias = self._patches(x), self.transformed_weight(), self.transformed_bias()
        if self.memory_format == "channels_last" or conv_output_format(x) is not torch.contiguous_format:
            return F.linear(patches, weight, bias).movedim(n + 1, 1)  # not movedim(-1, ...): the TorchScript
            # ONNX exporter mis-writes negative dims
        # the conv answers contiguous (N, O, *out): W @ patchesᵀ writes that order directly (F.linear's (N, *out, O)
        # would need one more copy of the output: 1.09× the hand-written form on Qwen2-VL's Conv3d)
        out = patches.shape[1:-1]
        y = torch.matmul(weight, patches.reshape(patches.shape[0], math.prod(out), patches.shape[-1]).transpose(1, 2))
        if bias is not None:
            y = y.add_(bias.view(-1, 1))  # in place: matmul's backward does not need its output
        return y.view(y.shape[0], y.shape[1], *out)  # not movedim(-1, ...): the TorchScript ONNX exporter mis-writes negative dims

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, *out, C·prod(k))`` patch vectors in one copy: split each spatial dim into (outer, kernel) as a
        view, permute, one reshape. (``space_to_depth(x).movedim(1, -1)`` would copy twice: the rearrangement,
        then ``F.linear`` makes its non-contiguous input contiguous — 1.5× the hand-written form on ViT-B/16.)"""
        n, k = self.spec.dims, self.spec.kernel
        out = self.spec.output_size(x.shape[2:])
        x = x[(slice(None), slice(None), *[slice(0, o * ki) for o, ki in zip(out, k)])]  # drop the remainder
        split = x.reshape(x.shape[0], x.shape[1], *[d for o, ki in zip(out, k) for d in (o, ki)])
        outer = [2 + 2 * i for i in range(n)]
        inner = [3 + 2 * i for i in range(n)]
        perm = (0, *outer, 1, *inner) if self.order == "crd" else (0, *outer, *inner, 1)
        return split.permute(perm).reshape(x.shape[0], *out, x.shape[1] * math.prod(k))  # not -1: an empty batch

    def _patch_view(self, x: torch.Tensor) -> torch.Tensor | None:
        """``(N, C·prod(k))`` patch vectors as a view of ``x`` when the input is exactly one patch whose memory
        is already in the vector's order (``crd``: contiguous NCHW; ``dcr``: channels-last), else ``None``."""
        if tuple(x.shape[2:]) != tuple(self.spec.kernel):
            return None
        if self.order == "crd" and x.is_contiguous():
            return x.reshape(x.shape[0], -1)
        if self.order == "dcr" and x.dim() >= 3 and x.movedim(1, -1).is_contiguous():
            return x.movedim(1, -1).reshape(x.shape[0], -1)
        return None

    def extra_repr(self) -> str:
        fmt = "" if self.memory_format == "conv" else f", memory_format={self.memory_format!r}"
        return f"original: {self.spec}, order={self.order!r}{fmt}, frozen={self.frozen}"
