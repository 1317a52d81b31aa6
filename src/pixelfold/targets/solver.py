"""The solver: keep what a target runs, replace what it rejects by the cheapest exact form it runs.

For one unit (a conv, a transposed conv, a pair, a lone rearrangement) :func:`solve` lists every exact form
(:func:`pixelfold.forms.candidates`), expands pixelfold's rearrangements into the operators the target's
lowering emits (:func:`pixelfold.forms.lowered`), and checks every operator against the target's
constraints. The original is kept if the target runs it; otherwise the accepted form with the fewest MACs
(then the fewest operators) wins; if none is accepted the original is kept and the decision says which
constraint each form breaks, in the target's own words.

>>> import torch
>>> from pixelfold import targets
>>> d = solve(torch.nn.Conv2d(3, 16, 7, stride=4, padding=3), targets.get("ethos-u55-128"))
>>> d.changed, d.candidate.label
(True, 'fold(block=2×2,order=dcr)')
>>> print(d.reason)
ethos-u55-128 rejects Conv2d 3→16 k7×7 s4×4 p3×3: CONV_2D: Stride>3 is only supported IF (dilation = 1 AND padding = VALID) (Vela 5.2 crashes on the PAD + CONV_2D a padded one becomes: 'Non-passthrough operation (Conv2D) could not run on NPU'); fold(block=2×2,order=dcr) runs on it
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from .. import forms
from ..errors import FoldError
from .model import Target, Violation

__all__ = ["Decision", "solve", "expand", "macs_of"]


@dataclass
class Decision:
    """What the solver chose for one unit, and why."""

    candidate: forms.Candidate | None
    reason: str
    original_violations: list[Violation] = field(default_factory=list)
    rejected: dict[str, list[str]] = field(default_factory=dict)  # form label -> what the target says about it

    @property
    def changed(self) -> bool:
        return self.candidate is not None


def expand(ops: Sequence[forms.Op], target: Target) -> list[forms.Op]:
    """The operators as the target's compiler sees them: pixelfold's rearrangements in the target's lowering."""
    torch_style = getattr(target, "torch_lowering", "native")
    return [low for op in ops for low in forms.lowered(op, target.lowering, torch_style)]


def macs_of(module: nn.Module, input_shape: Sequence[int] | None) -> float:
    """Multiply-accumulates of one forward of ``module`` on ``input_shape`` (FLOPs / 2, counted by torch)."""
    from torch.utils.flop_counter import FlopCounterMode

    if input_shape is None:
        return math.nan
    x = torch.randn(*input_shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.eval()(x)
    return counter.get_total_flops() / 2


def _messages(violations: Sequence[Violation]) -> list[str]:
    return list(dict.fromkeys(f"{v.op}: {v.message}" for v in violations))


def solve(module: nn.Module, target: Target, input_shape: Sequence[int] | None = None,
          names: Sequence[str] | None = None,
          cost: Callable[[nn.Module, forms.Candidate], float] | None = None) -> Decision:
    """The decision for one unit on ``target`` (see the module docstring).

    ``input_shape`` is the unit's input (for MACs and for the channels of a lone rearrangement); ``names``
    restricts the forms tried; ``cost(module, candidate)`` replaces the MAC count (e.g. a compiler's cycle
    estimate). Candidates that cannot be built for this layer (FoldError) are skipped.
    """
    cands = forms.candidates(module, names=names, input_shape=input_shape)
    if not cands:
        return Decision(None, f"{type(module).__name__} is not a unit pixelfold rewrites")
    original, others = cands[0], cands[1:]
    bad = target.rejects(expand(original.ops, target))
    if not bad:
        return Decision(None, f"{target.name} runs it as it is")
    rejected: dict[str, list[str]] = {}
    accepted: list[forms.Candidate] = []
    for cand in others:
        problems = target.rejects(expand(cand.ops, target))
        if problems:
            rejected[cand.label] = _messages(problems)
        else:
            accepted.append(cand)
    said = "; ".join(_messages(bad))
    if not accepted:
        tried = "; ".join(f"{label}: {msgs[0]}" for label, msgs in list(rejected.items())[:4])
        return Decision(None, f"{target.name} rejects {said}; no exact form runs on it"
                        + (f" ({tried})" if tried else ""), bad, rejected)
    scored: list[tuple[float, int, int, forms.Candidate]] = []
    for i, cand in enumerate(accepted):
        try:
            built = cand.build(module)
        except FoldError as err:
            rejected[cand.label] = [str(err)]
            continue
        c = cost(module, cand) if cost is not None else macs_of(built, input_shape)
        scored.append((c if math.isfinite(c) else math.inf, len(expand(cand.ops, target)), i, cand))
    if not scored:
        return Decision(None, f"{target.name} rejects {said}; no exact form could be built", bad, rejected)
    best = min(scored, key=lambda t: t[:3])[3]
    return Decision(best, f"{target.name} rejects {said}; {best.label} runs on it", bad, rejected)
