"""The registry of exact forms: which forms a layer has, what each emits, what it costs, how to build it.

Every tool that asks "which other exact forms does this layer have?" asks here: :func:`pixelfold.rewrite`
(a ``Rule``'s transform is a form's name), :func:`pixelfold.tune` (its candidates), ``pixelfold explain``,
the benchmarks, and the NPU targets (:mod:`pixelfold.targets`), which need to know the *operators* a form
emits to decide whether a compiler accepts it.

A *unit* is what a form replaces: a conv (``"conv"``), a transposed conv (``"conv_transpose"``), a
space-to-depth step feeding a conv (``"s2d+conv"``: ``nn.Sequential(step, conv)`` or a YOLOv5 ``Focus``),
a conv feeding a depth-to-space (``"conv+d2s"``) or a lone rearrangement (``"s2d"``, ``"d2s"``).
A :class:`FormDef` says, for one form: which units it takes, the option sets it can take for a spec (each
one exact), the :class:`Op` list it emits, and how to build it. :func:`candidates` lists them all for a
unit, the original first.

>>> import torch
>>> conv = torch.nn.Conv2d(3, 64, 7, stride=2, padding=3)
>>> [c.label for c in candidates(conv)]
['original', 'fold(block=2×2)', 'fold(block=2×2,order=dcr)']
>>> [op.kind for op in candidates(conv)[2].ops]          # polyphase(2) would cost 2.8× the MACs: not listed
['pad', 'space_to_depth', 'conv']
>>> str(candidates(conv)[2].ops[2].spec)
'Conv2d 12→64 k4×4 s1×1 p0×0'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from . import layers as L
from . import transforms as T
from .errors import FoldError
from .spec import ConvSpec

from .units import Shape, _PLAIN_CONVS, _PLAIN_CONVTS, Op, _conv, _rearr, rearrangement_of, unit_kind, _pair, unit_spec, _block_of, original_ops, _lone_op  # noqa: F401  (re-exported)

__all__ = ["Op", "Candidate", "FormDef", "FORMS", "unit_kind", "unit_spec", "candidates", "build", "original_ops",
           "rearrangement_of", "lowered", "is_patch", "LOWERINGS", "MAX_MAC_RATIO"]

#: Forms whose MACs exceed the original's by more than this factor are not listed (polyphase blocks grow fast).
MAX_MAC_RATIO = 2.5

# ---------------------------------------------------------------------------- form definitions
Options = dict[str, Any]


@dataclass(frozen=True)
class FormDef:
    """One exact form: the units it takes, its option sets, its operators and its builder."""

    name: str
    units: tuple[str, ...]
    doc: str
    options: Callable[[nn.Module, ConvSpec | None, Shape], Iterable[Options]]
    ops: Callable[[nn.Module, ConvSpec | None, Options, Shape], list[Op]]
    build: Callable[[nn.Module, Options], nn.Module]
    restricts_sizes: bool = False  # accepts fewer input sizes than the original (to_depth)


@dataclass(frozen=True)
class Candidate:
    """A form of one unit with one option set: what it emits and how to build it."""

    form: str
    options: Options = field(default_factory=dict)
    ops: tuple[Op, ...] = ()
    weight_numel: int | None = None

    @property
    def label(self) -> str:
        if not self.options:
            return self.form
        parts = []
        for k, v in self.options.items():
            if k == "order" and v == "crd":
                continue
            parts.append(f"{k}={'×'.join(map(str, v)) if isinstance(v, (tuple, list)) else v}")
        return self.form + (f"({','.join(parts)})" if parts else "")

    def build(self, module: nn.Module) -> nn.Module:
        """The form of ``module`` (sharing its Parameters where the form keeps them)."""
        return build(module, self.form, self.options)


def _uniform_blocks(stride: Sequence[int]) -> list[tuple[int, ...]]:
    """Blocks that divide the stride: the same factor in every strided dim, plus the stride itself."""
    out: list[tuple[int, ...]] = []
    for f in range(2, max(stride) + 1):
        b = tuple(f if s % f == 0 else 1 for s in stride)
        if any(v > 1 for v in b) and b not in out:
            out.append(b)
    if any(s > 1 for s in stride) and tuple(stride) not in out:
        out.append(tuple(stride))
    return out


def _orders(spec: ConvSpec) -> list[str]:
    return ["crd"] if spec.groups != 1 else ["crd", "dcr"]


def _phase_ops(spec: ConvSpec, in_block: tuple[int, ...], out_block: tuple[int, ...], order: str) -> list[Op]:
    """pad → space_to_depth(in_block) → inner conv → depth_to_space(out_block) → slice, as PhaseConv runs it."""
    single = spec.replace(in_channels=1, out_channels=1, groups=1)
    probe = torch.ones((1, 1, *spec.kernel))
    S, _, inner = T.phase_conv_weight(probe, None, single, in_block, out_block, "crd")
    inner = inner.replace(in_channels=spec.in_channels * math.prod(in_block),
                          out_channels=spec.out_channels * math.prod(out_block), groups=spec.groups)
    padded = any(lo or hi for lo, hi in spec.padding)
    ops: list[Op] = [Op("pad", mode=spec.padding_mode)] if padded else []
    if math.prod(in_block) > 1:
        ops.append(_rearr("space_to_depth", in_block, order, spec.in_channels))
    ops.append(_conv(inner))
    if math.prod(out_block) > 1:
        ops += [_rearr("depth_to_space", out_block, order, spec.out_channels), Op("slice")]
    return ops


def _fold_options(module: nn.Module, spec: ConvSpec | None, shape: Shape = None) -> Iterable[Options]:
    assert spec is not None
    for block in _uniform_blocks(spec.stride):
        for order in _orders(spec):
            yield {"block": block, "order": order}


def _polyphase_options(module: nn.Module, spec: ConvSpec | None, shape: Shape = None) -> Iterable[Options]:
    assert spec is not None
    base = math.prod(spec.kernel)
    stride1 = all(v == 1 for v in spec.stride)
    for r in (2, 4, 8, 16):  # (block 1 is fold by the stride, listed under fold)
        if stride1 and any(e < 2 * r for e in spec.span):
            continue  # a small kernel at stride 1: the phase split only adds MACs (a 3×3 would become 4 2×2 phases)
        block = (r,) * spec.dims
        in_block = tuple(s * r for s in spec.stride)
        Q = [-(-(d * (k - 1) + 1 + (r - 1) * s) // B)
             for k, d, s, B in zip(spec.kernel, spec.dilation, spec.stride, in_block)]
        ratio = math.prod(Q) * math.prod(in_block) / base  # MACs per original output, over the original's
        if ratio > MAX_MAC_RATIO:
            continue
        for order in _orders(spec):
            yield {"block": block, "order": order}


def is_patch(spec: ConvSpec) -> bool:
    """A patchify conv: kernel = stride (> 1), no padding, dilation 1, one group."""
    return (spec.kernel == spec.stride and all(lo == hi == 0 for lo, hi in spec.padding)
            and all(d == 1 for d in spec.dilation) and spec.groups == 1 and any(s > 1 for s in spec.stride))


def _to_depth_options(module: nn.Module, spec: ConvSpec | None, shape: Shape = None) -> Iterable[Options]:
    assert spec is not None
    for block in _uniform_blocks(spec.stride):
        if spec.padding_mode in ("zeros", "circular") and all(lo % b == 0 and hi % b == 0
                                                                 for (lo, hi), b in zip(spec.padding, block)):
            for order in _orders(spec):
                yield {"block": block, "order": order}


def _subpixel_options(module: nn.Module, spec: ConvSpec | None, shape: Shape = None) -> Iterable[Options]:
    assert spec is not None
    if all(s == 1 for s in spec.stride):
        return
    for order in _orders(spec):
        yield {"form": "shared", "order": order}
    yield {"form": "phases"}


def _subpixel_ops(module: nn.Module, spec: ConvSpec | None, opts: Options, shape: Shape = None) -> list[Op]:
    assert spec is not None
    probe = torch.zeros(spec.weight_shape())
    if opts.get("form", "shared") == "shared":
        _, _, inner = T.subpixel_weight(probe, None, spec, opts.get("order", "crd"))
        return [Op("pad", mode="zeros"), _conv(inner.replace(padding=((0, 0),) * spec.dims)),
                _rearr("depth_to_space", spec.stride, opts.get("order", "crd"), spec.out_channels), Op("slice")]
    ops: list[Op] = []
    for _, w, _ in T.subpixel_phase_weights(probe, spec):
        if w is not None:
            ops += [Op("pad", mode="zeros"), _conv(ConvSpec(spec.in_channels, spec.out_channels, tuple(w.shape[2:]),
                                                             (1,) * spec.dims, ((0, 0),) * spec.dims,
                                                             (1,) * spec.dims, spec.groups, spec.bias))]
    return [*ops, Op("concat"), _rearr("depth_to_space", spec.stride, "crd", spec.out_channels), Op("slice")]


def _merge_ops(module: nn.Module, spec: ConvSpec | None, opts: Options, shape: Shape = None) -> list[Op]:
    step, conv = _pair(module)
    block, order = _block_of(step, ConvSpec.from_module(conv).dims)
    _, new = T.to_space_weight(torch.zeros(ConvSpec.from_module(conv).weight_shape()), ConvSpec.from_module(conv),
                               block, order)
    return [_conv(new)]


def _transposed_ops(module: nn.Module, spec: ConvSpec | None, opts: Options, shape: Shape = None) -> list[Op]:
    if isinstance(module, L.SubpixelConvTranspose):
        return [_conv(module.spec)]
    conv = module[0]
    conv_spec = ConvSpec.from_module(conv)
    block, order = _block_of(module[1], conv_spec.dims)
    bias = None if conv.bias is None else conv.bias.detach()  # (a bias that differs between phases: no such form)
    _, _, new = T.transposed_weight(conv.weight.detach(), bias, conv_spec, block, order)
    return [_conv(new)]


def _transposed_options(module: nn.Module, spec: ConvSpec | None, shape: Shape = None) -> Iterable[Options]:
    try:
        _transposed_ops(module, spec, {}, shape)
    except FoldError:
        return
    yield {}


def _patch_ops(module: nn.Module, spec: ConvSpec | None, opts: Options, shape: Shape = None) -> list[Op]:
    assert spec is not None
    return [_rearr("space_to_depth", spec.kernel, opts.get("order", "crd"), spec.in_channels), Op("matmul")]


def _build_fold(m: nn.Module, o: Options) -> nn.Module:
    return L.fold(m, tuple(o["block"]), o.get("order", "crd"))


def _build_polyphase(m: nn.Module, o: Options) -> nn.Module:
    return L.polyphase(m, tuple(o.get("block", 1)) if not isinstance(o.get("block", 1), int) else o.get("block", 1),
                       o.get("order", "crd"))


def _build_to_depth(m: nn.Module, o: Options) -> nn.Module:
    block, order = tuple(o["block"]), o.get("order", "crd")
    return nn.Sequential(L.SpaceToDepth(block, order), L.to_depth(m, block, order))


def _build_transposed(m: nn.Module, o: Options) -> nn.Module:
    return L.transposed(m)


def _build_merge(m: nn.Module, o: Options) -> nn.Module:
    return L.merge(m)


def _lone_options(module: nn.Module, spec: ConvSpec | None, shape: Shape = None) -> Iterable[Options]:
    yield {}


def _rearrange_ops(module: nn.Module, spec: ConvSpec | None, opts: Options, shape: Shape = None) -> list[Op]:
    op = _lone_op(module, shape)
    return [Op(op.kind, block=op.block, order=op.order, channels=op.channels, grid=op.grid)]


def _build_rearrange(module: nn.Module, opts: Options) -> nn.Module:
    if unit_kind(module) in ("s2d+conv", "conv+d2s"):
        return _reorder_pair(module, opts.get("order"))
    kind, block, order = rearrangement_of(module)  # type: ignore[misc]
    return (L.SpaceToDepth if kind == "space_to_depth" else L.DepthToSpace)(block, order)


def _pair_rearrange_options(module: nn.Module, spec: ConvSpec | None, shape: Shape = None) -> Iterable[Options]:
    if isinstance(module, L.SubpixelConvTranspose) or L.is_focus(module):
        return
    kind = unit_kind(module)
    step = module[1] if kind == "conv+d2s" else module[0]
    _, _, order = rearrangement_of(step)  # type: ignore[misc]
    if isinstance(step, L.FocusSlice):
        return
    for new in ("crd", "dcr", "focus"):
        if new == order and not isinstance(step, (nn.PixelShuffle, nn.PixelUnshuffle)):
            continue  # already pixelfold's module in that order: nothing to change
        if new != order and spec is not None and spec.groups != 1:
            continue  # reordering channels would mix the conv's groups
        yield {"order": new}


def _pair_rearrange_ops(module: nn.Module, spec: ConvSpec | None, opts: Options, shape: Shape = None) -> list[Op]:
    ops = original_ops(module, shape)
    return [Op(o.kind, block=o.block, order=opts["order"], channels=o.channels, grid=o.grid)
            if o.kind in ("space_to_depth", "depth_to_space") else o for o in ops]


def _reorder_pair(module: nn.Module, order: str) -> nn.Module:
    """``(step, conv)`` / ``(conv, step)`` with the rearrangement as pixelfold's module in ``order`` and the
    conv's channels permuted to match (exact: the same channels meet the same weights)."""
    from .rearrange import phase_permutation
    from .spec import build_module

    kind = unit_kind(module)
    conv, step = (module[0], module[1]) if kind == "conv+d2s" else (module[1], module[0])
    spec = ConvSpec.from_module(conv)
    block, old = _block_of(step, spec.dims)
    R = math.prod(block)
    C = (spec.out_channels if kind == "conv+d2s" else spec.in_channels) // R
    # channel k of `order` holds crd channel p_new[k], which `old` holds at q_old[p_new[k]]
    index = torch.argsort(phase_permutation(C, block, old))[phase_permutation(C, block, order)]
    w = conv.weight.detach()
    if kind == "conv+d2s":
        w = w.index_select(0, index)
        bias = None if conv.bias is None else conv.bias.detach().index_select(0, index)
        new_step: nn.Module = L.DepthToSpace(block, order)
    else:
        w = w.index_select(1, index)
        bias = None if conv.bias is None else conv.bias.detach()
        new_step = L.SpaceToDepth(block, order)
    new_conv = build_module(spec, w, bias, like=conv)
    return nn.Sequential(new_conv, new_step) if kind == "conv+d2s" else nn.Sequential(new_step, new_conv)


