"""Whole-model rewriting by rules and profiles, verified layer by layer and end to end.

:func:`rewrite` walks a model's module tree, swaps the layers that a set of
rules selects for their exact pixelfold forms, checks every swapped layer
against the original (float64, on the inputs it really receives when
``example_inputs`` is given, on random inputs otherwise), puts back any layer
that does not match, checks the whole model end to end, and says what it did
in a :class:`RewriteReport`.

Rules come as a profile name, a :class:`Profile`, or a list of :class:`Rule`:

==========================  ===================================================================
``"no_stride"``             every conv with stride > 1 → :func:`pixelfold.fold` by its stride (a
                            :class:`~pixelfold.PhaseConv` whose inner conv has stride 1); every
                            transposed conv with stride > 1 → :func:`pixelfold.subpixel`
``"no_transposed"``         every ``nn.ConvTransposeNd`` → :func:`pixelfold.subpixel`
``"max_kernel=N"``          convs whose kernel extent (``dilation*(k-1)+1``) exceeds ``N`` → folded
                            with the smallest block (dividing the stride) that brings the inner
                            kernel to ``<= N``
``"min_channels=N"``        strided convs with fewer than ``N`` input channels (stems) → folded with
                            the smallest block (dividing the stride) giving ``>= N`` channels
``"same_pad"`` (add-on)     e.g. ``"no_stride+same_pad"``: also fold timm's ``Conv2dSame``, with its
                            TF-"same" padding computed per input (:class:`SamePadPhaseConv`)
==========================  ===================================================================

Profiles combine with ``+`` (``"no_stride+no_transposed"``). Only the exact
classes ``nn.Conv1d/2d/3d`` and ``nn.ConvTranspose1d/2d/3d`` are rewritten
from their attributes: a subclass may change ``forward``, so it is reported as
skipped with the reason, never silently rewritten — except the layers
:mod:`pixelfold.hidden` knows (timm's ``StdConv2d``/``ScaledStdConv2d``,
``BlurPool2d``, ...), whose exact fold/polyphase forms compute in ``forward``
what they hide there (timm's ``Conv2dSame`` and the dynamic ``...Same`` ones
with the ``same_pad`` add-on).

Pairs that span two modules (a space-to-depth step feeding a conv → one conv,
``Rule("merge")``; a conv feeding ``PixelShuffle`` → a transposed conv,
``Rule("transposed")``) are found inside ``nn.Sequential`` and, when the model
can be traced, anywhere with ``torch.fx``. The report gives each change's MAC
ratio (folding a 1×1/2 conv costs 4× the MACs, a 3×3/2 one 16/9×).
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import math
import re
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from itertools import product
from typing import Any, Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import hidden as H
from . import probe as P
from . import verify as V
from .errors import FoldError
from . import forms
from .forms import rearrangement_of, unit_kind
from .guards import hook_problem
from .layers import (
    DepthToSpace,
    PatchLinear,
    PhaseConv,
    SpaceToDepth,
    SubpixelConvTranspose,
    fold,
    is_focus,
    merge,
    polyphase,
    subpixel,
    to_depth,
    transposed,
)
from .rearrange import ORDERS, check_block
from .spec import ConvSpec, as_tuple
from .transforms import check_stride_divisible
from .samepad import SamePadPhaseConv

__all__ = [
    "Rule",
    "Profile",
    "LayerChange",
    "RewriteReport",
    "SamePadPhaseConv",
    "rewrite",
    "NAMED_TRANSFORMS",
    "PROFILE_NAMES",
]

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


def _type_name(cls: type) -> str:
    """``Conv2d`` for torch.nn classes, ``timm.layers.Conv2dSame`` for others."""
    mod = cls.__module__ or ""
    if mod.startswith("torch.nn"):
        return cls.__qualname__
    if mod.startswith("pixelfold"):
        return f"pixelfold.{cls.__qualname__}"
    parts = mod.split(".")
    return ".".join(parts[:2] + [cls.__qualname__])


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


# ---------------------------------------------------------------------------- the Rule
@dataclass
class Rule:
    """Which layers to rewrite, and how.

    A layer is selected when it is an instance of ``types``, its dotted path
    matches ``name`` (an ``fnmatch`` pattern such as ``"layer*.0.conv1"``,
    a compiled regex, or a string ``"re:<regex>"``, searched), and
    ``where(spec)`` is true for its :class:`~pixelfold.ConvSpec` (for the
    pair transforms below, ``types``, ``name`` and ``where`` apply to the conv
    of the pair). The first rule that selects a layer and can rewrite it wins.

    ``transform`` is a callable ``(module, spec) -> nn.Module`` or one of
    :data:`NAMED_TRANSFORMS`:

    - ``"fold"``: :func:`pixelfold.fold` with ``block`` (default: the stride,
      which leaves an inner conv of stride 1);
    - ``"polyphase"``: :func:`pixelfold.polyphase` with ``block`` (default 1);
    - ``"subpixel"``: :func:`pixelfold.subpixel` with ``form`` (``"shared"``
      or ``"phases"``);
    - ``"to_depth"``: ``nn.Sequential(SpaceToDepth(block), to_depth(conv, block))``
      (needs padding divisible by the block);
    - ``"merge"``: a space-to-depth step followed by a conv, adjacent in an
      ``nn.Sequential`` (the step becomes ``nn.Identity``, the conv the merged
      conv, so indices and ``state_dict`` keys stay), or a YOLOv5 ``Focus``;
    - ``"transposed"``: a conv followed by ``nn.PixelShuffle``/``DepthToSpace``
      in an ``nn.Sequential`` (conv → ``nn.ConvTransposeNd``, shuffle →
      ``nn.Identity``), or a :class:`~pixelfold.SubpixelConvTranspose` back to
      its transposed conv.

    ``block`` may be a callable ``spec -> block`` that raises
    :class:`~pixelfold.FoldError` (with the reason) when no block fits; the
    layer is then reported as skipped with that reason. ``same_pad=True``
    lets ``"fold"``/``"polyphase"`` rewrite timm's ``Conv2dSame`` exactly
    (:class:`SamePadPhaseConv`). ``label`` names a callable transform in the report.

    >>> rule = Rule("fold", name="stem.*", where=lambda s: max(s.stride) > 1)
    >>> rule.transform_name, [t.__name__ for t in rule.types]
    ('fold', ['Conv1d', 'Conv2d', 'Conv3d'])
    >>> rule.selects("stem.0", torch.nn.Conv2d(3, 8, 3, stride=2))
    True
    >>> rule.selects("body.0", torch.nn.Conv2d(3, 8, 3, stride=2))
    False
    """

    transform: str | TransformFn = "fold"
    types: type | tuple[type, ...] | None = None
    name: str | re.Pattern[str] | None = None
    where: Callable[[ConvSpec], bool] | None = None
    block: Block | Callable[[ConvSpec], Block] | None = None
    form: str = "shared"
    order: str = "crd"
    same_pad: bool = False
    label: str | None = None
    target: Any = None

    def __post_init__(self) -> None:
        if self.target is not None or self.transform == "target":
            from . import targets

            if self.target is None:
                raise FoldError("Rule('target') needs target=<name, file or pixelfold.targets.Target>")
            self.target = targets.get(self.target)
            self.transform = "target"
        if isinstance(self.transform, str):
            if self.transform not in NAMED_TRANSFORMS:
                raise FoldError(
                    f"transform {self.transform!r} is not one of {NAMED_TRANSFORMS}; "
                    "or pass a callable (module, spec) -> nn.Module"
                )
        elif not callable(self.transform):
            raise FoldError(f"transform must be a name or a callable, got {type(self.transform).__name__}")
        if self.types is None:
            if self.transform == "subpixel":
                self.types = _PLAIN_CONVT
            elif self.transform == "transposed":
                self.types = _PLAIN_CONVS + (SubpixelConvTranspose,)
            elif isinstance(self.transform, str):
                self.types = _PLAIN_CONVS
            else:
                self.types = _PLAIN
        elif isinstance(self.types, type):
            self.types = (self.types,)
        else:
            self.types = tuple(self.types)
        if isinstance(self.name, str) and self.name.startswith("re:"):
            self.name = re.compile(self.name[3:])
        if self.form not in ("shared", "phases"):
            raise FoldError(f"form {self.form!r} is not 'shared' or 'phases'")
        if self.order not in ORDERS:
            raise FoldError(f"order {self.order!r} is not one of {ORDERS}")
        if self.block is not None and not callable(self.block):
            _check_rule_block(self.block)

    @property
    def transform_name(self) -> str:
        """The name the report uses for this rule's transform."""
        if self.target is not None:
            return self.target.name
        if isinstance(self.transform, str):
            return self.transform
        return self.label or getattr(self.transform, "__name__", "custom")

    @property
    def is_pair(self) -> bool:
        """True for transforms that act on two adjacent modules (``merge``, ``transposed``)."""
        return self.transform in _PAIR_TRANSFORMS or self.target is not None

    def matches_name(self, path: str) -> bool:
        """Does ``path`` match this rule's name pattern (always true without one)?"""
        if self.name is None:
            return True
        if isinstance(self.name, re.Pattern):
            return self.name.search(path) is not None
        return fnmatch.fnmatchcase(path, self.name)

    def selects(self, path: str, module: nn.Module, spec: ConvSpec | None = None) -> bool:
        """Is ``module`` at ``path`` one of this rule's layers (by type, name and predicate)?"""
        if not isinstance(module, self.types):  # type: ignore[arg-type]
            return False
        if not self.matches_name(path):
            return False
        if self.where is not None:
            spec = spec if spec is not None else _spec_of(module)
            if spec is None or not self.where(spec):
                return False
        return True


