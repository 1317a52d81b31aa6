"""Running many cases, summarising them, the known open defects, and the command line.

``python -m pixelfold.fuzz --n 10000 --seed 0 [--transform fold ...] [--nonfinite]``
prints, per transform, the cases run, the refusals by (documented) reason and
the failures by kind, then one reproducer line per failure; the exit status is
1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .cases import TRANSFORMS, Spec, draw, pads_of, source
from .check import Outcome, check_case

__all__ = ["KNOWN", "Summary", "run", "known_defect", "failure_class", "reproducer", "replay", "main"]

MAX_ATTEMPTS = 20


# ---------------------------------------------------------------------------- known open defects
def _asymmetric_same(s: Spec, o: Outcome) -> bool:
    return (s["t"] == "to_depth" and o.kind == "refused-claimed" and s["p"] == "same"
            and "asymmetric" in o.detail)


def _merge_mode(s: Spec, o: Outcome) -> bool:
    return (s["t"] == "merge" and o.kind == "refused-claimed" and s["mode"] in ("reflect", "replicate")
            and "padding_mode" in o.detail)


#: ``(name, where it is tracked, predicate(spec, outcome))``: failures the lead knows about. They still count as
#: failures (exit status 1); ``tests/test_fuzz.py`` holds one ``xfail(strict=True)`` reproducer for each.
KNOWN: list[tuple[str, str, Callable[[Spec, Outcome], bool]]] = [
    ("same-even-kernel", "issue 9 'Also': padding='same' with an even span (asymmetric) refused by to_depth "
     "(to_space and merge give pad + conv)", _asymmetric_same),
    ("nonfinite-zero-taps", "issue 9 item 5: an inf/NaN input pixel times a structural zero tap gives NaN "
     "where the original is finite (--nonfinite only)", lambda s, o: o.kind == "nonfinite-mismatch"),
    ("merge-padding-mode", "fuzz: README says merge is exact 'always', but reflect/replicate after "
     "space-to-depth pad whole blocks, which one conv cannot do; merge refuses (the claim is wrong)", _merge_mode),
]


def known_defect(spec: Spec, outcome: Outcome) -> str | None:
    """The name of the known defect a failure matches, or ``None``."""
    for name, _, pred in KNOWN:
        if pred(spec, outcome):
            return name
    return None


def failure_class(outcome: Outcome) -> str:
    """A failure's kind, with the refusal's message head (numbers elided) and the known defect it matches."""
    label = outcome.kind
    if outcome.kind == "nonfinite-mismatch":
        label += ": " + outcome.detail.split(" (")[0]
    if outcome.kind in ("refused-claimed", "crash"):
        head = outcome.detail.split(";")[0]
        head = re.sub(r"\d+", "N", head)
        while re.search(r"\([^()]*\)", head):
            head = re.sub(r"\([^()]*\)", "<>", head)
        label += ": " + head[:90]
    known = known_defect(outcome.spec, outcome)
    return label + (f" [known: {known}]" if known else "")


# ---------------------------------------------------------------------------- running
@dataclass
class Summary:
    """The counts of one transform's run."""

    transform: str
    cases: int = 0
    passed: int = 0
    beyond_claims: int = 0  # passed although not claimed by the docs
    input_independent: int = 0  # passed, but the original's output does not depend on the input
    invalid_redraws: int = 0
    refused: Counter = field(default_factory=Counter)
    failures: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)

    def failure_kinds(self) -> Counter:
        return Counter(failure_class(f) for f in self.failures)


def run(transforms: Sequence[str] | None = None, n: int = 1000, seed: int = 0, nonfinite: bool = False,
        stop_after: int | None = None) -> dict[str, Summary]:
    """Run ``n`` valid cases per transform (each case redrawn while the original rejects it).

    >>> s = run(["fold"], n=3)["fold"]
    >>> s.cases, s.failed
    (3, 0)
    """
    names = list(transforms or TRANSFORMS)
    for name in names:
        if name not in TRANSFORMS:
            raise ValueError(f"unknown transform {name!r}; one of {', '.join(TRANSFORMS)}")
    out: dict[str, Summary] = {}
    for name in names:
        summary = Summary(name)
        t0 = time.perf_counter()
        for i in range(n):
            for attempt in range(MAX_ATTEMPTS):
                spec = draw(name, seed, i, attempt)
                spec["case"] = i
                outcome = check_case(spec, nonfinite=nonfinite)
                if outcome.status != "invalid":
                    break
                summary.invalid_redraws += 1
            else:
                raise RuntimeError(f"{name}#{i}: {MAX_ATTEMPTS} draws the original rejects; last: {outcome.detail}")
            summary.cases += 1
            if outcome.status == "pass":
                summary.passed += 1
                summary.beyond_claims += outcome.beyond_claims
                summary.input_independent += outcome.input_independent
            elif outcome.status == "refused":
                summary.refused[outcome.kind] += 1
            else:
                summary.failures.append(outcome)
            if stop_after is not None and summary.failed >= stop_after:
                break
        summary.seconds = time.perf_counter() - t0
        out[name] = summary
    return out


