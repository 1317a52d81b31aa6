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

import copy
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .errors import FoldError
from .spec import ConvSpec

from .trees import as_args, _tensors, informative, randomized, _shape_text, cast_floats, flatten_outputs, output_error, eval_mode  # noqa: F401  (re-exported)

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
    "informative",
    "randomized",
]

#: Per-layer tolerance in float64, relative to ``max(1, max |reference output|)``.
LAYER_RTOL = 1e-9
#: End-to-end tolerance in float32, relative to ``max(1, max |reference output|)``.
E2E_TOL = 1e-4

#: One recorded call of a module: positional args and keyword args.
Call = tuple[tuple[Any, ...], dict[str, Any]]


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
    """The outcome of :func:`check_layer`: the verdict, the worst error and tolerance, and what it was checked on."""

    ok: bool
    error: float
    tolerance: float
    dtype: str
    reason: str = ""
    checked_on: str = ""
    refused_sizes: str = ""


def _plan_calls(old: nn.Module, calls: Sequence[Call] | None, seed: int) -> list[tuple[str, tuple[Any, ...],
                                                                                       dict[str, Any]]] | str:
    """What :func:`check_layer` runs: ``(kind, args, kwargs)`` with kind captured / random / resized, or why nothing."""
    gen = torch.Generator().manual_seed(seed)
    if not calls:
        rand = random_inputs(old, seed=seed)
        if rand is None:
            return f"cannot derive a test input for {type(old).__name__}; pass example_inputs"
        return [("random", args, {}) for args in rand]
    plan: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [("captured", a, k) for a, k in calls]
    seen: set[str] = set()
    for a, k in calls:  # random data of every captured shape: captured activations may be zeros or constant
        key = _shape_text((a, k))
        if key not in seen:
            seen.add(key)
            plan.append(("random", randomized(a, gen), randomized(k, gen)))
    a, k = calls[0]  # and one size the form was not built on (skipped if the original refuses it too)
    plan.append(("resized", randomized(a, gen, spatial_extra=1), randomized(k, gen, spatial_extra=1)))
    return plan


def _describe_checks(done: list[tuple[str, str]], skipped: int) -> str:
    counts: dict[tuple[str, str], int] = {}
    for item in done:
        counts[item] = counts.get(item, 0) + 1
    parts = [f"{kind} {shape}" + (f" (×{n})" if n > 1 else "") for (kind, shape), n in counts.items()]
    if skipped:
        parts.append(f"{skipped} empty/constant captured call(s) not counted")
    return "; ".join(parts)


def check_layer(
    old: nn.Module,
    new: nn.Module,
    calls: Sequence[Call] | None,
    rtol: float | None = None,
    strict_sizes: bool = True,
    seed: int = 0,
) -> LayerCheck:
    """Does ``new`` compute what ``old`` computes? Fails closed, and never on empty or constant data alone.

    Runs deep copies of both in float64 (falling back to float32 with a float32-sized tolerance if a
    module refuses float64) on:

    - every recorded call in ``calls`` (what the layer received in the model);
    - random data of each captured shape (so all-zero, constant or empty activations cannot make a
      wrong form pass), and random data one larger in every spatial dim (a form that only works at the
      size it was checked on fails; with ``strict_sizes=False`` it passes and ``refused_sizes`` says which
      size the original accepts and the new module refuses);
    - without ``calls``, :func:`random_inputs` of ``old``.

    The check passes when ``max |new - old| <= rtol * max(1, max |old|)`` on every input, with ``rtol`` =
    :data:`LAYER_RTOL` in float64 and :data:`E2E_TOL` in float32, and at least one comparison was made on
    non-constant data. Exceptions, shape mismatches and NaNs fail it. ``checked_on`` lists the inputs.

    >>> import pixelfold
    >>> conv = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)
    >>> check_layer(conv, pixelfold.fold(conv, 2), None).ok
    True
    >>> check_layer(conv, torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), None).ok
    False
    >>> zeros = [((torch.zeros(1, 4, 6, 6),), {})]
    >>> wrong = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)
    >>> wrong.bias = conv.bias                      # right bias, wrong weight: equal on zeros
    >>> check = check_layer(conv, wrong, zeros)
    >>> check.ok, check.checked_on
    (False, '')
    """
    plan = _plan_calls(old, calls, seed)
    if isinstance(plan, str):
        return LayerCheck(False, math.inf, math.nan, "-", plan)
    last_err: Exception | None = None
    for dtype, default_rtol in ((torch.float64, LAYER_RTOL), (torch.float32, E2E_TOL)):
        name = str(dtype).replace("torch.", "")
        tol_rel = default_rtol if rtol is None else rtol
        try:
            ma, mb = _prepared(old, dtype, True), _prepared(new, dtype, True)
        except Exception as err:  # a module that cannot be cast: try the next dtype
            last_err = err
            continue
        worst, worst_tol = 0.0, 0.0
        done: list[tuple[str, str]] = []
        refused: list[str] = []
        skipped = 0
        try:
            for kind, args, kwargs in plan:
                a_args, a_kw = cast_floats(args, dtype), cast_floats(kwargs, dtype)
                if kind == "resized":
                    try:
                        ref = _run(ma, a_args, a_kw)
                    except Exception:
                        continue  # the original refuses that size too: nothing to hold the form to
                else:
                    ref = _run(ma, a_args, a_kw)
                try:
                    out = _run(mb, a_args, a_kw)
                except Exception as err:
                    if kind == "resized":
                        if strict_sizes:
                            return LayerCheck(False, math.inf, math.nan, name,
                                              f"the new module refuses input {_shape_text(a_args)}, which the "
                                              f"original accepts ({type(err).__name__}: {err})")
                        refused.append(_shape_text(a_args))
                        continue
                    return LayerCheck(False, math.inf, math.nan, name,
                                      f"the new module raised {type(err).__name__}: {err}")
                err_, scale = output_error(ref, out)
                tol = tol_rel * max(1.0, scale if math.isfinite(scale) else 1.0)
                if not err_ <= tol:
                    shape = "outputs differ in structure or shape" if math.isinf(err_) else (
                        f"max |Δ| {err_:.3g} > tolerance {tol:.3g}")
                    return LayerCheck(False, err_, tol, name,
                                      f"not equivalent on {kind} input {_shape_text(a_args)}: {shape}")
                worst, worst_tol = max(worst, err_), max(worst_tol, tol)
                if informative((a_args, a_kw)):
                    done.append((kind, _shape_text(a_args)))
                elif kind == "captured":
                    skipped += 1
        except Exception as err:  # the *old* module refused this dtype / input: try float32
            last_err = err
            continue
        if not done:
            return LayerCheck(False, math.inf, math.nan, name,
                              "nothing could be compared: every input was empty or constant and no random input "
                              "of the same shapes ran; pass example_inputs with real data")
        return LayerCheck(True, worst, worst_tol, name, checked_on=f"{name}: {_describe_checks(done, skipped)}",
                          refused_sizes=", ".join(refused))
    return LayerCheck(False, math.inf, math.nan, "-",
                      f"could not run the original layer on its inputs ({type(last_err).__name__}: {last_err})")
