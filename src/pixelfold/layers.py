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

Non-finite inputs
-----------------
The forms are exact for finite inputs. With ``inf``/``NaN`` in the input a form
can differ where its inner weight holds *structural zero taps* — entries no
original tap maps to — because ``0 · inf = NaN`` while the original never
multiplies that pixel at that position. That happens when the kernel span is not
a multiple of the block: ``fold`` of a 3×3/2 conv (inner 2×2 over 4 phases, 7 of
16 taps zero), ``polyphase`` with ``block > 1`` of a kernel not divisible by it,
and ``subpixel(form="shared")`` (one window shared by all phases). Forms with no
structural zero are exact for non-finite inputs too: ``fold`` when every span
``d·(k-1)+1`` rounds to whole blocks (4×4/2, 2×2/2), ``polyphase`` of a strided
conv with ``block=1`` and such spans, ``subpixel(form="phases")`` (each phase has
only its own taps) and :class:`PatchLinear`. ``structural_zero_taps`` on a module
counts them (``0``: exact for non-finite inputs). The plain convs that ``to_space``,
``to_depth``, ``merge`` and ``transposed`` return can hold structural zeros as well
(``to_space`` of a dilated conv writes the dilation out as zero taps, ``to_depth``
zero-pads the kernel to whole blocks, a grouped ``merge`` puts zeros between groups). Zero padding, zero extension and
crops never meet data, so they do not add cases. Within one conv this cannot be
avoided (a dense inner kernel must hold the zeros), so for non-finite data use a
form with ``structural_zero_taps == 0`` or the original layer.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import transforms as T
from .errors import FoldError
from .guards import readable_problem
from .probe import merge as _merge_by_probe
from .probe import padded_conv
from .rearrange import ORDERS, check_block, depth_to_space, phase_permutation, space_to_depth
from .spec import ConvSpec, build_module, empty_module
from .symsize import ceil_div, fit, is_symbolic, space_to_depth_unfold

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

_SPACE_TO_DEPTH = space_to_depth  # (not rerouted by pixelfold.export.onnx_native_ops)
_CONV_FN: dict[int, Callable[..., torch.Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _as_conv(module: nn.Module, what: str, transposed: bool = False) -> nn.modules.conv._ConvNd:
    """``module`` if it is a plain conv (transposed conv) whose attributes say what it computes; else FoldError.

    Layers pixelfold knows by name (quantized, lazy, timm's StdConv2d/BlurPool2d/...: :mod:`pixelfold.hidden`)
    get their own message; every other reason (subclasses, parametrizations, hooks) comes from
    :mod:`pixelfold.guards`.
    """
    plain = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d) if transposed else (nn.Conv1d, nn.Conv2d,
                                                                                             nn.Conv3d)
    if type(module) not in plain:
        from .hidden import layer_refusal  # hidden builds on this module

        refusal = layer_refusal(module, what)
        if refusal:
            raise FoldError(refusal)
    problem = readable_problem(module, what, transposed)
    if problem is not None:
        raise FoldError(problem)
    return module  # type: ignore[return-value]


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


#: Largest transformed weight (bytes) a pixelfold module builds; above it the constructor raises FoldError with the
#: numbers and smaller blocks that fit (a form that big is almost always a mistake: polyphase(Conv2d(64, 64, 3), 16)
#: would be a 16384→16384 conv). Raise it if you really mean it.
MAX_FORM_BYTES = 2**30

# Buffers computed from the spec and the weight: not saved by torch.save / pickle, rebuilt on load.
_DERIVED_BUFFERS = ("weight_index", "bias_index", "in_perm", "out_perm", "frozen_weight", "frozen_bias")


def _rebake_after_load(module: nn.Module, incompatible_keys: object) -> None:
    """``load_state_dict`` post-hook: a frozen module re-bakes from the weights just loaded."""
    if getattr(module, "frozen", False):
        module._bake()  # type: ignore[operator]


def _traced() -> bool:
    """True while torch.compile / torch.export / torch.jit.trace is recording (no Python-side state checks then)."""
    compiler = getattr(torch, "compiler", None)
    for name in ("is_compiling", "is_exporting"):
        fn = getattr(compiler, name, None)
        if fn is not None and fn():
            return True
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting())


