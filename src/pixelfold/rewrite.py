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
import itertools
import math
import sys
import time
from typing import Any, Sequence

import torch
from torch import nn

from . import verify as V
from .errors import FoldError
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
from .layerinfo import NAMED_TRANSFORMS, PROFILE_NAMES, _mac_ratio
from .planner import _Planner, _Site
from .report import LayerChange, RewriteReport
from .rules import Profile, Rule, _as_rules


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