# ---------------------------------------------------------------------------- reporting
def reproducer(outcome: Outcome, nonfinite: bool = False) -> str:
    """One line: the failure, its spec (with the seed) and the command that replays it."""
    spec = {k: v for k, v in outcome.spec.items() if k != "case"}
    flag = " --nonfinite" if nonfinite else ""
    known = known_defect(outcome.spec, outcome)
    return (f"FAIL {spec['t']}#{outcome.spec.get('case', '?')} {outcome.kind}"
            f"{f' [known: {known}]' if known else ''}: {outcome.detail} | "
            f"python -m pixelfold.fuzz{flag} --replay '{json.dumps(spec, separators=(',', ':'))}'")


def format_summaries(summaries: dict[str, Summary], nonfinite: bool = False) -> str:
    mode = "non-finite inputs (forward; NaN/inf positions must match)" if nonfinite else "forward + backward"
    lines = [f"pixelfold.fuzz: {mode}, float64, tolerance 1e-9 × max(1, max|ref|)", ""]
    head = (f"{'transform':<13}{'cases':>7}{'passed':>8}{'refused':>9}{'failed':>8}{'beyond':>8}{'x-indep':>9}"
            f"{'s':>7}")
    lines += [head, "-" * len(head)]
    for s in summaries.values():
        lines.append(f"{s.transform:<13}{s.cases:>7}{s.passed:>8}{sum(s.refused.values()):>9}{s.failed:>8}"
                     f"{s.beyond_claims:>8}{s.input_independent:>9}{s.seconds:>7.1f}")
    lines.append("(beyond: passed although the docs do not claim the spec; x-indep: passed, but the original's "
                 "output does not depend on its input, e.g. it reads padding only)")
    for s in summaries.values():
        if s.refused or s.failures:
            lines.append(f"\n{s.transform}:")
        for reason, count in s.refused.most_common():
            lines.append(f"  refused {count:>6}  {reason}")
        for kind, count in s.failure_kinds().most_common():
            lines.append(f"  FAILED  {count:>6}  {kind}")
    return "\n".join(lines)


def describe(spec: Spec) -> str:
    """The case as Python (torch + pixelfold + :mod:`pixelfold.fuzz.ops`), one statement per line."""
    setup, form = source(spec)
    return "\n".join(["import copy, torch, pixelfold", "from torch import nn",
                      "from pixelfold.fuzz.ops import s2d, d2s, tie, S2D, D2S, Focus", *setup, *form])


def replay(spec: Spec | str, nonfinite: bool = False, show: bool = True) -> Outcome:
    """Re-run one case from its spec (a dict or its JSON) and print its source and outcome."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    outcome = check_case(spec, nonfinite=nonfinite)
    if show:
        print(describe(spec))
        print(f"# padding (lo, hi) per dim: {pads_of(spec) if 'p' in spec else None}")
        print(f"# -> {outcome.status} {outcome.kind} {outcome.detail}".rstrip())
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pixelfold.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="valid cases per transform (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--transform", nargs="+", choices=list(TRANSFORMS), help="default: all")
    p.add_argument("--nonfinite", action="store_true",
                   help="put one inf/NaN pixel into each input; forward only, NaN/inf positions must match")
    p.add_argument("--replay", metavar="JSON", help="re-run one case from the spec a FAIL line printed")
    p.add_argument("--show", type=int, default=20, metavar="K", help="reproducer lines per transform (default 20)")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    torch.set_num_threads(1)
    if args.replay:
        return 0 if replay(args.replay, args.nonfinite).status in ("pass", "refused") else 1
    with warnings.catch_warnings():  # torch's "padding='same' with even kernel lengths" notice, once per shape
        warnings.simplefilter("ignore", UserWarning)
        summaries = run(args.transform, args.n, args.seed, args.nonfinite)
    print(format_summaries(summaries, args.nonfinite))
    failed = [f for s in summaries.values() for f in s.failures]
    for s in summaries.values():
        for f in s.failures[: args.show]:
            print(reproducer(f, args.nonfinite))
        if s.failed > args.show:
            print(f"... and {s.failed - args.show} more {s.transform} failures (--show {s.failed} lists them)")
    print(f"\n{sum(s.cases for s in summaries.values())} cases, {len(failed)} failed")
    if failed:
        print("known defects:\n" + "\n".join(f"  {name}: {where}" for name, where, _ in KNOWN))
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
