"""Space-to-depth steps recognised by what they do, and merged into the conv that follows.

:func:`pixelfold.merge` takes a rearrangement followed by a conv. It trusts
neither names nor classes: it runs the step (a deep copy, float64, eval mode,
no grad) on probe inputs whose values are their own indices and reads off the
block and the channel order the step applies. YOLOv5/YOLOX/SPD-Conv Focus
slicing, TResNet's (timm) ``SpaceToDepth``, ``pixel_unshuffle`` and any other
order are all "``space_to_depth(x, block, "crd")[:, perm]``" for some
``block`` and channel permutation ``perm``; two more probes (another size,
batch 2, random signed values) confirm it exactly. Anything else — values
scaled, summed, dropped, duplicated, padded, size-dependent — is refused with
a :class:`~pixelfold.FoldError` that says what the probe saw.

A Focus-style module (``forward`` slices ``x`` and calls ``self.conv`` on the
result) is probed the same way, with ``.conv`` replaced *in the copy* by a
recorder that keeps its input and returns a sentinel: the module must call
``.conv`` once and return the sentinel unchanged. A wrapper around the conv
(YOLOv5's ``Conv``, timm's ``ConvNormAct``: conv → norm → act) must reach its
input only through the conv.

This module needs only the pure layers (spec, transforms, rearrange):
:mod:`pixelfold.layers` builds on it.

>>> import torch
>>> class Focus(torch.nn.Module):          # YOLOX's slice order, a class merge has never seen
...     def __init__(self):
...         super().__init__()
...         self.conv = torch.nn.Conv2d(12, 8, 3, padding=1)
...     def forward(self, x):
...         tl, tr = x[..., ::2, ::2], x[..., ::2, 1::2]
...         bl, br = x[..., 1::2, ::2], x[..., 1::2, 1::2]
...         return self.conv(torch.cat((tl, bl, tr, br), 1))
>>> m, unit = focus_map(Focus())
>>> m.block, m.order
((2, 2), 'focus')
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import transforms as T
from .errors import FoldError
from .guards import conv_problem, hook_problem
from .rearrange import ORDERS, phase_permutation, space_to_depth
from .spec import ConvSpec, build_module

__all__ = ["StepMap", "step_map", "focus_map", "focus_unit", "conv_of", "merged_conv", "merge", "padded_conv"]

_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BASES = (12, 24, 30, 28, 36, 40, 42, 48, 60)  # first probe: base·(i+1) in dim i (blocks 2..10, 12, 16, 24, ...)
_ZERO_PAD = {1: nn.ZeroPad1d, 2: nn.ZeroPad2d, 3: nn.ZeroPad3d}
_CIRCULAR_PAD = {1: nn.CircularPad1d, 2: nn.CircularPad2d, 3: nn.CircularPad3d}


class _Refused(Exception):
    """The probe saw something that rules the module out (not an input it merely rejects)."""


@dataclass(frozen=True)
class StepMap:
    """What a space-to-depth step does: ``step(x) == space_to_depth(x, block, "crd")[:, perm]``.

    ``channels`` is the input channel count it was derived for; ``perm[k]`` is
    the ``crd`` channel that output channel ``k`` holds.

    >>> StepMap((2, 2), tuple(phase_permutation(3, (2, 2), "dcr").tolist()), 3).order
    'dcr'
    """

    block: tuple[int, ...]
    perm: tuple[int, ...]
    channels: int

    @property
    def order(self) -> str | None:
        """The named order (``crd``, ``dcr``, ``focus``) this permutation is, if any."""
        for name in ORDERS:
            if tuple(phase_permutation(self.channels, self.block, name).tolist()) == self.perm:
                return name
        return None


# ---------------------------------------------------------------------------- probing
def _index_input(channels: int, spatial: Sequence[int], batch: int = 1) -> torch.Tensor:
    n = batch * channels * math.prod(spatial)
    return torch.arange(1, n + 1, dtype=torch.float64).reshape(batch, channels, *spatial)


def _channel_candidates(in_channels: int) -> list[int]:
    """Input channel counts to try first: 1 (most steps take any), then ``in_channels / R`` for small R."""
    out = [1] + [in_channels // r for r in range(1, 65) if in_channels % r == 0]
    return list(dict.fromkeys(out))[:10]


def _block_of(x: torch.Tensor, y: Any) -> tuple[int, ...]:
    if not isinstance(y, torch.Tensor) or y.dim() != x.dim() or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise _Refused(f"it returns {shape} for an input of shape {tuple(x.shape)}")
    block = []
    for L, o in zip(x.shape[2:], y.shape[2:]):
        if o < 1 or L % o:
            raise _Refused(f"it turns spatial size {tuple(x.shape[2:])} into {tuple(y.shape[2:])}, "
                           "not a whole number of blocks")
        block.append(L // o)
    R = math.prod(block)
    if y.shape[1] != x.shape[1] * R:
        raise _Refused(f"it turns {x.shape[1]} channel(s) into {y.shape[1]} while shrinking the map by "
                       f"{'×'.join(map(str, block))}, so it does not keep every pixel")
    return tuple(block)


def _derive_perm(x: torch.Tensor, y: Any, block: tuple[int, ...]) -> tuple[int, ...]:
    ref = space_to_depth(x, block, "crd")
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(ref.shape):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise _Refused(f"it returns {shape} for {tuple(x.shape)}, not {tuple(ref.shape)}")
    corner = (0, slice(None), *[0] * (x.dim() - 2))
    where = {float(v): p for p, v in enumerate(ref[corner].tolist())}
    perm = []
    for k, v in enumerate(y[corner].tolist()):
        if v not in where:
            raise _Refused(f"its output channel {k} holds {v:g}, which is no input pixel of its block "
                           "(values scaled, summed, shifted or padded)")
        perm.append(where[v])
    if len(set(perm)) != len(perm):
        raise _Refused("it copies some pixels of a block twice and drops others")
    if not torch.equal(y, ref[:, perm]):
        raise _Refused("it does not read the same pixel of every block in each output channel")
    return tuple(perm)


def _call(run: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Any:
    try:
        return run(x)
    except _Refused:
        raise
    except Exception as err:
        raise _Refused(f"it raised {type(err).__name__} on a probe of shape {tuple(x.shape)}: {err}") from None


def _derive(run: Callable[[torch.Tensor], torch.Tensor], in_channels: int, dims: int, what: str) -> StepMap:
    """The :class:`StepMap` of ``run`` (input → rearranged input), or :class:`_Refused`."""
    block: tuple[int, ...] | None = None
    last: Exception | None = None
    odd: _Refused | None = None  # the first output that was no space-to-depth of its input
    for base in _BASES:
        spatial = tuple(base * (i + 1) for i in range(dims))
        for c in _channel_candidates(in_channels):
            x = _index_input(c, spatial)
            try:
                y = run(x)
            except _Refused:
                raise
            except Exception as err:  # a size or channel count the step rejects: try the next one
                last = err
                continue
            try:
                block = _block_of(x, y)
            except _Refused as err:  # (a step written for one channel count may misbehave on others)
                odd = odd or err
                continue
            break
        if block is not None:
            break
    if block is None:
        if odd is not None:
            raise odd
        raise _Refused(f"it raised on every probe input ((1, C, {_BASES[0]}·k, ...) float64; last: "
                       f"{type(last).__name__}: {last})")
    R = math.prod(block)
    if in_channels % R:
        raise FoldError(
            f"{what} moves blocks of {R} pixels (block {'×'.join(map(str, block))}) into the channels, but the conv "
            f"takes {in_channels} input channels, not a multiple of {R}: the pair does not run as given (a C-channel "
            f"input needs a conv with C·{R} input channels)"
        )
    C = in_channels // R
    x2 = _index_input(C, [b * (3 + i) for i, b in enumerate(block)])
    perm = _derive_perm(x2, _call(run, x2), block)
    gen = torch.Generator().manual_seed(0)
    x3 = torch.randn(2, C, *[b * (4 + 2 * i) for i, b in enumerate(block)], generator=gen, dtype=torch.float64)
    big = 40 if dims < 3 else 16  # and a larger size: a step that changes above some size is caught up to here
    x1 = _index_input(C, [b * ((big + b - 1) // b) * (i + 1) for i, b in enumerate(block)])
    for x in (x3, x1):
        y = _call(run, x)
        if not isinstance(y, torch.Tensor) or not torch.equal(y, space_to_depth(x, block, "crd")[:, list(perm)]):
            raise _Refused("it rearranges index-valued inputs as a space-to-depth but not random signed ones or "
                           "inputs of another size and batch (a value-, size- or batch-dependent step)")
    return StepMap(block, perm, C)


def _not_a_step(err: _Refused, what: str) -> FoldError:
    return FoldError(
        f"{what} is not a pure space-to-depth: {err}; merge applies only to a step that moves whole blocks of "
        "pixels into channels, so keep the step and the conv as they are"
    )


def step_map(step: nn.Module, in_channels: int, dims: int) -> StepMap:
    """What ``step`` does, by probing a deep copy; :class:`FoldError` if it is not a pure space-to-depth.

    >>> step_map(torch.nn.PixelUnshuffle(2), 12, 2).order
    'crd'
    >>> step_map(torch.nn.AvgPool2d(2), 12, 2)
    Traceback (most recent call last):
    ...
    pixelfold.errors.FoldError: the step AvgPool2d is not a pure space-to-depth: it turns 1 channel(s) into 1 while shrinking the map by 2×2, so it does not keep every pixel; merge applies only to a step that moves whole blocks of pixels into channels, so keep the step and the conv as they are
    """
    what = f"the step {type(step).__name__}"
    probe = copy.deepcopy(step).to(torch.float64).eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return probe(x)

    try:
        return _derive(run, in_channels, dims, what)
    except _Refused as err:
        raise _not_a_step(err, what) from None


class _Recorder(nn.Module):
    """Stands in for a conv in a probe copy: records its input, returns a fresh random sentinel."""

    def __init__(self, spec: ConvSpec) -> None:
        super().__init__()
        self.spec = spec
        self.inputs: list[Any] = []
        self.sentinel: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = args[0] if len(args) == 1 and not kwargs else None
        self.inputs.append(x.detach().clone() if isinstance(x, torch.Tensor) else None)
        spatial = list(x.shape[2:]) if isinstance(x, torch.Tensor) else [1] * self.spec.dims
        try:
            spatial = [max(1, o) for o in self.spec.output_size(spatial)]
        except FoldError:
            pass
        batch = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else 1
        gen = torch.Generator().manual_seed(len(self.inputs))
        self.sentinel = torch.randn(batch, self.spec.out_channels, *spatial, generator=gen, dtype=torch.float64)
        return self.sentinel.clone()


def _probe_copy(module: nn.Module, part: nn.Module, spec: ConvSpec) -> tuple[nn.Module, _Recorder]:
    """A deep copy of ``module`` with ``part`` replaced by a recorder (``module`` is not touched)."""
    rec = _Recorder(spec)
    probe = copy.deepcopy(module, {id(part): rec})
    return probe.to(torch.float64).eval(), rec


def _inner_conv(unit: nn.Module) -> nn.Module | None:
    if isinstance(unit, nn.modules.conv._ConvNd):
        return unit
    inner = getattr(unit, "conv", None)
    return inner if isinstance(inner, nn.modules.conv._ConvNd) else None


def focus_unit(module: nn.Module) -> nn.Module | None:
    """The ``.conv`` (a conv, or a wrapper holding one as ``.conv``) of a Focus-style module, or ``None``.

    Only the structure is checked here (no probe): ``module`` is not itself a
    conv or container, and everything it holds (parameters, buffers) is under
    ``.conv`` — a rearrangement has no state of its own.
    """
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return None
    unit = getattr(module, "conv", None)
    if not isinstance(unit, nn.Module) or _inner_conv(unit) is None:
        return None
    inside = {id(t) for t in itertools.chain(unit.parameters(), unit.buffers())}
    if any(id(t) not in inside for t in itertools.chain(module.parameters(), module.buffers())):
        return None
    return unit


def focus_map(module: nn.Module) -> tuple[StepMap, nn.Module]:
    """What a Focus-style module's slicing does, and its ``.conv`` unit; :class:`FoldError` if it is not one.

    The module must call ``.conv`` once, on a space-to-depth of its input, and
    return that call's result unchanged.
    """
    name = type(module).__name__
    unit = focus_unit(module)
    if unit is None:
        raise FoldError(
            f"{name} is not a Focus-style module: merge needs a .conv (a conv, or a wrapper such as YOLOv5's "
            "Conv or timm's ConvNormAct holding one as .conv) and no parameters or buffers outside it; "
            "pass nn.Sequential(step, conv) or merge(step, conv) instead"
        )
    conv = _inner_conv(unit)
    assert conv is not None
    probe, rec = _probe_copy(module, unit, ConvSpec.from_module(conv))

    def run(x: torch.Tensor) -> torch.Tensor:
        rec.inputs.clear()
        with torch.no_grad():
            out = probe(x)
        if len(rec.inputs) != 1 or rec.inputs[0] is None:
            raise _Refused(f"its forward calls .conv {len(rec.inputs)} times" if len(rec.inputs) != 1
                           else "its forward calls .conv with other than one tensor")
        if not isinstance(out, torch.Tensor) or not torch.equal(out, rec.sentinel):  # type: ignore[arg-type]
            raise _Refused("its forward does not return .conv's output unchanged")
        return rec.inputs[0]

    try:
        return _derive(run, conv.in_channels, len(conv.kernel_size), name), unit
    except _Refused as err:
        raise FoldError(
            f"{name} is not a space-to-depth followed by its .conv: {err}; merge would change what it computes, "
            "so keep it as it is"
        ) from None


def _check_wrapper(wrapper: nn.Module, conv: nn.Module) -> None:
    """``wrapper(x)`` must be ``g(conv(x))``: conv first, and ``x`` used nowhere else."""
    name = type(wrapper).__name__
    spec = ConvSpec.from_module(conv)
    probe, rec = _probe_copy(wrapper, conv, spec)
    spatial = [max(2 * s, 8, max(p) + 1) for s, p in zip(spec.span, spec.padding)]
    outs = []
    for seed in (1, 2):
        x = torch.randn(2, spec.in_channels, *spatial, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
        rec.inputs.clear()
        try:
            with torch.no_grad():
                out = probe(x)
        except Exception as err:
            raise FoldError(f"{name} (around the conv) raised {type(err).__name__} on a probe input: {err}; merge "
                            "cannot check that it applies its .conv first: pass the conv itself") from None
        if len(rec.inputs) != 1 or rec.inputs[0] is None or not torch.equal(rec.inputs[0], x):
            raise FoldError(f"{name} does not apply its .conv first to its input, so merging the conv alone would "
                            "change it; keep the pair as it is")
        outs.append(out)
    if not all(isinstance(o, torch.Tensor) for o in outs) or not torch.equal(outs[0], outs[1]):
        raise FoldError(f"{name} uses its input other than through its .conv (e.g. a residual), so merging the "
                        "conv alone would change it; keep the pair as it is")


def conv_in(unit: nn.Module) -> nn.Module:
    """The conv of a unit after a step: the unit itself, or the conv a wrapper holds as ``.conv`` (else the unit)."""
    inner = _inner_conv(unit)
    return unit if inner is None else inner


def is_step(step: nn.Module, unit: nn.Module) -> bool:
    """Is ``step`` (holding no parameters or buffers) a space-to-depth (block > 1) for the conv in ``unit``?

    A cheap structural check, then a probe (:func:`step_map`) of a deep copy.

    >>> from timm.layers import SpaceToDepth
    >>> is_step(SpaceToDepth(), torch.nn.Conv2d(48, 8, 3)), is_step(torch.nn.ReLU(), torch.nn.Conv2d(48, 8, 3))
    (True, False)
    """
    conv = _inner_conv(unit)
    if conv is None or isinstance(step, nn.modules.conv._ConvNd):
        return False
    if any(True for _ in itertools.chain(step.parameters(), step.buffers())):
        return False
    try:
        found = step_map(step, conv.in_channels, len(conv.kernel_size))
    except FoldError:
        return False
    return math.prod(found.block) > 1


# ---------------------------------------------------------------------------- the conv after the step
def _check_conv(conv: nn.Module) -> None:
    """Refuse a conv that merge cannot move onto the original input, saying what applies instead."""
    name = type(conv).__name__
    if isinstance(conv, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        raise FoldError(f"merge takes a conv after the step, got {name}: a transposed conv after a space-to-depth "
                        "has no single-conv form; keep the pair as it is")
    if type(conv) not in _PLAIN_CONVS:
        from .hidden import lookup  # hidden builds on layers, which builds on this module

        hidden = lookup(conv)
        if hidden is not None:
            raise FoldError(f"merge builds a plain conv with new weights; {hidden.shown} {hidden.describe(conv)}: "
                            f"{hidden.merge_way_out()}")
        raise FoldError(str(conv_problem(conv, "merge")))
    if conv.padding_mode not in ("zeros", "circular"):
        raise FoldError(
            f"merge cannot move padding_mode={conv.padding_mode!r} onto the original input: the conv pads the "
            "rearranged map with whole blocks, which no padding of the input does; keep the pair as it is, or use "
            "padding_mode 'zeros' or 'circular'"
        )
    hooks = hook_problem(conv)
    if hooks:
        raise FoldError(f"merge: {hooks}; or keep the pair as it is")


def conv_of(unit: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """``(conv, wrapper)`` for the module after the step: a conv (``wrapper`` None) or a conv-first wrapper."""
    conv = _inner_conv(unit)
    if conv is None:
        from .hidden import lookup

        if lookup(unit) is not None:  # BlurPool2d, quantized and other convs in disguise
            _check_conv(unit)
        raise FoldError(
            f"merge needs a conv after the step, got {type(unit).__name__}: neither an nn.ConvNd nor a wrapper "
            "holding one as .conv (like YOLOv5's Conv or timm's ConvNormAct)"
        )
    _check_conv(conv)
    if conv is unit:
        return conv, None
    _check_wrapper(unit, conv)
    return conv, unit


# ---------------------------------------------------------------------------- the merged conv
def _regroup(index: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Most groups a dense ``(O, C, *K)`` index map splits into (its zero entries are structural)."""
    O, C = index.shape[:2]
    live = index.ne(0).flatten(2).any(2)
    for g in sorted((d for d in range(2, math.gcd(O, C) + 1) if O % d == 0 and C % d == 0), reverse=True):
        og = torch.arange(O) // (O // g)
        cg = torch.arange(C) // (C // g)
        if bool((live & (og[:, None] != cg[None, :])).any()):
            continue
        blocks = index.reshape(g, O // g, g, C // g, *index.shape[2:])
        return torch.cat([blocks[i, :, i] for i in range(g)]), g
    return index, 1


def _fresh_conv(spec: ConvSpec, weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Module) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the constructor's random init must not advance the caller's RNG
        return build_module(spec, weight, bias, like=like)


def padded_conv(spec: ConvSpec, weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Module) -> nn.Module:
    """A fresh conv for ``spec``; asymmetric padding (``'same'`` with an even kernel) as ``Sequential(pad, conv)``.

    Zero padding keeps its symmetric part in the conv; circular padding goes
    wholly into ``nn.CircularPadNd`` (wrapping an already padded map differs).

    >>> spec = ConvSpec.make(1, 1, 4, padding="same")            # pads (1, 2)
    >>> padded_conv(spec, torch.ones(1, 1, 4, 4), None, torch.nn.Conv2d(1, 1, 4, padding="same"))
    Sequential(
      (0): ZeroPad2d((0, 1, 0, 1))
      (1): Conv2d(1, 1, kernel_size=(4, 4), stride=(1, 1), padding=(1, 1))
    )
    """
    if spec.symmetric_padding is not None:
        return _fresh_conv(spec, weight, bias, like)
    n = spec.dims
    if spec.padding_mode == "circular":
        pad: nn.Module = _CIRCULAR_PAD[n]([v for lo, hi in reversed(spec.padding) for v in (lo, hi)])
        inner = spec.replace(padding=((0, 0),) * n, padding_mode="zeros")
    else:
        if spec.padding_mode != "zeros":
            raise FoldError(f"asymmetric padding {spec.padding} with padding_mode={spec.padding_mode!r} has no "
                            "nn.ConvNd form; use pixelfold.fold, which pads explicitly")
        keep = [min(lo, hi) for lo, hi in spec.padding]
        pad = _ZERO_PAD[n]([v for (lo, hi), k in zip(reversed(spec.padding), reversed(keep)) for v in (lo - k, hi - k)])
        inner = spec.replace(padding=tuple((k, k) for k in keep))
    pad.train(like.training)
    return nn.Sequential(pad, _fresh_conv(inner, weight, bias, like))


def merged_conv(conv: nn.Module, step: StepMap) -> nn.Module:
    """The conv on the original input equal to ``conv(step(x))``, for any channel order and any groups.

    The weight is one gather of ``conv.weight``: the conv's input channels are
    put in ``crd`` order (a grouped conv written densely first, zeros between
    its groups), laid out spatially (:func:`pixelfold.transforms.to_space_weight`),
    and split back into as many groups as its structural zeros allow.
    """
    spec = ConvSpec.from_module(conv)
    O, Cg, *K = conv.weight.shape
    G = spec.groups
    index = torch.arange(1, conv.weight.numel() + 1, dtype=torch.long).reshape(O, Cg, *K)
    dense = torch.zeros(O, spec.in_channels, *K, dtype=torch.long)
    for g in range(G):
        rows = slice(g * O // G, (g + 1) * O // G)
        dense[rows, g * Cg:(g + 1) * Cg] = index[rows]
    crd = dense.index_select(1, torch.argsort(torch.tensor(step.perm)))
    index, new = T.to_space_weight(crd, spec.replace(groups=1), step.block, "crd")
    index, groups = _regroup(index)
    new = new.replace(groups=groups)
    w = conv.weight.detach()
    weight = torch.cat([w.new_zeros(1), w.reshape(-1)])[index.to(w.device)]
    bias = None if conv.bias is None else conv.bias.detach()
    return padded_conv(new, weight, bias, like=conv)


def _merged_unit(unit: nn.Module, conv: nn.Module, wrapper: nn.Module | None, step: StepMap) -> nn.Module:
    new = merged_conv(conv, step)
    if wrapper is None:
        return new
    out = copy.deepcopy(wrapper)
    out.conv = new
    return out


def merge(module: nn.Module, conv: nn.Module | None = None) -> nn.Module:
    """:func:`pixelfold.merge`: a space-to-depth step (recognised by probing) + conv → one conv (or wrapper)."""
    if conv is not None:
        step, unit = module, conv
    elif isinstance(module, nn.Sequential) and len(module) == 2:
        step, unit = module[0], module[1]
    elif focus_unit(module) is not None or (getattr(module, "conv", None) is not None
                                            and not isinstance(module, nn.modules.conv._ConvNd)):
        hooks = hook_problem(module)
        if hooks:
            raise FoldError(f"merge: {hooks}; or keep it as it is")
        m, unit = focus_map(module)
        inner, wrapper = conv_of(unit)
        return _merged_unit(unit, inner, wrapper, m)
    else:
        raise FoldError(
            "merge takes nn.Sequential(space-to-depth step, conv), a Focus-style module (its forward is "
            f"self.conv(space_to_depth(x)), e.g. YOLOv5's Focus), or (step, conv); got {type(module).__name__}"
        )
    inner, wrapper = conv_of(unit)
    hooks = hook_problem(step)
    if hooks:
        raise FoldError(f"merge: the step {hooks}; or keep the pair as it is")
    m = step_map(step, inner.in_channels, len(inner.kernel_size))
    return _merged_unit(unit, inner, wrapper, m)
