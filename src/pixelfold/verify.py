"""Equivalence checks that fail closed: layer by layer in float64, then the whole model.

:func:`pixelfold.rewrite.rewrite` uses these to decide whether a rewritten
layer may stay in the model, and they are public so you can check your own
rewrites the same way:

- :func:`capture_inputs` records what each named submodule receives during
  one forward pass (forward pre-hooks, removed afterwards);
- :func:`compare_modules` runs two modules on the same input in a chosen
  dtype (float64 by default, on deep copies) and returns the max abs error;
- :func:`random_inputs` builds a small valid input for a conv-like module from
  its spec, for when no example input is at hand;
- :func:`check_layer` is the pass/fail decision with its tolerance.

Nothing here mutates the modules it is given: comparisons run on deep copies
(in eval mode), captures restore the training flags they change.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .errors import FoldError
from .spec import ConvSpec

__all__ = [
    "LAYER_RTOL",
    "E2E_TOL",
    "Call",
    "LayerCheck",
    "capture_inputs",
    "capture_calls",
    "compare_modules",
    "check_layer",
    "unit_spec",
    "random_inputs",
    "output_error",
    "flatten_outputs",
    "cast_floats",
    "eval_mode",
    "as_args",
]

#: Per-layer tolerance in float64, relative to ``max(1, max |reference output|)``.
LAYER_RTOL = 1e-9
#: End-to-end tolerance in float32, relative to ``max(1, max |reference output|)``.
E2E_TOL = 1e-4

#: One recorded call of a module: positional args and keyword args.
Call = tuple[tuple[Any, ...], dict[str, Any]]


# ---------------------------------------------------------------------------- small tree helpers
def as_args(example_inputs: Any) -> tuple[Any, ...]:
    """``example_inputs`` as a tuple of positional arguments (a lone tensor becomes a 1-tuple).

    >>> len(as_args(torch.zeros(1))), len(as_args((torch.zeros(1), torch.zeros(2))))
    (1, 2)
    """
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def cast_floats(obj: Any, dtype: torch.dtype | None = None, clone: bool = False) -> Any:
    """Map every floating-point tensor in a nested tuple/list/dict to ``dtype`` (and/or clone it).

    Integer and bool tensors (token ids, masks) are kept as they are.

    >>> out = cast_floats((torch.zeros(2), torch.zeros(2, dtype=torch.long)), torch.float64)
    >>> [t.dtype for t in out]
    [torch.float64, torch.int64]
    """
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.clone() if clone and t is obj.detach() else t
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(cast_floats(v, dtype, clone) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(cast_floats(v, dtype, clone) for v in obj)
    if isinstance(obj, dict):
        return {k: cast_floats(v, dtype, clone) for k, v in obj.items()}
    return obj


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """All tensors in a (nested) model output, in a fixed order.

    Handles tensors, tuples, lists, namedtuples, dicts (torchvision's
    segmentation models return ``OrderedDict``) and objects with ``to_tuple()``.

    >>> [t.shape for t in flatten_outputs({"out": torch.zeros(2), "aux": (torch.zeros(3),)})]
    [torch.Size([2]), torch.Size([3])]
    """
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in flatten_outputs(v)]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if hasattr(out, "to_tuple"):
        return flatten_outputs(out.to_tuple())
    return []


def output_error(reference: Any, candidate: Any) -> tuple[float, float]:
    """``(max |candidate - reference|, max |reference|)`` over all output tensors.

    The error is ``inf`` when the outputs differ in structure, shape, or hold
    NaN where the reference does not (a mismatch never passes a check).

    >>> a = torch.tensor([1.0, -3.0])
    >>> output_error(a, a + 0.5)
    (0.5, 3.0)
    >>> output_error(a, torch.zeros(3))[0]
    inf
    """
    ref, cand = flatten_outputs(reference), flatten_outputs(candidate)
    if len(ref) != len(cand):
        return math.inf, math.nan
    err, scale = 0.0, 0.0
    for r, c in zip(ref, cand):
        if r.shape != c.shape:
            return math.inf, math.nan
        if r.numel() == 0:
            continue
        if not r.is_floating_point():
            if not torch.equal(r, c.to(r.dtype)):
                return math.inf, math.nan
            continue
        r64, c64 = r.detach().double(), c.detach().double()
        if bool(torch.isnan(c64).ne(torch.isnan(r64)).any()):
            return math.inf, math.nan
        finite = torch.isfinite(r64)
        if bool((~finite).any()):
            if not torch.equal(r64[~finite].nan_to_num(), c64[~finite].nan_to_num()):
                return math.inf, math.nan
            r64, c64 = r64[finite], c64[finite]
            if r64.numel() == 0:
                continue
        err = max(err, float((c64 - r64).abs().max()))
        scale = max(scale, float(r64.abs().max()))
    return err, scale


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` (and every submodule) in eval mode; restore each one's flag on exit.

    >>> m = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.BatchNorm1d(2))
    >>> m[0].train(False) and None
    >>> with eval_mode(m):
    ...     m.training, m[1].training
    (False, False)
    >>> m.training, m[0].training, m[1].training
    (True, False, True)
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


# ---------------------------------------------------------------------------- capturing inputs
def capture_calls(
    model: nn.Module,
    example_inputs: Any,
    names: Sequence[str],
    max_calls: int = 4,
) -> tuple[dict[str, list[Call]], Any]:
    """Run ``model`` once (eval mode, no grad) and record the inputs of the named submodules.

    Returns ``({name: [(args, kwargs), ...]}, model_output)`` with at most
    ``max_calls`` calls per module (a module used twice in ``forward`` is
    recorded twice). Tensors are detached clones, so later in-place ops in
    the model cannot change them. Names that are never called are absent.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    >>> calls, out = capture_calls(net, torch.randn(1, 3, 8, 8), ["0", "2"])
    >>> [tuple(calls[n][0][0][0].shape) for n in ("0", "2")], tuple(out.shape)
    ([(1, 3, 8, 8), (1, 4, 6, 6)], (1, 2, 6, 6))
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    missing = [n for n in names if n not in modules]
    if missing:
        raise FoldError(f"capture_inputs: no submodule named {missing[:3]} in {type(model).__name__}")
    calls: dict[str, list[Call]] = {}
    handles = []

    def make_hook(name: str):  # noqa: ANN202 - closure
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen = calls.setdefault(name, [])
            if len(seen) < max_calls:
                seen.append((cast_floats(args, clone=True), cast_floats(kwargs, clone=True)))

        return hook

    # one hook per module object even if it is reachable under several names: record under each name
    for name in dict.fromkeys(names):
        handles.append(modules[name].register_forward_pre_hook(make_hook(name), with_kwargs=True))
    try:
        with eval_mode(model), torch.no_grad():
            out = model(*as_args(example_inputs))
    except FoldError:
        raise
    except Exception as err:
        raise FoldError(
            f"the model raised {type(err).__name__} on example_inputs ({err}); pass inputs the "
            "original model accepts (a tensor or a tuple of positional arguments)"
        ) from err
    finally:
        for h in handles:
            h.remove()
    return calls, out