def _onehot_spec(module: nn.Module, channels: int, dims: int) -> ConvSpec:
    """The one-hot conv of a lone rearrangement with ``channels`` on its spatial side."""
    kind, block, _ = rearrangement_of(module)  # type: ignore[misc]
    b = (block,) * dims if isinstance(block, int) else tuple(block)
    C, R, n = channels, math.prod(b), len(b)
    if kind == "space_to_depth":
        return ConvSpec(C, C * R, b, b, ((0, 0),) * n, (1,) * n, bias=False)
    return ConvSpec(C * R, C, b, b, ((0, 0),) * n, (1,) * n, bias=False, transposed=True)


def _onehot_options(module: nn.Module, spec: ConvSpec | None, shape: Shape = None) -> Iterable[Options]:
    if shape is not None:  # the channels come from the input
        op = _lone_op(module, shape)
        yield {"channels": op.channels, "dims": len(op.block or ())}


def _build_onehot(module: nn.Module, opts: Options) -> nn.Module:
    from .onehot import OneHotRearrange

    kind, block, order = rearrangement_of(module)  # type: ignore[misc]
    return OneHotRearrange(kind, block, order, int(opts["channels"]), int(opts["dims"]))


FORMS: dict[str, FormDef] = {
    "fold": FormDef(
        "fold", ("conv",), "pad → space_to_depth(block) → conv with stride/block (block divides the stride)",
        _fold_options,
        lambda m, s, o, shape: _phase_ops(s, tuple(o["block"]), (1,) * s.dims, o.get("order", "crd")),  # type: ignore
        _build_fold),
    "polyphase": FormDef(
        "polyphase", ("conv",), "space_to_depth(stride·block) → stride-1 conv → depth_to_space(block): any stride",
        _polyphase_options,
        lambda m, s, o, shape: _phase_ops(s, tuple(v * b for v, b in zip(s.stride, o["block"])),  # type: ignore
                                   tuple(o["block"]), o.get("order", "crd")),
        _build_polyphase),
    "patch_linear": FormDef(
        "patch_linear", ("conv",), "a patchify conv (kernel = stride, no padding) as one matrix product",
        lambda m, s, shape: ({"order": o} for o in ("crd", "dcr")) if s is not None and is_patch(s) else iter(()),
        _patch_ops, lambda m, o: L.PatchLinear(m, o.get("order", "crd"), o.get("memory_format", "conv"))),
    "to_depth": FormDef(
        "to_depth", ("conv",), "space_to_depth(block) → conv (stride and padding divisible by the block)",
        _to_depth_options,
        lambda m, s, o, shape: [_rearr("space_to_depth", o["block"], o.get("order", "crd"), s.in_channels),  # type: ignore
                         _conv(T.to_depth_weight(torch.zeros(s.weight_shape()), s, o["block"],  # type: ignore
                                                 o.get("order", "crd"))[1])],
        _build_to_depth, restricts_sizes=True),
    "subpixel": FormDef(
        "subpixel", ("conv_transpose",), "stride-1 conv(s) → depth_to_space(stride) → crop",
        _subpixel_options, _subpixel_ops,
        lambda m, o: L.subpixel(m, o.get("form", "shared"), o.get("order", "crd"))),
    "transposed": FormDef(
        "transposed", ("conv+d2s",), "conv + depth_to_space → one ConvTranspose",
        _transposed_options, _transposed_ops, _build_transposed),
    "merge": FormDef(
        "merge", ("s2d+conv",), "space_to_depth (or Focus slicing) + conv → one conv on the original input",
        lambda m, s, shape: iter(({},)), _merge_ops, _build_merge),
    "rearrange": FormDef(
        "rearrange", ("s2d", "d2s"), "torch's PixelShuffle/PixelUnshuffle as pixelfold's module (emitted in the "
        "target's lowering instead of the native op)", _lone_options, _rearrange_ops, _build_rearrange),
    "reorder": FormDef(
        "reorder", ("s2d+conv", "conv+d2s"), "the pair's rearrangement as pixelfold's module in another channel "
        "order, the conv's channels permuted to match (CRD ↔ DCR for runtimes with one mode)",
        _pair_rearrange_options, _pair_rearrange_ops, _build_rearrange),
    "onehot": FormDef(
        "onehot", ("s2d", "d2s"), "space_to_depth as a one-hot strided conv, depth_to_space as a one-hot "
        "transposed conv (exact for finite inputs)", _onehot_options,
        lambda m, s, o, shape: [_conv(_onehot_spec(m, o["channels"], o["dims"]))], _build_onehot),
}


