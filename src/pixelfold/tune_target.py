"""Tune for an NPU: the cost of a form is the vendor compiler's cycle estimate, among the forms the target runs.

``pixelfold.tune(model, x, target="ethos-u55-128")`` lands here. For each unit the solver's constraint data
(:mod:`pixelfold.targets`) says which exact forms the target accepts; each accepted form is compiled *alone,
in context* (on the input shape the layer receives in the model) by the target's own compiler
(:func:`pixelfold.judges.judge_layer`: Vela for Ethos-U, rknn-toolkit2 for Rockchip) and costs its estimated
cycles; a form that leaves any operator on the CPU costs infinity. The original stays unless a form is
cheaper: a layer the target already runs never gets more cycles. Compilations are cached by the exported
layer's content, so a model with repeated layers compiles each spec once.

Without the judge environment (``make npu-env``) the cost falls back to the solver's MAC count, and the plan
says so (``cost``).
"""

from __future__ import annotations

import copy
import datetime
import math
import sys
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import forms, verify
from .errors import FoldError

__all__ = ["tune_for_target", "CompilerCost", "verdict_cost"]


def _progress(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


class CompilerCost:
    """Cycle estimates of the target's compiler for single layers, cached per (layer spec, input shape, target).

    :meth:`prefetch` compiles many layers in one compiler run (a judge environment takes tens of seconds to
    start); a spec already seen in this tuning run, or in the judge cache on disk, is not compiled again.
    ``compiled`` counts the distinct specs judged, ``hits`` the lookups answered from the memo.
    """

    def __init__(self, target: str) -> None:
        from .judges import env_available, judge_layers, layer_key

        self.target = target
        self.available = env_available(target)
        self._judge_layers = judge_layers
        self._key = layer_key
        self._memo: dict[str, Any] = {}
        self.compiled = 0
        self.hits = 0

    def prefetch(self, layers: Sequence[tuple[nn.Module, Sequence[int]]]) -> None:
        """Judge every layer not judged yet, all in one compiler run."""
        todo: dict[str, tuple[nn.Module, Sequence[int]]] = {}
        for m, s in layers:
            k = self._key(m, s)
            if k not in self._memo:
                todo.setdefault(k, (m, s))
        if todo:
            for k, j in zip(todo, self._judge_layers(list(todo.values()), self.target)):
                self._memo[k] = j
            self.compiled += len(todo)

    def __call__(self, module: nn.Module, input_shape: Sequence[int]) -> tuple[float, str]:
        """``(cycles, what the compiler said)``; ``inf`` when any operator falls back to the CPU or it crashed."""
        k = self._key(module, input_shape)
        if k in self._memo:
            self.hits += 1
        else:
            self.prefetch([(module, input_shape)])
        return verdict_cost(self._memo[k])


def verdict_cost(j: Any) -> tuple[float, str]:
    """A judgement as a cost: its NPU cycles, or ``inf`` (with the compiler's words) when it is not all-NPU."""
    if j.crashed:
        return math.inf, f"the compiler failed: {j.message[:200]}"
    if j.cpu_ops:
        reasons = "; ".join(f"{op}: {r[0]}" for op, r in j.cpu_reasons.items()) or ", ".join(j.cpu_ops)
        return math.inf, f"CPU ops: {reasons}"
    cycles = j.npu_cycles if j.npu_cycles is not None else j.total_cycles
    if cycles is None:
        return math.inf, "the compiler gave no cycle estimate"
    return float(cycles), f"{cycles} cycles, all on the NPU"


def tune_for_target(
    model: nn.Module,
    example_inputs: Any,
    target: str,
    candidates: Sequence[str] | None = None,
    tolerance: float = 1e-8,
    inplace: bool = False,
    progress: bool = True,
    freeze: bool = False,
    cost: Callable[[nn.Module, Sequence[int]], tuple[float, str]] | None = None,
) -> tuple[nn.Module, Any]:
    """Tune ``model`` for ``target`` by its compiler's cycle estimates; returns ``(model, plan)``.

    ``cost(module, input_shape) -> (cycles, note)`` replaces the compiler (tests use it). See the module
    docstring for the method; the plan's ``cost`` field names the source of the numbers.
    """
    from . import targets
    from .plan import LayerPlan, Plan
    from .targets.solver import expand
    from .tune import TUNED_FORMS, _eligible, _label

    t = targets.get(target)
    if cost is None:
        compiler = CompilerCost(t.name) if t.judged else None
        if compiler is not None and compiler.available:
            cost, source = compiler, f"{t.judge} cycle estimates ({t.name})"
        else:
            why = ("its judge environment is missing (build it with make npu-env)" if compiler is not None
                   else "no compiler judges it here (data-only target)")
            _progress(progress, f"tune: {t.name}: {why}; choosing by the target's constraints and MACs instead")
            cost, source = None, f"MACs among the forms {t.name}'s constraints accept ({why})"
    else:
        source = f"custom cost for {t.name}"
    inputs = verify.as_args(example_inputs)
    work = model if inplace else copy.deepcopy(model)
    was_training = work.training
    work.eval()
    paths = _eligible(work)
    captured = verify.capture_inputs(work, inputs, paths)
    allowed = [n for n in TUNED_FORMS if candidates is None or n in candidates] + ["reorder", "rearrange"]
    plans: list[LayerPlan] = []
    units = []  # pass 1: every layer's candidates, built and verified
    for i, path in enumerate(paths):
        if path not in captured:
            continue
        module = work.get_submodule(path)
        args = captured[path]
        shape = tuple(args[0].shape)
        cands = forms.candidates(module, names=allowed, input_shape=shape)
        spec = str(forms.unit_spec(module) or type(module).__name__)
        times: dict[str, float] = {}
        notes: dict[str, str] = {}
        errors: dict[str, float] = {}
        ready: list[tuple[str, forms.Candidate, nn.Module]] = []
        for cand in cands:
            label = _label(cand.form, cand.options)
            problems = t.rejects(expand(cand.ops, t))
            if problems:
                times[label], notes[label] = math.inf, f"{t.name} rejects {problems[0]}"
                continue
            try:
                built = cand.build(module)
            except FoldError as err:
                notes[label] = str(err)
                continue
            if cand.form != "original":
                err = verify.compare_modules(module, built, args)
                errors[label] = err
                with torch.no_grad():
                    scale = float(module(*args).abs().max())
                if not err <= tolerance * max(1.0, scale):
                    notes[label] = f"not exact here (max |Δ| {err:.3g})"
                    continue
            ready.append((label, cand, built))
        units.append((i, path, module, shape, spec, times, notes, errors, ready))
    if hasattr(cost, "prefetch"):  # one compiler run for every distinct layer spec of the model
        cost.prefetch([(built, u[3]) for u in units for _, _, built in u[8]])  # type: ignore[union-attr]
    for i, path, module, shape, spec, times, notes, errors, ready in units:  # pass 2: cost and choose
        best: tuple[float, forms.Candidate, nn.Module] | None = None
        for label, cand, built in ready:
            if cost is not None:
                c, note = cost(built, shape)
            else:
                from .targets.solver import macs_of

                c, note = macs_of(built, shape), "MACs"
            times[label], notes[label] = c, note
            if best is None or c < best[0] or (c == best[0] and cand.form == "original"):
                best = (c, cand, built)
        choice, opts, reason = "original", {}, "the original is the cheapest form the target runs"
        if best is not None and best[1].form != "original" and math.isfinite(best[0]):
            orig = times.get("original", math.inf)
            if best[0] < orig:
                choice, opts = best[1].form, dict(best[1].options)
                work.set_submodule(path, best[2].freeze() if freeze and hasattr(best[2], "freeze") else best[2])
                reason = (f"{_label(choice, opts)}: {best[0]:.0f} vs original "
                          f"{'not on the NPU' if not math.isfinite(orig) else f'{orig:.0f}'}")
        elif best is None or not math.isfinite(best[0]):
            reason = f"no exact form runs entirely on {t.name}"
        plans.append(LayerPlan(path, type(module).__name__, spec, choice, opts, times, errors,
                               **_reason_kw(LayerPlan, reason)))
        _progress(progress, f"[{i + 1}/{len(paths)}] {path}: {spec} -> {_label(choice, opts)} ({reason})")
    work.train(was_training)
    plan = Plan(layers=plans, device=f"{t.name} ({source})", torch_version=torch.__version__,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                **_reason_kw(Plan, source, field="cost"))
    return work, plan


def _reason_kw(cls: type, text: str, field: str = "reason") -> dict[str, str]:
    """``{field: text}`` if the plan dataclass has that (optional) field."""
    return {field: text} if field in getattr(cls, "__dataclass_fields__", {}) else {}
