"""The pixelfold benchmark suite: every exact form of a layer, timed against the original.

Each *case* is a list of named *forms*: callables on the same input (in their
own memory layout) that compute the same thing, the original first. Every form
is checked against the original (max abs error) before it is timed; then all
forms of a case are timed in the same process, interleaved over several
rounds (the order rotates each round), with ``torch.utils.benchmark`` (warm-up,
blocked autorange, accelerator synchronisation). A form's time is the median
of its per-round medians, its IQR that of all its timed runs, and its ratio to
the original the median of the per-round ratios (each round's forms run back
to back, so slow phases of the machine cancel out).

Run it as ``python -m pixelfold.bench`` (or ``pixelfold bench`` once the CLI
wires it); ``--quick`` is a smoke test of a few tiny cases. Results go to
``--out`` as ``<device>.md`` (tables), ``<device>.json`` (everything, with
per-round times) and ``<device>.png`` (ratios per case).

The package: ``model`` (forms, cases, results), ``cases*`` (the groups), ``measure`` (verify, then
time with :func:`pixelfold.timing.interleaved`), ``render`` (targets, tables, chart), ``runner`` (``run``,
the command line).

>>> [g.key for g in GROUPS][:3]
['seed', 'sweep', 'patch_embed']
"""

from __future__ import annotations

from .cases import GROUPS
from .measure import paired_ratio
from .model import DTYPES, MALLOC_ENV, TUNE_MODELS, Case, Context, Focus, Form, Group, Result, SkipCase, to_layout
from .render import render_markdown, targets, write_results
from .runner import add_arguments, apply_mallopt, machine_info, main, run, run_from_args

__all__ = [
    "Form",
    "Case",
    "Result",
    "Group",
    "Context",
    "GROUPS",
    "SkipCase",
    "run",
    "main",
    "machine_info",
    "render_markdown",
    "write_results",
    "targets",
    "paired_ratio",
    "add_arguments",
    "run_from_args",
    "apply_mallopt",
    "to_layout",
    "Focus",
    "DTYPES",
    "MALLOC_ENV",
    "TUNE_MODELS",
]