#: How pixelfold writes its rearrangements for a target (the styles of :mod:`pixelfold.judges.lowering`).
LOWERINGS = ("native", "reshape6", "rank4", "rank4_nchw")
#: What a converter makes of torch's own ``nn.PixelShuffle``/``nn.PixelUnshuffle`` (a target's ``torch_lowering``):
#: ``native`` (torch.onnx: one DepthToSpace/SpaceToDepth) or ``litert`` (litert-torch 0.10: Reshape → one rank-4
#: Transpose of ``(N·C, b_1, b_2, H·W)`` (``H, W`` on the depth side) → Reshape, read from Vela's reports).
TORCH_LOWERINGS = ("native", "litert")


def lowered(op: Op, style: str, torch_style: str = "native") -> list[Op]:
    """The operators a rearrangement becomes when pixelfold emits it in ``style`` (other ops: themselves).

    ``native``: one ``SpaceToDepth``/``DepthToSpace``; ``reshape6``: Reshape → Transpose → Reshape of rank
    ``2·dims + 2`` (pixelfold's default); ``rank4``/``rank4_nchw``: only tensors of rank ≤ 4 (what NPUs take),
    one round for ``dcr``/``focus`` and a second transpose for ``crd`` (the channel/phase swap). The lowered
    ops keep the rearrangement's ``block``, ``order`` and ``channels``, so a target can refuse, say, the
    transposes of a ``crd`` shuffle, and their ``grid`` (sizes, for a size rule). torch's own
    ``PixelShuffle``/``PixelUnshuffle`` are lowered in ``torch_style`` (what the target's converter makes
    of them: ``native`` for torch.onnx, ``litert`` for litert-torch; :data:`TORCH_LOWERINGS`).

    >>> [str(o) for o in lowered(Op("depth_to_space", block=(2, 2), order="crd"), "rank4")]
    ['reshape 2×2 crd rank 4', 'transpose 2×2 crd rank 4', 'reshape 2×2 crd rank 4', 'transpose 2×2 crd rank 4', 'reshape 2×2 crd rank 4']
    """
    if style not in LOWERINGS:
        raise FoldError(f"lowering {style!r} is not one of {LOWERINGS}")
    if torch_style not in TORCH_LOWERINGS:
        raise FoldError(f"torch lowering {torch_style!r} is not one of {TORCH_LOWERINGS}")
    if op.note == "torch":
        style = torch_style
    if op.kind not in ("space_to_depth", "depth_to_space") or style == "native":
        return [op]
    n = len(op.block or (1, 1))

    def low(kind: str, rank: int, by: str = "") -> Op:
        return Op(kind, block=op.block, order=op.order, channels=op.channels, rank=rank, grid=op.grid,
                  note=f"lowered {op.kind}{by}")

    if style == "litert":
        return [low("reshape", 4, " by litert-torch"), low("transpose", 4, " by litert-torch"),
                low("reshape", 4, " by litert-torch")]

    if style == "reshape6":
        return [low("reshape", 2 * n + 2), low("transpose", 2 * n + 2), low("reshape", n + 2)]
    rounds = 1 if n <= 2 else 2
    out = [low(k, 4) for _ in range(rounds) for k in ("reshape", "transpose", "reshape")]
    if op.order == "crd":
        out += [low("transpose", 4), low("reshape", 4)]
    return out


