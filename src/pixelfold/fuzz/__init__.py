"""Fuzz harness: random valid specs per transform, forward and backward in float64, against PyTorch's own layers.

For ``to_space``, ``to_depth``, ``fold``, ``polyphase``, ``subpixel`` (both
forms), ``transposed``, ``merge`` and ``PatchLinear``, in every channel order
each takes, it draws specs (1–3-D, rectangular blocks, kernel, stride,
padding incl. asymmetric ``"same"`` and ``"valid"``, every padding mode,
dilation, groups, bias, odd sizes, batch 1–3), builds the original layer with
random float64 weights and the pixelfold form, and compares outputs and
gradients (input, weight, bias). Specs outside what the docs claim must raise
:class:`pixelfold.FoldError` with a message; refusing a claimed spec is a failure.

``make fuzz N=10000`` or ``python -m pixelfold.fuzz --n 10000 --seed 0 [--transform fold ...] [--nonfinite]``.

>>> from pixelfold.fuzz import run
>>> summary = run(["subpixel"], n=4, seed=1)["subpixel"]
>>> summary.cases, summary.failed
(4, 0)
"""

from .cases import ORDERS, TRANSFORMS, draw, outside, source
from .check import TOL, Outcome, check_case
from .runner import KNOWN, Summary, describe, format_summaries, known_defect, main, replay, reproducer, run

__all__ = ["TRANSFORMS", "ORDERS", "TOL", "KNOWN", "Outcome", "Summary", "draw", "outside", "source", "check_case",
           "run", "replay", "reproducer", "describe", "format_summaries", "known_defect", "main"]