def _check_rule_block(block: Any) -> None:
    """A Rule's block: a positive int or a tuple of them (the dims are checked when a layer is matched)."""
    values = (block,) if isinstance(block, int) and not isinstance(block, bool) else block
    try:
        values = as_tuple(values, len(values), "block")  # type: ignore[arg-type]
    except TypeError:
        raise FoldError(f"block must be a positive int, a tuple of them or a callable spec -> block, got {block!r}") \
            from None
    if not values or any(v < 1 for v in values):
        raise FoldError(f"block must be a positive int, a tuple of them or a callable spec -> block, got {block!r}")


# ---------------------------------------------------------------------------- profiles
def _strided(spec: ConvSpec) -> bool:
    return any(s > 1 for s in spec.stride)


def _max_kernel_block(n: int) -> Callable[[ConvSpec], tuple[int, ...]]:
    def choose(spec: ConvSpec) -> tuple[int, ...]:
        block = []
        for i, (s, e) in enumerate(zip(spec.stride, spec.span)):
            fits = [b for b in _divisors(s) if -(-e // b) <= n]
            if not fits:
                hint = ""
                for r in range(1, 65):  # polyphase(conv, r): inner kernel ceil((E + (r-1)s) / (s r))
                    if all(-(-(ee + (r - 1) * ss) // (ss * r)) <= n for ss, ee in zip(spec.stride, spec.span)):
                        hint = (f"; Rule('polyphase', block={r}) would (inner kernel ≤ {n}, "
                                f"{r ** spec.dims}× the output channels)")
                        break
                raise FoldError(
                    f"kernel extent {e} at stride {s} in dim {i}: no block dividing the stride brings the inner "
                    f"kernel to ≤ {n} (block {s} leaves {-(-e // s)}){hint}"
                )
            block.append(min(fits))
        return tuple(block)

    choose.__name__ = f"max_kernel_{n}_block"
    return choose


def _min_channels_block(n: int) -> Callable[[ConvSpec], tuple[int, ...]]:
    def choose(spec: ConvSpec) -> tuple[int, ...]:
        cands = [b for b in product(*(_divisors(s) for s in spec.stride))
                 if spec.in_channels * math.prod(b) >= n]
        if not cands:
            most = spec.in_channels * math.prod(spec.stride)
            r = 1
            while most * r ** spec.dims < n:
                r += 1
            raise FoldError(
                f"in_channels {spec.in_channels} × prod(stride {_fmt(spec.stride)}) = {most} < min_channels {n}: "
                f"folding by a block that divides the stride gives at most {most} channels; "
                f"Rule('polyphase', block={r}) would give {most * r ** spec.dims} (and {r ** spec.dims}× the "
                "output channels)"
            )
        return min(cands, key=lambda b: (math.prod(b), max(b) - min(b), b))

    choose.__name__ = f"min_channels_{n}_block"
    return choose


@dataclass
class Profile:
    """A named list of :class:`Rule`: what a whole-model rewrite should achieve.

    Build one with the class methods or :meth:`parse`; add two with ``+``.

    >>> p = Profile.parse("no_stride+no_transposed")
    >>> p.name, [r.transform_name for r in p.rules]
    ('no_stride+no_transposed', ['fold', 'subpixel', 'subpixel'])
    >>> Profile.parse("max_kernel=3").name
    'max_kernel=3'
    """

    name: str
    rules: list[Rule]
    description: str = ""

    @classmethod
    def no_stride(cls, same_pad: bool = False) -> "Profile":
        """Strided convs → fold by the stride; strided transposed convs → subpixel."""
        return cls(
            "no_stride" + ("+same_pad" if same_pad else ""),
            [
                Rule("fold", where=_strided, same_pad=same_pad),
                Rule("subpixel", where=_strided),
            ],
            "no layer with stride > 1 remains: convs are folded by their stride (inner conv stride 1), "
            "transposed convs become stride-1 convs + depth_to_space",
        )

    @classmethod
    def no_transposed(cls) -> "Profile":
        """Every transposed conv → stride-1 conv + depth_to_space (:func:`pixelfold.subpixel`)."""
        return cls("no_transposed", [Rule("subpixel")], "every nn.ConvTransposeNd becomes conv + depth_to_space")

    @classmethod
    def patch_linear(cls) -> "Profile":
        """Every patchify conv (kernel = stride, no padding, one group) → one matrix product (:class:`PatchLinear`)."""
        return cls("patch_linear", [Rule("patch_linear", where=forms.is_patch)],
                   "every patch-embedding conv (kernel = stride, no padding, dilation 1, one group) becomes one "
                   "F.linear on its patches")

    @classmethod
    def max_kernel(cls, n: int, same_pad: bool = False) -> "Profile":
        """Convs with a kernel extent > ``n`` → fold with the smallest block that brings it to ≤ ``n``."""
        if n < 1:
            raise FoldError(f"max_kernel must be ≥ 1, got {n}")
        return cls(
            f"max_kernel={n}" + ("+same_pad" if same_pad else ""),
            [Rule("fold", where=lambda s: max(s.span) > n, block=_max_kernel_block(n), same_pad=same_pad)],
            f"no conv kernel extent above {n}: fold by the smallest block dividing the stride that brings it there",
        )

    @classmethod
    def min_channels(cls, n: int, same_pad: bool = False) -> "Profile":
        """Strided convs with < ``n`` input channels → fold with the smallest block giving ≥ ``n``."""
        if n < 1:
            raise FoldError(f"min_channels must be ≥ 1, got {n}")
        return cls(
            f"min_channels={n}" + ("+same_pad" if same_pad else ""),
            [Rule("fold", where=lambda s: s.in_channels < n and _strided(s), block=_min_channels_block(n),
                  same_pad=same_pad)],
            f"strided convs with fewer than {n} input channels (stems) are folded to at least {n} channels",
        )

    @classmethod
    def target(cls, name: Any) -> "Profile":
        """Rewrite exactly what the NPU target ``name`` rejects (:mod:`pixelfold.targets`), nothing else."""
        rule = Rule("target", target=name)
        return cls(rule.target.name, [rule], f"what {rule.target.name}'s compiler rejects becomes an exact form it "
                   "runs; the rest is left as it is")

    @classmethod
    def parse(cls, text: str) -> "Profile":
        """A profile from its name: ``"no_stride"``, ``"max_kernel=3"``, ``"no_stride+same_pad"``, ..."""
        tokens = [t.strip() for t in re.split(r"[+,]", text) if t.strip()]
        if not tokens:
            raise FoldError(f"empty profile {text!r}; use one of {PROFILE_NAMES}")
        same_pad = "same_pad" in tokens
        tokens = [t for t in tokens if t != "same_pad"]
        if not tokens:
            raise FoldError("'same_pad' is an add-on; combine it with a profile, e.g. 'no_stride+same_pad'")
        profiles = []
        for tok in tokens:
            key, _, value = tok.partition("=")
            key = key.strip()
            if key == "no_stride" and not value:
                profiles.append(cls.no_stride(same_pad))
            elif key == "no_transposed" and not value:
                profiles.append(cls.no_transposed())
            elif key == "patch_linear" and not value:
                profiles.append(cls.patch_linear())
            elif not value and _is_target(tok):
                profiles.append(cls.target(tok))
            elif key in ("max_kernel", "min_channels"):
                try:
                    n = int(value)
                except ValueError:
                    raise FoldError(f"profile {tok!r} needs an integer, e.g. '{key}=3'") from None
                profiles.append(cls.max_kernel(n, same_pad) if key == "max_kernel" else cls.min_channels(n, same_pad))
            else:
                from . import targets

                raise FoldError(f"unknown profile {tok!r}; use one of {PROFILE_NAMES} (combine with '+') or a target: "
                                f"{', '.join(targets.names())} (or a .toml/.json target file)")
        out = profiles[0]
        for p in profiles[1:]:
            out = out + p
        return out

    def __add__(self, other: "Profile") -> "Profile":
        return Profile(f"{self.name}+{other.name}", [*self.rules, *other.rules],
                       "; ".join(d for d in (self.description, other.description) if d))


def _is_target(name: str) -> bool:
    from . import targets

    return targets.is_target(name)


def _as_rules(rules: str | Profile | Rule | Sequence[Rule | Profile | str]) -> tuple[list[Rule], str]:
    from .targets import Target

    if isinstance(rules, Target):
        p = Profile.target(rules)
        return p.rules, p.name
    if isinstance(rules, str):
        p = Profile.parse(rules)
        return p.rules, p.name
    if isinstance(rules, Profile):
        return list(rules.rules), rules.name
    if isinstance(rules, Rule):
        return [rules], rules.transform_name
    if not isinstance(rules, (list, tuple)):
        raise FoldError(f"rules must be a profile name such as 'no_stride', a Profile, a Rule or a list of them, "
                        f"got {type(rules).__name__} {rules!r}"[:300])
    out: list[Rule] = []
    names: list[str] = []
    for item in rules:
        got, name = _as_rules(item)
        out.extend(got)
        names.append(name)
    if not out:
        raise FoldError("no rules given; pass a profile name such as 'no_stride', a Profile, or a list of Rule")
    return out, ",".join(names)


# ---------------------------------------------------------------------------- the report
@dataclass
class LayerChange:
    """One line of a :class:`RewriteReport`: what happened to one layer (or adjacent pair)."""

    path: str
    type: str
    before: str
    after: str = ""
    transform: str = ""
    status: str = "kept"
    reason: str = ""
    max_error: float | None = None
    tolerance: float | None = None
    mac_ratio: float | None = None
    checked_on: str = ""
    time_before: float | None = None
    time_after: float | None = None
    note: str = ""


def _json_float(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class RewriteReport:
    """What :func:`rewrite` did: one :class:`LayerChange` per conv-like layer, and the end-to-end check.

    ``str(report)`` is a fixed-width table (changed, failed and skipped
    layers with reasons; kept layers are counted), ``to_json()`` the same as
    JSON.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.Conv2d(8, 8, 3))
    >>> new, report = rewrite(net, "no_stride")
    >>> [(e.path, e.status, e.transform) for e in report.entries]
    [('0', 'changed', 'fold'), ('1', 'kept', '')]
    >>> len(report.changed), len(report.skipped), len(report.failed)
    (1, 0, 0)
    """

    rules: str = ""
    entries: list[LayerChange] = field(default_factory=list)
    end_to_end_error: float | None = None
    end_to_end_tolerance: float | None = None
    end_to_end_scale: float | None = None
    verified_on: str = ""
    elapsed_s: float = 0.0
    end_to_end_checked_on: str = ""

    def _with(self, status: str) -> list[LayerChange]:
        return [e for e in self.entries if e.status == status]

    @property
    def changed(self) -> list[LayerChange]:
        """Layers that were rewritten and passed verification."""
        return self._with("changed")

    @property
    def failed(self) -> list[LayerChange]:
        """Layers whose rewrite did not verify (or raised): left as they were."""
        return self._with("failed")

    @property
    def skipped(self) -> list[LayerChange]:
        """Layers the rules wanted to change but that cannot be rewritten exactly (reason given)."""
        return self._with("skipped")

    @property
    def kept(self) -> list[LayerChange]:
        """Conv-like layers no rule selected."""
        return self._with("kept")

    @property
    def ok(self) -> bool:
        """True when nothing failed and the end-to-end check (if any) passed."""
        if self.failed:
            return False
        if self.end_to_end_error is None or self.end_to_end_tolerance is None:
            return True
        return self.end_to_end_error <= self.end_to_end_tolerance

    def summary(self) -> str:
        """One line: counts and the end-to-end error."""
        head = (f"pixelfold rewrite [{self.rules}]: {len(self.changed)} changed, {len(self.failed)} failed, "
                f"{len(self.skipped)} skipped, {len(self.kept)} kept")
        if self.end_to_end_error is None:
            why = "verify=False" if self.verified_on.startswith("nothing") else "no example_inputs"
            e2e = f"end to end: not checked ({why})"
        elif not self.changed:
            e2e = "end to end: model unchanged"
        else:
            on = f" on {self.end_to_end_checked_on}" if self.end_to_end_checked_on else ""
            e2e = (f"end to end{on}: max |Δ| {self.end_to_end_error:.3g} (tolerance {self.end_to_end_tolerance:.3g}, "
                   f"max |output| {self.end_to_end_scale:.3g})")
        return f"{head}; layers checked on {self.verified_on or '-'}; {e2e}; {self.elapsed_s * 1e3:.0f} ms"

    def __str__(self) -> str:
        rows = [e for e in self.entries if e.status != "kept"]
        lines = [self.summary()]
        if rows:
            cols = [
                ("status", lambda e: e.status, 7),
                ("path", lambda e: e.path, 34),
                ("type", lambda e: e.type, 24),
                ("transform", lambda e: e.transform, 16),
                ("before", lambda e: e.before, 44),
                ("after", lambda e: e.after, 52),
                ("MACs", lambda e: "" if e.mac_ratio is None else f"×{e.mac_ratio:.2f}", 6),
                ("max err", lambda e: "" if e.max_error is None else f"{e.max_error:.1e}", 8),
            ]
            widths = [min(cap, max(len(h), *(len(get(e)) for e in rows))) for h, get, cap in cols]
            fmt_row = lambda cells: "  ".join(_cut(c, w).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
            lines.append(fmt_row([h for h, _, _ in cols]))
            lines.append(fmt_row(["-" * w for w in widths]))
            for e in rows:
                lines.append(fmt_row([get(e) for _, get, _ in cols]))
        noted = [e for e in rows if e.note]
        if noted:
            lines.append("")
            lines.append("notes:")
            for e in noted:
                lines.append(f"  {e.status:<7}  {e.path}: {e.note}")
        unchanged = [e for e in rows if e.status in ("failed", "skipped")]
        if unchanged:
            lines.append("")
            lines.append("wanted by the rules but not changed:")
            for e in unchanged:
                lines.append(f"  {e.status:<7}  {e.path}: {e.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (what :meth:`to_json` writes)."""
        return {
            "rules": self.rules,
            "counts": {s: len(self._with(s)) for s in STATUSES},
            "end_to_end_error": _json_float(self.end_to_end_error),
            "end_to_end_tolerance": _json_float(self.end_to_end_tolerance),
            "end_to_end_scale": _json_float(self.end_to_end_scale),
            "verified_on": self.verified_on,
            "end_to_end_checked_on": self.end_to_end_checked_on,
            "elapsed_s": self.elapsed_s,
            "entries": [{k: _json_float(v) for k, v in asdict(e).items()} for e in self.entries],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as a JSON string (non-finite errors written as strings).

        >>> _, report = rewrite(torch.nn.Conv1d(2, 2, 4, stride=2), "no_stride")
        >>> json.loads(report.to_json())["counts"]
        {'changed': 1, 'failed': 0, 'skipped': 0, 'kept': 0}
        """
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


# ---------------------------------------------------------------------------- planning
@dataclass
class _Site:
    entry: LayerChange
    old_unit: nn.Module
    new_unit: nn.Module | None = None
    swaps: list[tuple[str, nn.Module, nn.Module]] = field(default_factory=list)
    capture: str = ""
    restricts_sizes: bool = False  # the form accepts fewer input sizes than the original (to_depth): say so


def _resolve_block(block: Block | Callable[[ConvSpec], Block] | None, spec: ConvSpec,
                   default: Sequence[int]) -> tuple[int, ...]:
    if block is None:
        return tuple(default)
    if callable(block):
        block = block(spec)
    return check_block(block, spec.dims)


def _build_single(rule: Rule, module: nn.Module, spec: ConvSpec | None) -> tuple[nn.Module, str]:
    """The replacement for one module under ``rule``, and the transform's name for the report."""
    name = rule.transform
    if callable(name):
        if spec is None:
            raise FoldError(f"{type(module).__name__} has no conv spec")
        return name(module, spec), rule.transform_name
    if name == "merge":
        return merge(module), "merge"
    if name == "transposed":
        return transposed(module), "transposed"
    if spec is None:
        raise FoldError(f"{type(module).__name__} is not a convolution pixelfold can read")
    hidden = H.lookup(module)
    if hidden is not None and hidden.build is not None and name in H.FORMS:  # StdConv2d, BlurPool2d, ...
        block = _resolve_block(rule.block, spec, spec.stride if name == "fold" else (1,) * spec.dims)
        try:
            return hidden.form(module, name, block, rule.order), name
        except FoldError:
            if name != "fold" or rule.block is not None:
                raise
            return hidden.form(module, "polyphase", 1, rule.order), "polyphase"
    if name == "subpixel":
        return subpixel(module, rule.form, rule.order), "subpixel" + ("" if rule.form == "shared" else ":phases")
    if name == "polyphase":
        block = _resolve_block(rule.block, spec, (1,) * spec.dims)
        if rule.same_pad and _is_timm_conv2d_same(module):
            stride = tuple(module.stride)
            return SamePadPhaseConv(module, [s * b for s, b in zip(stride, block)], block, rule.order), \
                "polyphase+same_pad"
        return polyphase(module, block, rule.order), "polyphase"
    if name == "fold":
        block = _resolve_block(rule.block, spec, spec.stride)
        if rule.same_pad and _is_timm_conv2d_same(module):
            check_stride_divisible(spec.stride, block)
            return SamePadPhaseConv(module, block, None, rule.order), "fold+same_pad"
        try:
            return fold(module, block, rule.order), "fold"
        except FoldError:
            if rule.block is not None:
                raise
            return polyphase(module, 1, rule.order), "polyphase"
    if name == "to_depth":
        block = _resolve_block(rule.block, spec, spec.stride)
        return nn.Sequential(SpaceToDepth(block, rule.order), to_depth(module, block, rule.order)), "to_depth"
    if name == "patch_linear":
        order = rule.order if rule.order in ("crd", "dcr") else "crd"
        return forms.build(module, "patch_linear", {"order": order}), "patch_linear"
    raise FoldError(f"unknown transform {name!r}")  # pragma: no cover - validated in Rule


def _allowed(rule: Rule, module: nn.Module) -> str | None:
    """None if ``rule`` may rewrite ``module``; else the reason it must not."""
    hidden = H.lookup(module)
    if _is_strict_conv_subclass(module) or hidden is not None:
        if callable(rule.transform) and type(module) in rule.types:  # type: ignore[operator]
            return None  # the user named this class and brought their own transform
        if rule.same_pad and rule.transform in ("fold", "polyphase") and _is_timm_conv2d_same(module):
            return None
        if hidden is None:
            return _subclass_reason(module)
        reason = hidden.reason(module, rule.transform_name, rule.same_pad)
        if reason:
            return reason
    return hook_problem(module)


def _wants_hidden(rule: Rule, path: str, module: nn.Module, spec: ConvSpec | None) -> bool:
    """Would ``rule`` select this conv-in-disguise if it were a plain conv (for reporting)?"""
    if spec is None or rule.is_pair:
        return False
    base = ({1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d} if spec.transposed
            else {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d})[spec.dims]
    if not any(issubclass(base, t) for t in rule.types):  # type: ignore[union-attr]
        return False
    return rule.matches_name(path) and (rule.where is None or bool(rule.where(spec)))


class _Planner:
    def __init__(self, model: nn.Module, rules: list[Rule], shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        self.model = model
        self.rules = rules
        self.shapes = shapes or {}
        self.paths_of: dict[int, list[str]] = defaultdict(list)
        for p, m in model.named_modules(remove_duplicate=False):
            self.paths_of[id(m)].append(p)
        self.order = {p: i for i, (p, _) in enumerate(model.named_modules(remove_duplicate=False))}
        self.claimed: set[str] = set()
        self.sites: list[_Site] = []
        self.entries: list[LayerChange] = []

    def position(self, entry: LayerChange) -> int:
        """Where an entry's (first) module sits in the module tree, for a report in model order."""
        first = entry.path.split("+")[0]
        return self.order.get(first, len(self.order))

    def is_claimed(self, path: str) -> bool:
        if not self.claimed:
            return False
        parts = path.split(".") if path else []
        return "" in self.claimed or any(".".join(parts[: i + 1]) in self.claimed for i in range(len(parts)))

    def plan(self) -> None:
        if any(r.is_pair for r in self.rules):
            for pa, pb in _fx_pairs(self.model):
                self.pair_site(pa, pb, self.model.get_submodule(pa), self.model.get_submodule(pb), claim=True)
        for path, module in self.model.named_modules():
            if self.is_claimed(path):
                continue
            if isinstance(module, nn.Sequential):
                self.scan_pairs(path, module)
            self.visit(path, module)

    # -- adjacent pairs inside nn.Sequential
    def scan_pairs(self, path: str, seq: nn.Sequential) -> None:
        keys = list(seq._modules.keys())
        i = 0
        while i < len(keys) - 1:
            a, b = seq._modules[keys[i]], seq._modules[keys[i + 1]]
            pa = f"{path}.{keys[i]}" if path else keys[i]
            pb = f"{path}.{keys[i + 1]}" if path else keys[i + 1]
            site = self.pair_site(pa, pb, a, b, claim=True)
            i += 2 if site is not None and site.new_unit is not None else 1

    def pair_site(self, pa: str, pb: str, a: nn.Module | None, b: nn.Module | None,
                  claim: bool = False) -> _Site | None:
        """A site for two adjacent modules (``a`` feeds ``b`` and nothing else) under the first pair rule."""
        if a is None or b is None or self.is_claimed(pa) or self.is_claimed(pb):
            return None
        if len(self.paths_of.get(id(a), [])) > 1 or len(self.paths_of.get(id(b), [])) > 1:
            return None  # shared modules: replacing one use would change the other
        for k, rule in enumerate(self.rules):
            if rule.target is not None:
                site = self.target_pair(rule, pa, pb, a, b)
                if site is not None:
                    return site
                continue
            if rule.transform == "merge" and (isinstance(a, (SpaceToDepth, nn.PixelUnshuffle)) or P.is_step(a, b)):
                # any space-to-depth step by behaviour (timm's SpaceToDepth in TResNet); b may wrap the conv
                conv, kind = P.conv_in(b), "merge"
                conv_path = pb if conv is b else f"{pb}.conv"
            elif rule.transform == "transposed" and isinstance(b, (DepthToSpace, nn.PixelShuffle)):
                conv, conv_path, kind = a, pa, "transposed"
            else:
                continue
            spec = _spec_of(conv)
            if not isinstance(conv, nn.modules.conv._ConvNd) or not rule.selects(conv_path, conv, spec):
                continue
            # an earlier single-layer rule that wants the conv takes precedence
            if any(not r.is_pair and r.selects(conv_path, conv, spec) for r in self.rules[:k]):
                return None
            entry = LayerChange(path=f"{pa}+{pb}", type=f"{_type_name(type(a))}+{_type_name(type(b))}",
                                before=_describe(nn.Sequential(a, b)), transform=kind, status="skipped")
            site = _Site(entry, nn.Sequential(a, b), capture=pa)
            reason = _allowed(rule, a) or _allowed(rule, b)
            if reason:
                entry.reason = reason
            else:
                try:
                    new = merge(nn.Sequential(a, b)) if kind == "merge" else transposed(nn.Sequential(a, b))
                except FoldError as err:
                    entry.reason = str(err)
                except Exception as err:  # a bug in a transform: fail closed
                    entry.status, entry.reason = "failed", f"{type(err).__name__}: {err}"
                else:
                    new.train(conv.training)
                    ident = nn.Identity()
                    parts = (ident, new) if kind == "merge" else (new, ident)
                    site.new_unit = nn.Sequential(*parts)
                    site.swaps = [(pa, a, parts[0]), (pb, b, parts[1])]
                    entry.after = _describe(new)
            self.sites.append(site)
            self.entries.append(entry)
            if claim and site.new_unit is not None:
                self.claimed.update((pa, pb))
            return site
        return None

    # -- under a target: the solver decides
    def target_pair(self, rule: Rule, pa: str, pb: str, a: nn.Module, b: nn.Module) -> _Site | None:
        """A pair under a target rule: merge / transposed / reorder if the target rejects the pair as it is."""
        from .targets.solver import solve

        unit = nn.Sequential(a, b)
        if unit_kind(unit) not in ("s2d+conv", "conv+d2s") or _allowed(rule, a) or _allowed(rule, b):
            return None
        decision = solve(unit, rule.target, self.shapes.get(pa), names=("merge", "transposed", "reorder"))
        if not decision.changed:
            return None  # kept as a pair: each module is still looked at alone
        try:
            new = decision.candidate.build(unit)  # type: ignore[union-attr]
        except FoldError:
            return None
        if isinstance(new, nn.Sequential) and len(new) == 2:
            parts = (new[0], new[1])
        else:
            parts = (nn.Identity(), new) if unit_kind(unit) == "s2d+conv" else (new, nn.Identity())
        for part in parts:
            part.train(b.training if unit_kind(unit) == "s2d+conv" else a.training)
        entry = LayerChange(path=f"{pa}+{pb}", type=f"{_type_name(type(a))}+{_type_name(type(b))}",
                            before=_describe(unit), transform=decision.candidate.label,  # type: ignore[union-attr]
                            after=_describe(nn.Sequential(*parts)), status="pending", note=decision.reason)
        site = _Site(entry, unit, nn.Sequential(*parts), [(pa, a, parts[0]), (pb, b, parts[1])], capture=pa)
        self.sites.append(site)
        self.entries.append(entry)
        self.claimed.update((pa, pb))
        return site

    def target_single(self, rule: Rule, path: str, module: nn.Module, entry: LayerChange) -> bool:
        """One unit under a target rule; True when the entry is decided (changed, or kept with the reason)."""
        from .targets.solver import solve

        reason = _allowed(rule, module)
        if reason:
            entry.status, entry.reason, entry.transform = "skipped", reason, rule.transform_name
            return True
        decision = solve(module, rule.target, self.shapes.get(path))
        if not decision.changed:
            if decision.original_violations:
                entry.status, entry.reason, entry.transform = "skipped", decision.reason, rule.transform_name
            return bool(decision.original_violations)
        try:
            new = decision.candidate.build(module)  # type: ignore[union-attr]
        except FoldError as err:
            entry.status, entry.reason = "skipped", str(err)
            return True
        new.train(module.training)
        entry.transform, entry.after, entry.status = decision.candidate.label, _describe(new), "pending"  # type: ignore
        entry.note = decision.reason
        paths = self.paths_of.get(id(module), [path])
        self.sites.append(_Site(entry, module, new, [(p, module, new) for p in paths], capture=path))
        self.claimed.update(paths)
        return True

    # -- single modules
    def visit(self, path: str, module: nn.Module) -> None:
        conv_like = _is_conv_like(module)
        # is_focus probes the module (a deep copy): only when a rule could merge it
        wants_merge = any(r.transform == "merge" or r.target is not None for r in self.rules)
        focus = not conv_like and wants_merge and is_focus(module)
        lone = rearrangement_of(module) is not None and any(r.target is not None for r in self.rules)
        if not conv_like and not focus and not lone:
            return
        spec = _spec_of(module)
        hidden = H.lookup(module) is not None and not isinstance(module, nn.modules.conv._ConvNd)
        entry = LayerChange(path=path, type=_type_name(type(module)),
                            before=str(spec) if spec is not None else _describe(module))
        reasons: list[str] = []
        for rule in self.rules:
            if rule.target is not None:
                if unit_kind(module) is not None and self.target_single(rule, path, module, entry):
                    break
                continue
            if rule.is_pair:
                ok_single = (rule.transform == "merge" and focus) or (
                    rule.transform == "transposed" and isinstance(module, SubpixelConvTranspose))
                if not ok_single or not rule.matches_name(path):
                    continue
                if rule.where is not None and (spec is None or not rule.where(spec)):
                    continue
            elif hidden:
                if not _wants_hidden(rule, path, module, spec):
                    continue
            elif not rule.selects(path, module, spec):
                continue
            entry.transform = entry.transform or rule.transform_name
            reason = _allowed(rule, module)
            if reason:
                reasons.append(reason)
                continue
            try:
                new, label = _build_single(rule, module, spec)
            except FoldError as err:
                reasons.append(str(err))
                continue
            except Exception as err:  # a bug in a transform: fail closed
                entry.status, entry.transform = "failed", rule.transform_name
                entry.reason = f"the transform raised {type(err).__name__}: {err}"
                break
            if new is module or new is None:
                reasons.append("the transform returned the module unchanged")
                continue
            new.train(module.training)
            entry.transform, entry.after, entry.status = label, _describe(new), "pending"
            paths = self.paths_of.get(id(module), [path])
            site = _Site(entry, module, new, [(p, module, new) for p in paths], capture=path,
                         restricts_sizes=rule.transform == "to_depth")
            self.sites.append(site)
            self.claimed.update(paths)
            break
        else:
            if reasons:
                entry.status, entry.reason = "skipped", "; ".join(dict.fromkeys(reasons))
            else:
                entry.status = "kept"
        if entry.status == "failed":
            self.sites.append(_Site(entry, module))
        self.entries.append(entry)


def _fx_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Adjacent (space-to-depth step → conv) and (conv → depth-to-space) module calls found by ``torch.fx``.

    Only pairs where each module is called once and the first one's output
    feeds the second alone. An untraceable model gives ``[]`` (pairs inside
    ``nn.Sequential`` are still found without tracing).
    """
    try:
        import torch.fx as fx
    except Exception:  # pragma: no cover - torch always has fx
        return []

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return (_is_conv_like(m) or isinstance(m, (SpaceToDepth, DepthToSpace, nn.PixelShuffle,
                                                       nn.PixelUnshuffle))
                    or super().is_leaf_module(m, qualname))

    try:
        graph = _Tracer().trace(model)
    except Exception:
        return []
    nodes = [n for n in graph.nodes if n.op == "call_module"]
    uses: dict[int, int] = defaultdict(int)
    for n in nodes:
        try:
            uses[id(model.get_submodule(str(n.target)))] += 1
        except AttributeError:
            return []
    pairs = []
    for n in nodes:
        users = list(n.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        u = users[0]
        if tuple(u.args) != (n,) or u.kwargs or n.kwargs:
            continue
        a, b = model.get_submodule(str(n.target)), model.get_submodule(str(u.target))
        if uses[id(a)] != 1 or uses[id(b)] != 1:
            continue
        step_conv = isinstance(a, (SpaceToDepth, nn.PixelUnshuffle)) and isinstance(b, nn.modules.conv._ConvNd)
        conv_shuffle = isinstance(a, nn.modules.conv._ConvNd) and isinstance(b, (DepthToSpace, nn.PixelShuffle))
        if step_conv or conv_shuffle:
            pairs.append((str(n.target), str(u.target)))
    return pairs


# ---------------------------------------------------------------------------- swapping
class _Root:
    """Holds the model so a swap at path ``""`` (the model itself is a conv) can replace it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def set(self, path: str, module: nn.Module) -> None:
        if path == "":
            self.model = module
            return
        parent_path, _, name = path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        if isinstance(parent, (nn.Sequential, nn.ModuleList)) and name.isdigit():
            parent[int(name)] = module
        elif isinstance(parent, nn.ModuleDict):
            parent[name] = module
        else:
            setattr(parent, name, module)

    def apply(self, site: _Site) -> None:
        for path, _, new in site.swaps:
            self.set(path, new)

    def revert(self, site: _Site) -> None:
        for path, old, _ in site.swaps:
            self.set(path, old)


def _progress(enabled: bool, i: int, n: int, entry: LayerChange) -> None:
    if not enabled:
        return
    err = "" if entry.max_error is None else f" max|Δ| {entry.max_error:.1e}"
    why = f" ({entry.reason})" if entry.reason and entry.status != "changed" else ""
    print(f"[pixelfold {i}/{n}] {entry.status:<7} {entry.path} {entry.transform}{err}{why}", file=sys.stderr)


# ---------------------------------------------------------------------------- rewrite
def rewrite(
    model: nn.Module,
    rules: str | Profile | Rule | Sequence[Rule | Profile | str],
    example_inputs: Any = None,
    inplace: bool = False,
    atol: float | None = None,
    rtol: float | None = None,
    progress: bool = False,
    verify: bool = True,
) -> tuple[nn.Module, RewriteReport]:
    """Rewrite a model's convolutions by rules, verify every change, and report.

    Steps: deep-copy ``model`` (unless ``inplace``), select layers with
    ``rules`` (a profile name such as ``"no_stride"``, a :class:`Profile`, or
    a list of :class:`Rule`), build their replacements, then **fail closed**:

    1. each replaced layer is compared with the original in float64 on the
       inputs it receives when ``model`` runs on ``example_inputs`` (captured
       by hooks in one forward pass), or on small random inputs derived from
       its spec when ``example_inputs`` is ``None`` (or the layer is not
       reached); a layer whose max error exceeds ``1e-9 * max(1, max|out|)``,
       whose output shape differs, or that raises, is left as it was and
       reported as failed;
    2. with ``example_inputs``, the whole rewritten model is run against the
       original output (eval mode, the model's own dtype); the check passes if
       ``max|Δ| <= max(atol, rtol * max|out|)`` (both default ``1e-4``). If it
       fails, the changes are re-applied one at a time and every one that
       breaks the check is put back and reported as failed.

    Verification runs in eval mode on the copies; every module's training
    flag is restored. Replacement modules keep the original ``weight`` and
    ``bias`` Parameters, so ``state_dict`` keys of ``fold``/``subpixel``
    layers do not change. Returns ``(new_model, report)``.

    ``verify=False`` skips both checks (every planned change is applied and
    reported with ``checked_on="unverified"``); it exists to measure the cost
    of the rewrite itself and for plans already verified on an identical
    model. The transforms are exact by construction and tested, but only
    verification proves it for *this* model: keep the default.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 7, stride=2, padding=3), torch.nn.ReLU(),
    ...                           torch.nn.ConvTranspose2d(16, 4, 4, stride=2, padding=1))
    >>> x = torch.randn(1, 3, 32, 32)
    >>> new, report = rewrite(net, "no_stride", example_inputs=x)
    >>> [(e.path, e.transform, e.status) for e in report.entries]
    [('0', 'fold', 'changed'), ('2', 'subpixel', 'changed')]
    >>> report.end_to_end_error < 1e-4, type(net[0]).__name__, type(new[0]).__name__
    (True, 'Conv2d', 'PhaseConv')
    """
    t0 = time.perf_counter()
    _check_model(model)
    rule_list, label = _as_rules(rules)
    if inplace:
        work = model
    else:
        try:
            work = copy.deepcopy(model)
        except Exception as err:
            raise FoldError(
                f"could not deep-copy the model ({type(err).__name__}: {err}); pass inplace=True to rewrite it "
                "in place"
            ) from err
    shapes = _input_shapes(work, example_inputs) if example_inputs is not None and any(
        r.target is not None for r in rule_list) else {}
    planner = _Planner(work, rule_list, shapes)
    planner.plan()
    planner.entries.sort(key=planner.position)
    report = RewriteReport(rules=label, entries=planner.entries)
    root = _Root(work)
    candidates = [s for s in planner.sites if s.new_unit is not None]

    calls: dict[str, list[V.Call]] = {}
    e2e: _EndToEnd | None = None
    if verify and example_inputs is not None and candidates:
        calls, ref_out = V.capture_calls(work, example_inputs, [s.capture for s in candidates])
        e2e = _EndToEnd(work, example_inputs, ref_out)  # references from the model as it is, before any change
    if not verify:
        report.verified_on = "nothing (verify=False)"
    else:
        report.verified_on = "captured inputs" if example_inputs is not None else "random inputs"

    applied: list[_Site] = []
    n = sum(e.status != "kept" for e in report.entries)
    i = 0
    for entry in report.entries:  # decided while planning: say so before the (slow) checks
        if entry.status in ("skipped", "failed"):
            i += 1
            _progress(progress, i, n, entry)
    for site in candidates:
        entry = site.entry
        i += 1
        if not verify:
            entry.checked_on, entry.status = "unverified", "changed"
            entry.mac_ratio = _mac_ratio(site.old_unit, site.new_unit)
            root.apply(site)
            applied.append(site)
            _progress(progress, i, n, entry)
            continue
        site_calls = calls.get(site.capture)
        check = V.check_layer(site.old_unit, site.new_unit, site_calls, strict_sizes=not site.restricts_sizes)
        entry.checked_on = check.checked_on or ("captured" if site_calls else "random")
        entry.max_error, entry.tolerance = check.error, check.tolerance
        entry.mac_ratio = _mac_ratio(site.old_unit, site.new_unit)
        if check.ok and check.refused_sizes:
            entry.note = (f"accepts fewer input sizes than the original: refuses {check.refused_sizes}, which the "
                          "original accepts")
        if check.ok:
            entry.status = "changed"
            root.apply(site)
            applied.append(site)
        else:
            entry.status, entry.reason = "failed", f"{check.reason} ({check.dtype}); left as it was"
        _progress(progress, i, n, entry)

    if verify and example_inputs is not None:
        atol_ = V.E2E_TOL if atol is None else atol
        rtol_ = V.E2E_TOL if rtol is None else rtol
        if not applied or e2e is None:
            report.end_to_end_error, report.end_to_end_scale = 0.0, math.nan
            report.end_to_end_tolerance = atol_
        else:
            report.end_to_end_checked_on = e2e.described
            err, scale, _ = e2e.error(root.model)
            tol = max(atol_, rtol_ * scale) if math.isfinite(scale) else atol_
            if not err <= tol:
                err, scale = _localise(root, applied, e2e, atol_, rtol_, err, tol)
                tol = max(atol_, rtol_ * scale) if math.isfinite(scale) else atol_
            report.end_to_end_error, report.end_to_end_scale, report.end_to_end_tolerance = err, scale, tol
    report.elapsed_s = time.perf_counter() - t0
    if progress:
        print(f"[pixelfold] {report.summary()}", file=sys.stderr)
    return root.model, report


def _input_shapes(model: nn.Module, example_inputs: Any) -> dict[str, tuple[int, ...]]:
    """The shape of the first tensor each submodule receives in one forward pass (what a target checks)."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        def hook(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if name not in shapes and args and isinstance(args[0], torch.Tensor):
                shapes[name] = tuple(args[0].shape)
        handles.append(module.register_forward_pre_hook(hook))
    try:
        with V.eval_mode(model), torch.no_grad():
            model(*V.as_args(example_inputs))
    except Exception as err:
        raise FoldError(f"the model raised {type(err).__name__} on example_inputs ({err}); pass inputs the "
                        "original model accepts (a tensor or a tuple of positional arguments)") from err
    finally:
        for h in handles:
            h.remove()
    return shapes


def _check_model(model: Any) -> None:
    """Refuse what rewrite cannot walk: not a module, TorchScript, a torch.compile wrapper."""
    if not isinstance(model, nn.Module):
        raise FoldError(f"rewrite takes an nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise FoldError(
            f"{type(model).__name__} is a TorchScript module: its submodules are compiled code, not nn.Conv layers "
            "pixelfold can swap (a rewrite would silently change nothing); rewrite the Python model, then "
            "torch.jit.script/trace the result"
        )
    if hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule":
        raise FoldError(
            "this is a torch.compile wrapper (OptimizedModule): rewrite the model you compiled (model._orig_mod), "
            "then torch.compile the result"
        )


def _low_precision(model: nn.Module) -> bool:
    return any(t.is_floating_point() and t.dtype in (torch.float16, torch.bfloat16)
               for t in itertools.chain(model.parameters(), model.buffers()))


class _EndToEnd:
    """The whole-model check: outputs on the example inputs and on random data of their shapes.

    References are computed at construction, from the model before any change. The random case means an
    all-zero, constant or empty example cannot make a wrong rewrite pass; when neither case holds data
    (and the model refuses random data), rewrite refuses rather than report a check that compared nothing.
    A float16/bfloat16 model is compared on float64 copies: exact rewrites differ from the original by
    rounding, which in half precision is above any useful tolerance.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, ref_out: Any, seed: int = 0) -> None:
        self.dtype = torch.float64 if _low_precision(model) else None
        args = V.as_args(example_inputs)
        cases = [("example", args)]
        if any(t.is_floating_point() for t in V._tensors(args)):
            cases.append(("random", V.randomized(args, torch.Generator().manual_seed(seed))))
        self.cases: list[tuple[str, tuple[Any, ...], Any]] = []
        for kind, case_args in cases:
            if kind == "example" and self.dtype is None:
                self.cases.append((kind, case_args, ref_out))
                continue
            out, problem = self._run(model, case_args)
            if not problem:
                self.cases.append((kind, case_args, out))
        useful = [kind for kind, case_args, _ in self.cases if V.informative(case_args)]
        if not useful:
            raise FoldError(
                "example_inputs hold no data to compare on (every tensor is empty or constant, e.g. torch.zeros) and "
                "the model does not run on random data of the same shapes; pass inputs with real data (torch.randn "
                "of your input shape), or example_inputs=None to check each layer on random inputs only"
            )
        what = " and ".join(f"{kind} {V._shape_text(a)}" for kind, a, _ in self.cases if V.informative(a))
        self.described = what + (" (float64 copies of the half-precision model)" if self.dtype is not None else "")

    def _run(self, model: nn.Module, args: tuple[Any, ...]) -> tuple[Any, str]:
        try:
            m = model
            if self.dtype is not None:
                m = copy.deepcopy(model).to(self.dtype)
                args = V.cast_floats(args, self.dtype)
            with V.eval_mode(m), torch.no_grad():
                return m(*args), ""
        except Exception as err:
            return None, f"the model raised {type(err).__name__}: {err}"

    def error(self, model: nn.Module) -> tuple[float, float, str]:
        """``(max |Δ|, max |reference|, problem)`` of ``model`` against the references, over every case."""
        err, scale = 0.0, 0.0
        for _, args, ref in self.cases:
            out, problem = self._run(model, args)
            if problem:
                return math.inf, math.nan, problem
            e, sc = V.output_error(ref, out)
            if not math.isfinite(e):
                return math.inf, math.nan, "the outputs differ in structure or shape"
            err, scale = max(err, e), max(scale, sc)
        return err, scale, ""


def _localise(root: _Root, applied: list[_Site], e2e: _EndToEnd, atol: float, rtol: float,
              first_err: float, first_tol: float) -> tuple[float, float]:
    """The whole model failed its check: re-apply the changes one by one, keeping those that pass."""
    for site in reversed(applied):
        root.revert(site)
    err, scale = 0.0, math.nan
    for site in applied:
        root.apply(site)
        e, s, problem = e2e.error(root.model)
        tol = max(atol, rtol * s) if math.isfinite(s) else atol
        if e <= tol:
            err, scale = e, s
            continue
        root.revert(site)
        site.entry.status = "failed"
        what = problem or f"max |Δ| {e:.3g} > {tol:.3g}"
        site.entry.reason = (
            f"passed alone but the whole model fails with it ({what}; all changes together: max |Δ| "
            f"{first_err:.3g} > {first_tol:.3g}); left as it was"
        )
    if not math.isfinite(scale):
        err, scale, _ = e2e.error(root.model)
    return err, scale