def capture_inputs(model: nn.Module, example_inputs: Any, names: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """The positional inputs each named submodule receives in one forward pass (its first call).

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU())
    >>> captured = capture_inputs(net, torch.randn(1, 3, 9, 9), ["0", "1"])
    >>> tuple(captured["0"][0].shape), tuple(captured["1"][0].shape)
    ((1, 3, 9, 9), (1, 4, 4, 4))
    """
    calls, _ = capture_calls(model, example_inputs, names, max_calls=1)
    return {name: c[0][0] for name, c in calls.items()}


# ---------------------------------------------------------------------------- random inputs
def unit_spec(module: nn.Module) -> ConvSpec | None:
    """Spec of a conv-like module (a plain or subclassed ``nn.ConvNd``, or a pixelfold module)."""
    spec = getattr(module, "spec", None)
    if isinstance(spec, ConvSpec):  # PhaseConv, SubpixelConvTranspose, ...
        return spec
    if isinstance(module, nn.modules.conv._ConvNd):
        try:
            return ConvSpec.from_module(module)
        except FoldError:
            return None
    from .hidden import spec_of  # timm BlurPool2d & co. (hidden imports nothing from here)

    return spec_of(module)


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def random_inputs(module: nn.Module, sizes: Sequence[int] = (0, 1), seed: int = 0,
                  dtype: torch.dtype = torch.float64) -> list[tuple[torch.Tensor]] | None:
    """Small random inputs a conv-like module accepts, one per entry of ``sizes``.

    Batch 2, the module's input channels and, per spatial dim,
    ``max(2 * span, 8, padding + 1) + extra`` for each ``extra`` in ``sizes`` (an odd size
    catches bugs that only show when the input is not a multiple of a block).
    Understands plain convs, modules with a ``spec`` attribute (pixelfold's),
    ``nn.Sequential(space_to_depth step, conv)`` and ``(conv, depth_to_space)``
    pairs and YOLOv5-style ``Focus``. Returns ``None`` when it cannot tell;
    pass real example inputs then. The inputs are on the module's device.

    >>> [tuple(x.shape) for (x,) in random_inputs(torch.nn.Conv2d(3, 8, 7, stride=2))]
    [(2, 3, 14, 14), (2, 3, 15, 15)]
    """
    from .layers import DepthToSpace, SpaceToDepth  # layers import nothing from here

    upscale: tuple[int, ...] | None = None
    channels_div = 1
    found = unit_spec(module)
    if found is None and isinstance(module, nn.Sequential) and len(module) == 2:
        first, second = module[0], module[1]
        if isinstance(first, (SpaceToDepth, nn.PixelUnshuffle)):
            found = unit_spec(second)
            block = first.block if isinstance(first, SpaceToDepth) else first.downscale_factor
            if found is not None:
                n = found.dims
                upscale = tuple(block) if not isinstance(block, int) else (block,) * n
                channels_div = math.prod(upscale)
        elif isinstance(second, (DepthToSpace, nn.PixelShuffle, nn.Identity)):
            found = unit_spec(first)
    if found is None:  # a Focus-style module, recognised by probing it (any name, block and slice order)
        from .probe import conv_in, focus_map, focus_unit

        unit = focus_unit(module)
        try:
            step = focus_map(module)[0] if unit is not None else None
        except FoldError:
            step = None
        if step is not None:
            found = unit_spec(conv_in(unit))
            upscale = step.block
            channels_div = math.prod(upscale)
    if found is None:
        return None
    spec = found
    if spec.in_channels % channels_div:
        return None
    upscale = upscale or (1,) * spec.dims
    gen = torch.Generator().manual_seed(seed)
    out = []
    for extra in sizes:
        spatial = [(max(2 * sp, 8, max(pad) + 1) + extra) * u
                   for sp, pad, u in zip(spec.span, spec.padding, upscale)]
        x = torch.randn(2, spec.in_channels // channels_div, *spatial, generator=gen, dtype=torch.float64)
        out.append((x.to(device=_device_of(module), dtype=dtype),))
    return out


# ---------------------------------------------------------------------------- comparing
def _run(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Any:
    with torch.no_grad():
        return module(*args, **(kwargs or {}))


def _prepared(module: nn.Module, dtype: torch.dtype | None, copy_module: bool) -> nn.Module:
    m = copy.deepcopy(module) if copy_module else module
    if dtype is not None:
        m = m.to(dtype)
    return m.eval()


def compare_modules(
    a: nn.Module,
    b: nn.Module,
    inputs: Any,
    dtype: torch.dtype | None = torch.float64,
    kwargs: dict[str, Any] | None = None,
) -> float:
    """Max abs difference of ``b(inputs)`` from ``a(inputs)``, on deep copies in ``dtype`` and eval mode.

    ``inputs`` is a tensor or a tuple of positional arguments; floating
    tensors in it are cast to ``dtype`` (``None`` keeps every dtype). Returns
    ``inf`` if the outputs differ in structure or shape. Neither module is
    changed (not even its training flag).

    >>> import pixelfold
    >>> conv = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3)
    >>> compare_modules(conv, pixelfold.fold(conv, 2), torch.randn(1, 3, 33, 31)) < 1e-12
    True
    """
    args = cast_floats(as_args(inputs), dtype)
    kw = cast_floats(kwargs or {}, dtype)
    ma, mb = _prepared(a, dtype, True), _prepared(b, dtype, True)
    err, _ = output_error(_run(ma, args, kw), _run(mb, args, kw))
    return err


@dataclass
class LayerCheck:
    """The outcome of :func:`check_layer`."""

    ok: bool
    error: float
    tolerance: float
    dtype: str
    reason: str = ""


def check_layer(
    old: nn.Module,
    new: nn.Module,
    calls: Sequence[Call] | None,
    rtol: float | None = None,
) -> LayerCheck:
    """Does ``new`` compute what ``old`` computes on ``calls``? Fails closed.

    Runs deep copies of both in float64 (falling back to float32 with a
    float32-sized tolerance if a module refuses float64) on every recorded call
    (or, when ``calls`` is ``None``, on :func:`random_inputs` of ``old``). The
    check passes when ``max |new - old| <= rtol * max(1, max |old|)`` on every
    call, with ``rtol`` = :data:`LAYER_RTOL` in float64 and
    :data:`E2E_TOL` in float32. Exceptions, shape mismatches and NaNs fail it.

    >>> import pixelfold
    >>> conv = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)
    >>> check_layer(conv, pixelfold.fold(conv, 2), None).ok
    True
    >>> check_layer(conv, torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), None).ok
    False
    """
    if calls is None:
        rand = random_inputs(old)
        if rand is None:
            return LayerCheck(False, math.inf, math.nan, "-",
                              f"cannot derive a test input for {type(old).__name__}; pass example_inputs")
        calls = [(args, {}) for args in rand]
    last_err: Exception | None = None
    for dtype, default_rtol in ((torch.float64, LAYER_RTOL), (torch.float32, E2E_TOL)):
        tol_rel = default_rtol if rtol is None else rtol
        try:
            ma, mb = _prepared(old, dtype, True), _prepared(new, dtype, True)
        except Exception as err:  # a module that cannot be cast: try the next dtype
            last_err = err
            continue
        worst, worst_tol = 0.0, 0.0
        try:
            for args, kwargs in calls:
                a_args, a_kw = cast_floats(args, dtype), cast_floats(kwargs, dtype)
                ref = _run(ma, a_args, a_kw)
                try:
                    out = _run(mb, a_args, a_kw)
                except Exception as err:
                    return LayerCheck(False, math.inf, math.nan, str(dtype).replace("torch.", ""),
                                      f"the new module raised {type(err).__name__}: {err}")
                err, scale = output_error(ref, out)
                tol = tol_rel * max(1.0, scale if math.isfinite(scale) else 1.0)
                if not err <= tol:
                    shape = "outputs differ in structure or shape" if math.isinf(err) else (
                        f"max |Δ| {err:.3g} > tolerance {tol:.3g}")
                    return LayerCheck(False, err, tol, str(dtype).replace("torch.", ""),
                                      f"not equivalent: {shape}")
                worst, worst_tol = max(worst, err), max(worst_tol, tol)
        except Exception as err:  # the *old* module refused this dtype / input: try float32
            last_err = err
            continue
        return LayerCheck(True, worst, worst_tol, str(dtype).replace("torch.", ""))
    return LayerCheck(False, math.inf, math.nan, "-",
                      f"could not run the original layer on its inputs ({type(last_err).__name__}: {last_err})")
