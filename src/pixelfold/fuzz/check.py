"""Run one fuzz case: build the original and pixelfold's form, compare forward and backward in float64.

The original is PyTorch's own layer (``nn.ConvNd``, ``nn.ConvTransposeNd``,
``nn.PixelShuffle``/``nn.PixelUnshuffle``, or the slicing rearrangements of
:mod:`pixelfold.fuzz.ops`). Outputs, the gradient w.r.t. the input and the
gradients w.r.t. the original weight and bias must agree within
``TOL * max(1, max|reference|)``. Forms with fresh parameters (``to_space``,
``to_depth``, ``merge``, ``transposed``) have their weight gradient pulled back
to the original weight through the transform's own gather map (checked to
reproduce the form's weight exactly first): ``Mᵀ ∂L/∂W' = ∂L/∂W``.

>>> from pixelfold.fuzz.cases import draw
>>> check_case(draw("polyphase", seed=0, index=0)).status in ("pass", "refused")
True
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

import pixelfold
from pixelfold.errors import FoldError

from . import ops
from .cases import SHARED_PARAMS, Spec, outside, source

__all__ = ["TOL", "Outcome", "check_case", "namespace"]

TOL = 1e-9


@dataclass
class Outcome:
    """What one case gave: ``status`` is ``pass``, ``refused``, ``fail`` or ``invalid`` (the original rejects it)."""

    status: str
    kind: str = ""  # refusal reason, or failure kind (wrong-forward, wrong-grad-input, crash, refused-claimed, ...)
    detail: str = ""
    beyond_claims: bool = False  # passed although the docs do not claim the spec
    spec: Spec = field(default_factory=dict)
    input_independent: bool = False  # the original's output does not depend on the input (reads padding only)


def namespace() -> dict[str, Any]:
    """The names a case's source may use."""
    ns: dict[str, Any] = dict(torch=torch, nn=nn, copy=copy, pixelfold=pixelfold)
    ns.update({name: getattr(ops, name) for name in ops.__all__})
    return ns


def _err(actual: torch.Tensor | None, ref: torch.Tensor | None) -> tuple[bool, str]:
    """``(ok, detail)``: same shape, finite, ``max|Δ| <= TOL * max(1, max|ref|)``."""
    if ref is None and actual is None:
        return True, ""
    if actual is None or ref is None:
        return False, f"gradient is {'missing' if actual is None else 'present'}, reference's is not"
    if tuple(actual.shape) != tuple(ref.shape):
        return False, f"shape {tuple(actual.shape)} != original's {tuple(ref.shape)}"
    if ref.numel() == 0:
        return True, ""
    scale = max(1.0, float(ref.abs().max()))
    if not bool(torch.isfinite(actual).all()):
        return False, f"{int((~torch.isfinite(actual)).sum())} non-finite values (original's are finite)"
    err = float((actual.double() - ref).abs().max())
    return err <= TOL * scale, f"max|Δ| {err:.3g} (scale {scale:.3g})"


def _nonfinite_match(actual: torch.Tensor, ref: torch.Tensor) -> tuple[bool, str]:
    """NaN, +inf and -inf at the same positions, finite values within tolerance; the detail starts with a category."""
    if tuple(actual.shape) != tuple(ref.shape):
        return False, f"shape {tuple(actual.shape)} != original's {tuple(ref.shape)}"
    bad, cats = [], []
    for name, f in (("NaN", torch.isnan), ("+inf", lambda t: t == math.inf), ("-inf", lambda t: t == -math.inf)):
        a, r = f(actual), f(ref)
        if not torch.equal(a, r):
            extra, missing = int((a & ~r).sum()), int((r & ~a).sum())
            bad.append(f"{name}: {extra} extra, {missing} missing of {int(r.sum())}")
            cats += (["extra non-finite"] if extra else []) + (["missing non-finite"] if missing else [])
    fin = torch.isfinite(actual) & torch.isfinite(ref)
    if fin.any():
        ok, d = _err(actual[fin], ref[fin])
        if not ok:
            bad.append("finite values: " + d)
            cats.append("finite values differ")
    if not bad:
        return True, f"{int((~torch.isfinite(ref)).sum())} non-finite positions match"
    return False, " + ".join(dict.fromkeys(cats)) + " (" + "; ".join(bad) + ")"


