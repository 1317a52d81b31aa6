"""The base of every form that keeps the original layer's parameters: gather maps from the original weight to the inner conv's, frozen copies that re-bake after a checkpoint load or an in-place step, and the checks on a conv argument."""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FoldError
from .guards import readable_problem
from .rearrange import (
    space_to_depth,
)
from .spec import ConvSpec
from .symsize import is_symbolic

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


def conv_output_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format of ``nn.ConvNd``'s output for input ``x``: channels-last for a (strictly) channels-last
    4-D/5-D input, else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def _like_conv_output(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` in the memory format PyTorch's conv gives for input ``x``: channels-last for a channels-last
    4-D/5-D input, else contiguous (a crop or a rearrangement view would break a downstream ``.view()``).

    Canonical strides, not just ``is_contiguous()``: a conv whose output has odd strides on size-1 dims
    (e.g. ``(4, 1, 2)`` for shape ``(1, 2, 2)``) fails in float64 backward ("grad_weight must be contiguous").
    """
    fmt = conv_output_format(x)
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
