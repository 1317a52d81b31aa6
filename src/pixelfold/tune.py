"""Measure every exact form of each eligible layer on the user's hardware and keep the fastest.

``tune(model, example_inputs)`` finds the layers that have more than one
exact form (strided convs, patchify convs, transposed convs, space-to-depth
+ conv pairs), checks each candidate against the original on the layer's
real input (float64), times all of them interleaved in one process with
``torch.utils.benchmark`` and keeps the fastest — only where it beats the
original by more than the noise margin. The whole model is timed at the end;
if the tuned model is not faster beyond noise, the original is kept. The
choice is a JSON *plan* that :func:`apply_plan` reapplies without timing
(plans live in :mod:`pixelfold.plan`; they are re-exported here).
"""

from __future__ import annotations

import copy
import datetime
import math
import platform
import sys
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import forms, timing, verify
from .errors import FoldError
from .plan import PLAN_SCHEMA, LayerPlan, Plan, _label, apply_plan
from .spec import ConvSpec

__all__ = ["tune", "apply_plan", "Plan", "LayerPlan", "candidate_forms", "PLAN_SCHEMA"]

_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PLAIN_CONVTS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# ---------------------------------------------------------------------------- candidates
#: Forms tune times (from :data:`pixelfold.forms.FORMS`); to_depth accepts fewer input sizes, and the
#: rearrangement-only forms (reorder, rearrange, onehot) are for NPU targets, not for speed.
TUNED_FORMS = ("fold", "polyphase", "patch_linear", "subpixel", "transposed", "merge")


def candidate_forms(module: nn.Module, input_shape: Sequence[int] | None = None,
                    names: Sequence[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The exact forms tune tries for ``module`` besides the original (from the registry of forms).

    >>> candidate_forms(torch.nn.Conv2d(3, 64, 7, stride=2, padding=3))
    [('fold', {'block': (2, 2), 'order': 'crd'}), ('fold', {'block': (2, 2), 'order': 'dcr'})]
    >>> [name for name, _ in candidate_forms(torch.nn.Conv2d(3, 96, 4, stride=4))]
    ['fold', 'fold', 'fold', 'fold', 'patch_linear', 'patch_linear']
    >>> candidate_forms(torch.nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1))[-1]
    ('subpixel', {'form': 'phases'})
    >>> [o["block"] for n, o in candidate_forms(torch.nn.Conv2d(1, 1, 48, bias=False)) if o["order"] == "crd"]
    [(2, 2), (4, 4), (8, 8), (16, 16)]
    """
    allowed = [n for n in TUNED_FORMS if names is None or n in names]
    return [(c.form, c.options) for c in forms.candidates(module, names=allowed, include_original=False,
                                                          input_shape=input_shape)]


def build_form(module: nn.Module, name: str, options: dict[str, Any], freeze: bool = False) -> nn.Module:
    """Build the form ``name`` of ``module``; ``"original"`` returns the module itself.

    The form shares ``module``'s Parameters and stays trainable and checkpoint-loadable; ``freeze=True``
    bakes its weight for inference (it still follows later weight changes, see ``freeze()``).
    """
    built = forms.build(module, name, options)
    if freeze and built is not module and callable(getattr(built, "freeze", None)):
        built.freeze()
    return built


# ---------------------------------------------------------------------------- measuring
def _time_ms(fns: dict[str, Callable[[], Any]], rounds: int, min_run_time: float,
             baseline: str) -> tuple[dict[str, float], dict[str, float]]:
    """``(median ms, ratio to baseline)`` of each callable, timed interleaved (:func:`pixelfold.timing.interleaved`)."""
    t = timing.interleaved(fns, rounds, min_run_time)
    return t.medians(), t.ratios(baseline)


def cpu_name() -> str:
    """``model name`` from /proc/cpuinfo, with the family/model numbers (VMs often hide the full name)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:
                    break
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_name()}, {torch.get_num_threads()} threads"


