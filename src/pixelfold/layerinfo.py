"""What rewrite needs to know about a layer: its spec, whether it is a plain conv, how the report names it, its cost."""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

from torch import nn

from . import hidden as H
from . import verify as V
from .errors import FoldError
from .guards import type_name as _type_name
from .layers import (
    DepthToSpace,
    PatchLinear,
    PhaseConv,
    SpaceToDepth,
    SubpixelConvTranspose,
)
from .samepad import SamePadPhaseConv
from .spec import ConvSpec

__all__ = ["NAMED_TRANSFORMS", "PROFILE_NAMES", "STATUSES"]


NAMED_TRANSFORMS = ("fold", "polyphase", "subpixel", "transposed", "merge", "to_depth", "patch_linear", "target")
PROFILE_NAMES = ("no_stride", "no_transposed", "patch_linear", "max_kernel=N", "min_channels=N", "same_pad")
STATUSES = ("changed", "failed", "skipped", "kept")

_PLAIN_CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PLAIN_CONVT: tuple[type[nn.Module], ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PLAIN = _PLAIN_CONVS + _PLAIN_CONVT
_PAIR_TRANSFORMS = ("merge", "transposed")

Block = Union[int, Sequence[int]]
TransformFn = Callable[[nn.Module, ConvSpec], nn.Module]


# ---------------------------------------------------------------------------- naming helpers
def _fmt(t: Sequence[int]) -> str:
    return "×".join(str(v) for v in t)




def _describe(module: nn.Module | None) -> str:
    """A one-line description of a (replacement) module."""
    if module is None:
        return ""
    if isinstance(module, PhaseConv):
        parts = []
        if isinstance(module, SamePadPhaseConv):
            parts.append("pad same")
        if module.live_phases is not None and len(module.live_phases) == 1:  # one phase read: a strided slice
            start = module.live_phases[0]
            parts.append("x[" + ", ".join(f"{o}::{b}" for o, b in zip(start, module.in_block)) + "]")
        elif module.live_phases is not None:
            parts.append(f"s2d {_fmt(module.in_block)} ({len(module.live_phases)} of "
                         f"{math.prod(module.in_block)} phases)")
        elif math.prod(module.in_block) > 1:
            parts.append(f"s2d {_fmt(module.in_block)}")
        parts.append(str(module.inner))
        if math.prod(module.out_block) > 1:
            parts.append(f"d2s {_fmt(module.out_block)}")
        return " → ".join(parts)
    if isinstance(module, PatchLinear):
        k = module.spec.kernel
        return (f"patches {_fmt(k)}{'' if module.order == 'crd' else ' dcr'} → linear "
                f"{module.spec.in_channels * math.prod(k)}→{module.spec.out_channels}")
    if isinstance(module, SubpixelConvTranspose):
        inner = str(module.inner) if module.form == "shared" else f"{len(module.live)} phase convs"
        return f"{inner} → d2s {_fmt(module.spec.stride)}"
    if isinstance(module, nn.modules.conv._ConvNd):
        try:
            return str(ConvSpec.from_module(module))
        except FoldError:
            return type(module).__name__
    if isinstance(module, nn.Identity):
        return "Identity"
    if isinstance(module, SpaceToDepth):
        return f"s2d {module.block}" + ("" if module.order == "crd" else f" {module.order}")
    if isinstance(module, DepthToSpace):
        return f"d2s {module.block}" + ("" if module.order == "crd" else f" {module.order}")
    if isinstance(module, nn.PixelUnshuffle):
        return f"PixelUnshuffle({module.downscale_factor})"
    if isinstance(module, nn.PixelShuffle):
        return f"PixelShuffle({module.upscale_factor})"
    if isinstance(module, nn.Sequential):
        return " → ".join(d for d in (_describe(m) for m in module) if d != "Identity")
    return _type_name(type(module))


def _cost(module: nn.Module) -> float:
    """Multiply-accumulates per output position (per input position for transposed convs) of a module's convs."""
    if isinstance(module, PhaseConv):
        return module.weight_numel / math.prod(module.out_block)
    if isinstance(module, SubpixelConvTranspose):
        return float(module.macs_per_position)
    if isinstance(module, nn.modules.conv._ConvNd):
        return float(module.weight.numel())
    return float(sum(_cost(child) for child in module.children()))


def _mac_ratio(old: nn.Module, new: nn.Module) -> float | None:
    """MACs of ``new`` over MACs of ``old`` (both produce the same outputs); None if unknown."""
    try:
        before, after = _cost(old), _cost(new)
    except Exception:
        return None
    return after / before if before > 0 and after > 0 else None


# ---------------------------------------------------------------------------- conv-like modules
# What each layer that hides its function in forward does, and its exact form: pixelfold.hidden's registry.


def _is_strict_conv_subclass(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and type(module) not in _PLAIN


def _is_timm_conv2d_same(module: nn.Module) -> bool:
    cls = type(module)
    # not Conv2dSameExport: it caches the padding of the first input size it sees, so it is not TF-"same"
    # for later sizes and a per-input padding would not match it
    return cls.__name__ == "Conv2dSame" and (cls.__module__ or "").startswith("timm") and isinstance(module, nn.Conv2d)


def _subclass_reason(module: nn.Module) -> str:
    cls = type(module)
    name = _type_name(cls)
    base = next((b.__name__ for b in _PLAIN if isinstance(module, b)), "ConvNd")
    if cls.__name__.startswith("Parametrized"):
        return (f"{name}: weight is parametrized (torch.nn.utils.parametrize) and computed in forward: "
                "not rewritten from attributes; remove the parametrization first")
    hidden = H.lookup(module)
    if hidden is not None:
        return hidden.reason(module, "fold") or f"{hidden.shown} {hidden.describe(module)}: not rewritten"
    return (f"{name} subclasses nn.{base} and may change its forward: not rewritten from attributes; "
            f"give a Rule(types={cls.__name__}, transform=<callable>) to rewrite it yourself")


def _hidden_spec(module: nn.Module) -> ConvSpec | None:
    """The conv a non-ConvNd module registered in :mod:`pixelfold.hidden` computes (``BlurPool2d``, quantized convs)."""
    return H.spec_of(module)


def _spec_of(module: nn.Module) -> ConvSpec | None:
    """The conv spec a rule's predicate sees for ``module`` (None if it is not conv-like)."""
    spec = V.unit_spec(module)
    if spec is None and not isinstance(module, nn.modules.conv._ConvNd):
        return _hidden_spec(module)
    return spec


def _is_conv_like(module: nn.Module) -> bool:
    return (isinstance(module, (nn.modules.conv._ConvNd, PhaseConv, SubpixelConvTranspose))
            or H.lookup(module) is not None)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
