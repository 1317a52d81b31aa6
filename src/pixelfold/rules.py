"""Rules and profiles: which layers :func:`pixelfold.rewrite` changes, and into which exact form."""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from itertools import product
from typing import Any, Callable, Sequence

from torch import nn

from . import forms
from .errors import FoldError
from .layerinfo import (
    _PAIR_TRANSFORMS,
    _PLAIN,
    _PLAIN_CONVS,
    _PLAIN_CONVT,
    NAMED_TRANSFORMS,
    PROFILE_NAMES,
    Block,
    TransformFn,
    _divisors,
    _fmt,
    _spec_of,
)
from .layers import (
    SubpixelConvTranspose,
)
from .rearrange import ORDERS
from .spec import ConvSpec, as_tuple

__all__ = ["Rule", "Profile"]



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

    >>> import torch
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
