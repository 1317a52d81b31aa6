"""Planning a rewrite: which sites (single layers, adjacent pairs) each rule changes, and the new module for each."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

from torch import nn

from . import forms
from . import hidden as H
from . import probe as P
from .errors import FoldError
from .forms import rearrangement_of, unit_kind
from .guards import hook_problem
from .layerinfo import (
    Block,
    _describe,
    _is_conv_like,
    _is_strict_conv_subclass,
    _is_timm_conv2d_same,
    _spec_of,
    _subclass_reason,
    _type_name,
)
from .layers import (
    DepthToSpace,
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
from .rearrange import check_block
from .report import LayerChange
from .rules import (
    Rule,
)
from .samepad import SamePadPhaseConv
from .spec import ConvSpec
from .transforms import check_stride_divisible

__all__ = []



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