def _weight_map(ns: dict[str, Any], form_src: list[str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The gather map from the original conv weight to a fresh-parameter form's weight, found by probing.

    The form is built once more from a copy of the original whose weight holds the index of each entry
    (1, 2, ...): the form's weight then says which original entry every one of its entries is (0: a zero
    tap). Transform-agnostic, so grouped merges and trimmed transposed convs need no map of their own; the
    caller checks the map reproduces the form's real weight.
    """
    memo: dict[int, Any] = {}
    orig = copy.deepcopy(ns["orig"], memo)
    conv = memo.get(id(ns["conv"])) or copy.deepcopy(ns["conv"])
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1, conv.weight.numel() + 1, dtype=torch.float64).view_as(conv.weight))
        if conv.bias is not None:
            conv.bias.zero_()
    probe_ns = dict(ns, conv=conv, orig=orig)
    exec("\n".join(line for line in form_src if not line.startswith("fwd = ")), probe_ns)
    index = _conv_of(probe_ns["form"]).weight.detach().round().long()
    return lambda w: torch.cat([w.new_zeros(1), w.reshape(-1)])[index]


def _conv_of(form: nn.Module) -> nn.Module:
    """The conv inside a fresh-parameter form (to_space/merge of an asymmetric 'same' conv: (pad, conv))."""
    if isinstance(form, nn.Sequential):
        return next(m for m in form if isinstance(m, nn.modules.conv._ConvNd))
    return form


def _refusal(spec: Spec, err: Exception, where: str) -> Outcome:
    why = outside(spec)
    if not isinstance(err, FoldError):
        return Outcome("fail", "crash", f"{where}: {type(err).__name__}: {err}"[:400], spec=spec)
    if not str(err).strip():
        return Outcome("fail", "bare-error", f"{where}: FoldError without a message", spec=spec)
    if why:
        return Outcome("refused", why[0], str(err)[:200], spec=spec)
    return Outcome("fail", "refused-claimed", f"{where}: {err}"[:400], spec=spec)


def _nonfinite(spec: Spec) -> str:
    """A source line putting one inf/NaN pixel into ``x`` (chosen from the spec's seed)."""
    rng = random.Random(f"nonfinite/{spec['seed']}")
    channels = spec["C"] if spec["t"] == "merge" else spec["cin"]
    idx = [rng.randrange(spec["n"]), rng.randrange(channels)] + [rng.randrange(L) for L in spec["size"]]
    value = rng.choice(["float('inf')", "float('-inf')", "float('nan')"])
    return f"x[{', '.join(map(str, idx))}] = {value}"


def check_case(spec: Spec, nonfinite: bool = False) -> Outcome:
    """Build and compare one case (forward only, non-finite positions compared, when ``nonfinite``)."""
    setup, form_src = source(spec)
    if nonfinite:
        setup.insert(next(i for i, line in enumerate(setup) if line.startswith("x = ")) + 1, _nonfinite(spec))
    ns = namespace()
    with torch.random.fork_rng(devices=[]):
        try:
            exec("\n".join(setup), ns)
            x_ref = ns["x"].clone().requires_grad_(not nonfinite)
            y_ref = ns["ref_fwd"](x_ref)
        except Exception as err:  # the original rejects the spec: not a case
            return Outcome("invalid", type(err).__name__, str(err)[:200], spec=spec)
        try:
            exec("\n".join(form_src), ns)
        except Exception as err:
            return _refusal(spec, err, "build")
        ns["__form_src__"] = form_src
        x = ns["x"].clone().requires_grad_(not nonfinite)
        try:
            y = ns["fwd"](x)
        except Exception as err:
            return _refusal(spec, err, "forward")
        beyond = bool(outside(spec))
        if nonfinite:
            ok, detail = _nonfinite_match(y.detach(), y_ref.detach())
            return Outcome("pass" if ok else "fail", "" if ok else "nonfinite-mismatch", detail, beyond, spec)
        ok, detail = _err(y.detach(), y_ref.detach())
        if not ok:
            return Outcome("fail", "wrong-forward", detail, beyond, spec)
        g = torch.randn(y_ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(spec["seed"] + 1))
        (y_ref * g).sum().backward()
        try:
            (y * g).sum().backward()
        except Exception as err:
            return Outcome("fail", "crash", f"backward: {type(err).__name__}: {err}"[:400], beyond, spec)
        return _compare_grads(spec, ns, x, x_ref, beyond)


def _compare_grads(spec: Spec, ns: dict[str, Any], x: torch.Tensor, x_ref: torch.Tensor, beyond: bool) -> Outcome:
    out = _grad_outcome(spec, ns, x, x_ref, beyond)
    out.input_independent = x_ref.grad is None or not bool(x_ref.grad.ne(0).any())
    return out


def _grad_outcome(spec: Spec, ns: dict[str, Any], x: torch.Tensor, x_ref: torch.Tensor, beyond: bool) -> Outcome:
    ok, detail = _err(x.grad, x_ref.grad)
    if not ok:
        return Outcome("fail", "wrong-grad-input", detail, beyond, spec)
    conv, form = ns["conv"], ns["form"]
    if spec["t"] in SHARED_PARAMS:
        src = ns["src"]
        if form.weight is not src.weight or form.bias is not src.bias:
            return Outcome("fail", "params-not-shared", "the form does not keep the original Parameters", beyond, spec)
        w_grad, b_grad = src.weight.grad, None if src.bias is None else src.bias.grad
    else:
        form = _conv_of(form)
        w0 = conv.weight.detach().clone().requires_grad_()
        w_form = _weight_map(ns, ns["__form_src__"])(w0)
        if form.weight.grad is None or not torch.equal(w_form.detach(), form.weight.detach()):
            return Outcome("fail", "weight-map", "the form's weight is not the transform's map of the original's "
                           "(or got no gradient)", beyond, spec)
        (w_form * form.weight.grad).sum().backward()
        w_grad = w0.grad
        b_grad = None if form.bias is None else form.bias.grad
    ok, detail = _err(w_grad, conv.weight.grad)
    if not ok:
        return Outcome("fail", "wrong-grad-weight", detail, beyond, spec)
    b_ref = None if conv.bias is None else conv.bias.grad
    if spec["t"] == "transposed" and b_ref is not None:  # one bias per channel, tied over the phases
        R = math.prod(spec["block"])
        b_ref = b_ref.view(-1, R).sum(1) if spec["order"] == "crd" else b_ref.view(R, -1).sum(0)
    ok, detail = _err(b_grad, b_ref)
    if not ok:
        return Outcome("fail", "wrong-grad-bias", detail, beyond, spec)
    return Outcome("pass", "", "", beyond, spec)
