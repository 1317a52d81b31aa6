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
import statistics
import sys
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from . import layers, verify
from .errors import FoldError
from .plan import PLAN_SCHEMA, LayerPlan, Plan, _label, apply_plan
from .spec import ConvSpec

__all__ = ["tune", "apply_plan", "Plan", "LayerPlan", "candidate_forms", "PLAN_SCHEMA"]

_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PLAIN_CONVTS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# ---------------------------------------------------------------------------- candidates
def _divisor_blocks(stride: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Blocks that divide the stride: the same factor in every strided dim, plus the stride itself."""
    out: list[tuple[int, ...]] = []
    for f in range(2, max(stride) + 1):
        b = tuple(f if s % f == 0 else 1 for s in stride)
        if any(v > 1 for v in b) and b not in out:
            out.append(b)
    if any(s > 1 for s in stride) and tuple(stride) not in out:
        out.append(tuple(stride))
    return out


def candidate_forms(module: nn.Module) -> list[tuple[str, dict[str, Any]]]:
    """The exact forms pixelfold can build for ``module`` besides the original.

    >>> candidate_forms(torch.nn.Conv2d(3, 64, 7, stride=2, padding=3))
    [('fold', {'block': [2, 2]})]
    >>> [name for name, _ in candidate_forms(torch.nn.Conv2d(3, 96, 4, stride=4))]
    ['fold', 'fold', 'patch_linear']
    >>> candidate_forms(torch.nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1))
    [('subpixel', {'form': 'shared'}), ('subpixel', {'form': 'phases'})]
    """
    if type(module) in _PLAIN_CONVS:
        spec = ConvSpec.from_module(module)
        forms: list[tuple[str, dict[str, Any]]] = [("fold", {"block": list(b)}) for b in _divisor_blocks(spec.stride)]
        if (spec.kernel == spec.stride and all(lo == hi == 0 for lo, hi in spec.padding)
                and all(d == 1 for d in spec.dilation) and spec.groups == 1 and any(s > 1 for s in spec.stride)):
            forms.append(("patch_linear", {}))
        return forms
    if type(module) in _PLAIN_CONVTS and any(s > 1 for s in module.stride):
        return [("subpixel", {"form": "shared"}), ("subpixel", {"form": "phases"})]
    if layers.is_focus(module) or _is_s2d_pair(module):
        return [("merge", {})]
    return []


def _is_s2d_pair(module: nn.Module) -> bool:
    return (isinstance(module, nn.Sequential) and len(module) == 2
            and isinstance(module[0], (nn.PixelUnshuffle, layers.SpaceToDepth))
            and type(module[1]) in _PLAIN_CONVS)


def build_form(module: nn.Module, name: str, options: dict[str, Any]) -> nn.Module:
    """Build the (frozen) form ``name`` of ``module``; ``"original"`` returns the module itself."""
    if name == "original":
        return module
    if name == "fold":
        return layers.fold(module, tuple(options["block"]), options.get("order", "crd")).freeze()
    if name == "patch_linear":
        return layers.PatchLinear(module).freeze()
    if name == "subpixel":
        return layers.subpixel(module, options.get("form", "shared")).freeze()
    if name == "merge":
        return layers.merge(module)
    raise FoldError(f"unknown form {name!r}; known: original, fold, patch_linear, subpixel, merge")


# ---------------------------------------------------------------------------- measuring
def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _time_ms(fns: dict[str, Callable[[], Any]], rounds: int, min_run_time: float,
             baseline: str) -> tuple[dict[str, float], dict[str, float]]:
    """``(median ms, ratio to baseline)`` of each callable, timed back to back in ``rounds`` rounds.

    The order rotates every round; a ratio is the median of the per-round
    ratios, so a slow phase of the machine (another process, a clock change)
    lands on both sides of it rather than on one candidate.
    """
    from torch.utils import benchmark  # imported here: it loads the C++ extension machinery

    keys = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for fn in fns.values():  # warm-up
        fn()
    for r in range(rounds):
        k = r % len(keys)
        for key in keys[k:] + keys[:k]:
            t = benchmark.Timer(stmt="fn()", globals={"fn": fns[key]}, num_threads=torch.get_num_threads())
            samples[key].append(t.blocked_autorange(min_run_time=min_run_time).median * 1e3)
    times = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {k: statistics.median(a / b for a, b in zip(v, samples[baseline])) for k, v in samples.items()}
    return times, ratios


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
            if layers.is_focus(module) or _is_s2d_pair(module):
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

    Returns:
        ``(tuned_model, plan)``; the plan reapplies with :func:`apply_plan`.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.ReLU())
        >>> tuned, plan = tune(net, torch.randn(1, 3, 32, 32), rounds=1, min_run_time=0.001, progress=False)
        >>> [lp.path for lp in plan.layers], plan.layers[0].choice in ("original", "fold", "patch_linear")
        (['0'], True)
    """
    if not memory_formats:
        raise FoldError("memory_formats is empty; pass ('contiguous',) and/or 'channels_last'")
    inputs = _as_tuple(example_inputs)
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
    for i, path in enumerate(paths):
        module = work.get_submodule(path)
        if path not in captured:
            continue  # not reached by this input
        args = captured[path]
        forms = [(n, o) for n, o in candidate_forms(module) if allowed is None or n in allowed]
        if not forms:
            continue
        spec = str(ConvSpec.from_module(module)) if isinstance(module, nn.modules.conv._ConvNd) else type(module).__name__
        built: dict[str, nn.Module] = {"original": module}
        errors: dict[str, float] = {}
        options_of: dict[str, tuple[str, dict[str, Any]]] = {"original": ("original", {})}
        with torch.no_grad():
            scale = float(module(*args).abs().max()) if isinstance(args[0], torch.Tensor) else 1.0
        for name, opts in forms:
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
        if ratios[best] > 1 - margin:
            best = "original"
        name, opts = options_of[best]
        if best != "original":
            work.set_submodule(path, built[best])
        plans.append(LayerPlan(path, type(module).__name__, spec, name, opts, times, errors))
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
    if kind == "original":
        plans = [LayerPlan(lp.path, lp.type, lp.spec, "original", {}, lp.times_ms, lp.max_error) for lp in plans]
    result = variants[best_key] if not inplace else _restore_into(model, variants[best_key])
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


def _restore_into(target: nn.Module, source: nn.Module) -> nn.Module:
    """For ``inplace=True``: make ``target`` hold ``source``'s children and tensors."""
    if source is target:
        return target
    for name, child in source.named_children():
        setattr(target, name, child)
    return target
