"""Verify each form of a case against the reference, then time the forms interleaved (pixelfold.timing)."""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Sequence

import torch

from ..timing import interleaved
from .model import Case, Context, Form, Result


# ---------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _max_err(out: Any, ref: torch.Tensor) -> tuple[float, float]:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the form returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(f"shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    diff = (out.detach().double() - ref.detach().double()).abs()
    return float(diff.max()) if diff.numel() else 0.0, float(ref.detach().double().abs().max()) if ref.numel() else 0.0


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (math.nan, math.nan)
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def _bound(f: Form) -> Callable[[], Any]:
    """``f.fn`` bound to its argument: what :func:`pixelfold.timing.interleaved` times."""
    fn, arg = f.fn, f.arg
    return lambda: fn(arg)


def _measure_case(case: Case, ctx: Context, threads: int, rounds: int, min_run_time: float,
                  log: Callable[[str], None]) -> list[Result]:
    results = [Result(case.group, case.name, f.name, f.layout, note=f.note, case_note=case.note) for f in case.forms]
    # verify (this is also the first warm-up)
    reference: torch.Tensor | None = None
    with torch.no_grad():
        for i, (f, r) in enumerate(zip(case.forms, results)):
            try:
                out = f.check() if f.check is not None else f.fn(f.arg)
                _sync(ctx.device)
                if i == 0 and f.expected is None:
                    reference = out
                ref = f.expected if f.expected is not None else reference
                if ref is None:
                    raise ValueError("no reference: the first form failed")
                r.max_err, r.ref_max = _max_err(out, ref)
                del out
            except Exception as e:  # noqa: BLE001 - reported, the suite goes on
                r.status, r.note = "error", f"{type(e).__name__}: {e}"
                log(f"    ERROR {f.name}: {r.note}")
        reference = None
        live = [i for i, r in enumerate(results) if r.status == "ok"]
        # the second warm-up, then the rounds: pixelfold.timing.interleaved (the order rotates every round)
        timing = interleaved({str(i): _bound(case.forms[i]) for i in live}, max(rounds, case.rounds or 0),
                             max(min_run_time, case.min_run_time or 0.0), threads=threads,
                             sync=lambda: _sync(ctx.device))
        per_round = {i: timing.per_round_ms[str(i)] for i in live}
        runs = {i: timing.runs_ms[str(i)] for i in live}
    first = live[0] if live and live[0] == 0 else None
    base_of_layout: dict[str, int] = {}
    for i in live:
        base_of_layout.setdefault(case.forms[i].layout, i)
    for i in live:
        r = results[i]
        r.rounds_ms = per_round[i]
        r.runs = len(runs[i])
        r.time_ms = statistics.median(per_round[i])
        q1, q3 = _quartiles(runs[i])
        r.iqr_ms = q3 - q1
        b = base_of_layout[case.forms[i].layout]
        r.ratio = statistics.median(a / c for a, c in zip(per_round[i], per_round[b]))
        if first is not None:
            r.ratio_first = statistics.median(a / c for a, c in zip(per_round[i], per_round[first]))
    return results


def paired_ratio(a: Result, b: Result) -> float:
    """Median over rounds of ``a``'s time over ``b``'s (both from one case, so timed back to back)."""
    if not a.rounds_ms or len(a.rounds_ms) != len(b.rounds_ms):
        return math.nan
    return statistics.median(x / y for x, y in zip(a.rounds_ms, b.rounds_ms))