def _like_conv_output(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` in the memory format PyTorch's conv gives for input ``x``: channels-last for a channels-last
    4-D/5-D input, else contiguous (a crop or a rearrangement view would break a downstream ``.view()``).

    Canonical strides, not just ``is_contiguous()``: a conv whose output has odd strides on size-1 dims
    (e.g. ``(4, 1, 2)`` for shape ``(1, 2, 2)``) fails in float64 backward ("grad_weight must be contiguous").
    """
    fmt = torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        fmt = torch.channels_last
    elif x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        fmt = torch.channels_last_3d
    if fmt is torch.contiguous_format:
        want, acc = [], 1
        for size in reversed(y.shape):
            want.append(acc)
            acc *= size
        if tuple(reversed(want)) == tuple(y.stride()):
            return y
        return y.clone(memory_format=torch.contiguous_format)
    return y if y.is_contiguous(memory_format=fmt) else y.contiguous(memory_format=fmt)


def _batched(input: torch.Tensor, dims: int) -> tuple[torch.Tensor, bool]:
    """``(input with a batch dim, whether one was added)``: unbatched ``(C, *spatial)`` works as on ``nn.ConvNd``."""
    if isinstance(input, torch.Tensor) and input.dim() == dims + 1:
        return input.unsqueeze(0), True
    return input, False


def _finish(y: torch.Tensor, x: torch.Tensor, unbatched: bool) -> torch.Tensor:
    """The output as ``nn.ConvNd`` returns it: its memory format (eager), the batch dim removed if none came in."""
    if not is_symbolic(x.shape):
        y = _like_conv_output(y, x)
    return y.squeeze(0) if unbatched else y


def _check_form_size(inner: ConvSpec, weight: torch.Tensor | None, hint: Callable[[], str]) -> None:
    """Refuse a form whose inner weight would exceed :data:`MAX_FORM_BYTES` (with the numbers and what fits)."""
    numel = math.prod(inner.weight_shape())
    itemsize = weight.element_size() if weight is not None else 4
    if numel * itemsize > MAX_FORM_BYTES:
        alternatives = hint()
        raise FoldError(
            f"the form's inner conv would be {inner} with {numel:,} weights ({numel * itemsize / 2**30:.1f} GiB, "
            f"above pixelfold.layers.MAX_FORM_BYTES = {MAX_FORM_BYTES / 2**30:.1f} GiB); use a smaller block"
            + (f" ({alternatives})" if alternatives else "")
            + ", or raise pixelfold.layers.MAX_FORM_BYTES if you mean it"
        )


class _GatheredConv(nn.Module):
    """Shared machinery: the original weight/bias Parameters + gather maps computed from the spec.

    The maps are derived data: they are rebuilt when the module is unpickled (``torch.save`` of a model
    stores the Parameters, not the maps), a frozen module re-bakes after ``load_state_dict`` and when its
    Parameters were changed in place (an optimizer step), and a frozen module in training mode with grad
    enabled computes the weight live, so training a frozen model still trains the original weights.
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    frozen: bool = False

    def _share_params(self, source: nn.Module) -> None:
        """Hold ``source``'s weight/bias Parameters (the same objects) and build the gather maps."""
        self.weight = source.weight  # type: ignore[assignment]
        self.bias = source.bias  # type: ignore[assignment]
        self.frozen = False
        self.register_load_state_dict_post_hook(_rebake_after_load)
        self._build_maps()

    def _build_maps(self) -> None:
        """Register ``weight_index`` (and ``bias_index``, or set it to ``None``); subclasses implement it."""
        raise NotImplementedError

    def _register_map(self, name: str, index: torch.Tensor | None) -> None:
        # int64 (the probes may be int32): ONNX's Gather/GatherND take int64 indices only
        if index is None:
            if name in self._buffers:
                del self._buffers[name]
            setattr(self, name, None)
            return
        self.register_buffer(name, index.to(self.weight.device, torch.long), persistent=False)

    def _gather_weight(self) -> torch.Tensor:
        return _apply_map(self.weight, self.weight_index)

    def _gather_bias(self) -> torch.Tensor | None:
        if self.bias is None or self.bias_index is None:
            return self.bias
        return _apply_map(self.bias, self.bias_index)

    def _versions(self) -> tuple[int, ...]:
        return tuple(t._version for t in (self.weight, self.bias) if t is not None)

    def _use_frozen(self) -> bool:
        """Whether forward reads the baked buffers: frozen, not training with grad, and (eagerly) not stale."""
        if not self.frozen:
            return False
        if self.training and torch.is_grad_enabled():
            return False  # training a frozen model: compute live so the original weights get their gradients
        if not _traced() and getattr(self, "_baked_versions", None) != self._versions():
            self._bake()  # weight/bias changed in place (optimizer step, copy_) since freeze(): re-bake
        return True

    @property
    def weight_numel(self) -> int:
        """Number of entries of the transformed (inner) weight."""
        return int(self.weight_index.numel())

    @property
    def structural_zero_taps(self) -> int:
        """Entries of the inner weight's gather map that are a structural zero (no tap of the original).

        A structural zero times an ``inf``/``NaN`` input gives ``NaN`` where the original, which has
        no such tap, may be finite. ``0`` means the form is exact for non-finite inputs too (the
        converse need not hold: a zero tap that only ever meets padding is harmless); see
        "Non-finite inputs" in :mod:`pixelfold.layers`.
        """
        return int((self.weight_index == 0).sum())

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_buffers"] = {k: v for k, v in self._buffers.items() if k not in _DERIVED_BUFFERS}
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)
        self._build_maps()
        if self.frozen:
            self._bake()

    def __deepcopy__(self, memo: dict[int, object]) -> "_GatheredConv":
        # copies the maps too (a deep copy is not a save: rebuilding them each time would only cost time)
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        nn.Module.__setstate__(new, copy.deepcopy(self.__dict__, memo))
        return new

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
        """The inner conv's weight, computed from the original ``weight`` (or baked, when frozen)."""
        if self._use_frozen():
            return self.frozen_weight
        return self._gather_weight()

    def transformed_bias(self) -> torch.Tensor | None:
        """The inner conv's bias (``None`` without bias)."""
        if self.bias is None:
            return None
        if self._use_frozen():
            return self.frozen_bias
        return self._gather_bias()

    @torch.no_grad()
    def _bake(self) -> None:
        self.register_buffer("frozen_weight", self._gather_weight().detach().clone(), persistent=False)
        bias = self._gather_bias() if self.bias is not None else None
        self.register_buffer("frozen_bias", None if bias is None else bias.detach().clone(), persistent=False)
        self._baked_versions = self._versions()

    def freeze(self) -> "_GatheredConv":
        """Bake the transformed weight into buffers (for inference); returns ``self``.

        The baked weight follows the original Parameters: it is rebuilt after ``load_state_dict`` and
        after in-place changes (an optimizer step), and not used in training mode with grad enabled
        (so a frozen model still trains). :meth:`unfreeze` goes back to gathering in every forward.
        """
        self._bake()
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
        self._share_params(conv)

    def _build_maps(self) -> None:
        if self.order == "crd":  # channel c·R + phase: the weight's own flattening
            flatten = lambda w: w.reshape(w.shape[0], -1)  # noqa: E731
        else:  # phase·C + c
            flatten = lambda w: w.movedim(1, -1).reshape(w.shape[0], -1)  # noqa: E731
        self._register_map("weight_index", _index_map(flatten, self.weight.shape))
        self._register_map("bias_index", None)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """The original conv's ``forward(input)`` (batched or unbatched), contiguous like the conv's output."""
        x, unbatched = _batched(input, self.spec.dims)
        return _finish(self._forward(x), x, unbatched)

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
        else:
            out = self.spec.output_size(x.shape[2:])
            x = x[(slice(None), slice(None), *[slice(0, o * ki) for o, ki in zip(out, k)])]
            patches = space_to_depth(x, k, self.order).movedim(1, -1)  # (N, *out, C·R)
        y = F.linear(patches, self.transformed_weight(), self.transformed_bias())
        return y.movedim(n + 1, 1)  # not movedim(-1, ...): the TorchScript ONNX exporter mis-writes negative dims

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
        return f"original: {self.spec}, order={self.order!r}, frozen={self.frozen}"


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