# ---------------------------------------------------------------------------- queries
def candidates(module: nn.Module, names: Sequence[str] | None = None, include_original: bool = True,
               input_shape: Sequence[int] | None = None) -> list[Candidate]:
    """Every exact form of the unit ``module`` (the original first), with its operators.

    ``names`` restricts the forms (by registry name). ``input_shape`` (the unit's input) lets the forms of a
    lone rearrangement know their channels. Forms whose construction refuses the layer (``FoldError``) are
    left out.
    """
    kind = unit_kind(module)
    if kind is None:
        return []
    spec = unit_spec(module)
    shape = tuple(input_shape) if input_shape is not None else None
    out = [Candidate("original", {}, tuple(original_ops(module, shape)))] if include_original else []
    for name, form in FORMS.items():
        if kind not in form.units or (names is not None and name not in names):
            continue
        for opts in form.options(module, spec, shape):
            try:
                ops = form.ops(module, spec, opts, shape)
            except FoldError:
                continue
            out.append(Candidate(name, dict(opts), tuple(ops)))
    return out


def build(module: nn.Module, name: str, options: Options | None = None) -> nn.Module:
    """Build the form ``name`` of ``module`` with ``options`` (``"original"``: the module itself)."""
    if name == "original":
        return module
    form = FORMS.get(name)
    if form is None:
        raise FoldError(f"unknown form {name!r}; known: original, {', '.join(FORMS)}")
    return form.build(module, dict(options or {}))