def _progress(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


def _eligible(model: nn.Module) -> list[str]:
    """Paths of units with alternative forms, outermost first (a pair's conv is not listed again)."""
    paths: list[str] = []
    taken: list[str] = []
    for path, module in model.named_modules():
        if not path or any(path.startswith(t + ".") for t in taken):
            continue
        if candidate_forms(module):
            paths.append(path)
            if forms.unit_kind(module) in ("s2d+conv", "conv+d2s"):
                taken.append(path)
    return paths


def tune(
    model: nn.Module,
    example_inputs: Any,
    candidates: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    memory_formats: Sequence[str] = ("contiguous",),
    rounds: int = 5,
    min_run_time: float = 0.05,
    margin: float = 0.03,
    tolerance: float = 1e-8,
    inplace: bool = False,
    progress: bool = True,
    freeze: bool = False,
    target: str | None = None,
) -> tuple[nn.Module, Plan]:
    """Time every exact form of each eligible layer and keep the fastest verified one.

    Args:
        model: any ``nn.Module``; tuned in ``eval()`` mode on a copy unless ``inplace``.
        example_inputs: a tensor or tuple of tensors of the shape you will run.
        candidates: form names to try (default all: ``fold``, ``patch_linear``, ``subpixel``, ``merge``).
        device: where to measure (default: the device of ``example_inputs``).
        memory_formats: whole-model layouts to try: ``"contiguous"`` and/or ``"channels_last"``; the
            original model in the first one listed is the baseline. Layers are timed on the inputs
            they receive from ``example_inputs`` as given (pass ``channels_last`` inputs to time
            them in that layout).
        rounds, min_run_time: timing rounds per layer (forms back to back, order rotating) and seconds
            per measurement; the whole-model choice uses at least 5 rounds of 4 × ``min_run_time``.
        margin: a form replaces the original only if the median of its per-round time ratios to the
            original is below ``1 - margin``.
        tolerance: max abs error (float64, relative to the output's magnitude) for a form to count as exact.
        progress: one line per layer on stderr.
        inplace: tune ``model`` itself; its Parameter objects are kept (an optimizer made before keeps
            training it), the chosen forms share them.
        freeze: bake the chosen forms' weights for inference (``freeze()``); by default they compute
            them from the shared Parameters, so the tuned model trains and loads checkpoints like the original.
        target: an NPU target (``"ethos-u55-128"``, ``"rk3588"``, ...): the cost of a form is then that
            target's compiler's cycle estimate among the forms it runs, not the time here
            (:mod:`pixelfold.tune_target`).

    Returns:
        ``(tuned_model, plan)``; the plan reapplies with :func:`apply_plan`.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.ReLU())
        >>> tuned, plan = tune(net, torch.randn(1, 3, 32, 32), rounds=1, min_run_time=0.001, progress=False)
        >>> [lp.path for lp in plan.layers], plan.layers[0].choice in ("original", "fold", "patch_linear")
        (['0'], True)
    """
    if target is not None:
        from .tune_target import tune_for_target

        return tune_for_target(model, example_inputs, target, candidates=candidates, tolerance=tolerance,
                               inplace=inplace, progress=progress, freeze=freeze)
    if not memory_formats:
        raise FoldError("memory_formats is empty; pass ('contiguous',) and/or 'channels_last'")
    inputs = verify.as_args(example_inputs)
    dev = torch.device(device) if device is not None else next(
        (x.device for x in inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))
    inputs = tuple(x.to(dev) if isinstance(x, torch.Tensor) else x for x in inputs)
    work = model if inplace else copy.deepcopy(model)
    was_training = work.training
    work = work.to(dev).eval()
    original_model = copy.deepcopy(work)
    allowed = set(candidates) if candidates is not None else None

    paths = _eligible(work)
    captured = verify.capture_inputs(work, inputs, paths)
    plans: list[LayerPlan] = []
    swapped: list[tuple[str, nn.Module, nn.Module]] = []  # (path, original, form): forms share its Parameters
    for i, path in enumerate(paths):
        module = work.get_submodule(path)
        if path not in captured:
            continue  # not reached by this input
        args = captured[path]
        shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else None
        cands = candidate_forms(module, shape, names=allowed)
        if not cands:
            continue
        spec = str(ConvSpec.from_module(module)) if isinstance(module, nn.modules.conv._ConvNd) else type(module).__name__
        built: dict[str, nn.Module] = {"original": module}
        errors: dict[str, float] = {}
        options_of: dict[str, tuple[str, dict[str, Any]]] = {"original": ("original", {})}
        with torch.no_grad():
            scale = float(module(*args).abs().max()) if isinstance(args[0], torch.Tensor) else 1.0
        for name, opts in cands:
            label = _label(name, opts)
            try:
                cand = build_form(module, name, opts).to(dev).eval()
            except FoldError:
                continue
            err = verify.compare_modules(module, cand, args)
            errors[label] = err
            if err <= tolerance * max(1.0, scale):
                built[label] = cand
                options_of[label] = (name, opts)
        with torch.no_grad():
            times, ratios = _time_ms({k: (lambda m=m: m(*args)) for k, m in built.items()}, rounds, min_run_time,
                                     "original")
        best = min(ratios, key=ratios.__getitem__)
        if best == "original":
            reason = "the original was the fastest measured"
        elif ratios[best] > 1 - margin:
            reason = f"within noise margin {margin:.0%}: {best} measured {ratios[best]:.3f}× the original"
            best = "original"
        else:
            reason = f"{ratios[best]:.3f}× the original's time (paired per-round ratios)"
        unverified = [k for k in errors if k not in built]
        if unverified:
            reason += f"; not exact here, not timed: {', '.join(unverified)}"
        name, opts = options_of[best]
        if best != "original":
            work.set_submodule(path, built[best])
            swapped.append((path, module, built[best]))
        plans.append(LayerPlan(path, type(module).__name__, spec, name, opts, times, errors, reason))
        _progress(progress, f"[{i + 1}/{len(paths)}] {path}: {spec} -> {_label(name, opts)} "
                            f"({times['original']:.3f} -> {times[best]:.3f} ms)")

    # whole model: keep the tuned model only if it is faster beyond noise; pick the memory format
    fns: dict[str, Callable[[], Any]] = {}
    variants: dict[str, nn.Module] = {}
    for fmt in memory_formats:
        mf = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}.get(fmt)
        if mf is None:
            raise FoldError(f"memory format {fmt!r} is not 'contiguous' or 'channels_last'")
        for kind, m in (("original", original_model), ("tuned", work)):
            v = m if fmt == "contiguous" else _to_memory_format(copy.deepcopy(m), mf)
            variants[f"{kind}/{fmt}"] = v
            fns[f"{kind}/{fmt}"] = (lambda v=v: v(*inputs))
    with torch.no_grad():
        base_key = f"original/{memory_formats[0]}"
        # the whole model decides: more rounds than per layer, as one wrong call costs every layer's gain
        model_times, model_ratios = _time_ms(fns, max(rounds, 5), 4 * min_run_time, base_key)
    base = model_times[base_key]
    best_key = min(model_ratios, key=model_ratios.__getitem__)
    if model_ratios[best_key] > 1 - margin:
        best_key = base_key
    kind, fmt = best_key.split("/")
    # the result is `work` itself (the user's model when inplace): its Parameters stay the objects an
    # optimizer holds; the timing variants above were copies
    if kind == "original":
        for path, original, _ in reversed(swapped):
            work.set_submodule(path, original)
        why = (f"whole model not faster beyond the {margin:.0%} margin "
               f"({model_ratios.get(f'tuned/{fmt}', math.nan):.3f}×): kept original")
        plans = [LayerPlan(lp.path, lp.type, lp.spec, "original", {}, lp.times_ms, lp.max_error,
                           lp.reason if lp.choice == "original" else why) for lp in plans]
    elif freeze:
        for _, _, form in swapped:
            if hasattr(form, "freeze"):
                form.freeze()
    if fmt == "channels_last":
        _to_memory_format(work, torch.channels_last)
    result = work
    result.train(was_training)
    plan = Plan(
        layers=plans,
        device=_device_name(dev),
        torch_version=torch.__version__,
        memory_format=fmt,
        model_time_ms={"original": base, "tuned": model_times[best_key],
                       **{k: v for k, v in model_times.items()}},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    _progress(progress, f"model: {base:.3f} ms -> {model_times[best_key]:.3f} ms ({best_key})")
    return result, plan


def _to_memory_format(model: nn.Module, fmt: torch.memory_format) -> nn.Module:
    for m in model.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            if p.dim() in (4, 5):
                f = fmt if p.dim() == 4 else torch.channels_last_3d
                p.data = p.data.contiguous(memory_format=f)
        for name, b in list(m.named_buffers(recurse=False)):
            if b is not None and b.dim() in (4, 5):
                f = fmt if b.dim() == 4 else torch.channels_last_3d
                setattr(m, name, b.contiguous(memory_format=f))
    return model


