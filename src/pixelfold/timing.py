"""How pixelfold times things: one routine for ``tune``, ``explain`` and the benchmark suite.

Forms of the same computation are timed *interleaved*: every round runs each callable once (one
``torch.utils.benchmark`` blocked autorange), the order rotating from round to round, so a slow phase of
the machine (another process, a clock change) lands on every form rather than on one. A form's time is
the median of its per-round medians; its ratio to a baseline is the median of the per-round ratios (the
forms of a round ran back to back). Nothing here asserts a speed: callers decide what to do with ratios.

>>> t = interleaved({"a": lambda: sum(range(100)), "b": lambda: sum(range(200))}, rounds=3, min_run_time=0.001)
>>> sorted(t.per_round_ms), len(t.per_round_ms["a"]), t.ratio("a", "a")
(['a', 'b'], 3, 1.0)
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Timing", "interleaved", "benchmark_module"]


def benchmark_module() -> Any:
    """``torch.utils.benchmark``, imported without the "No CUDA runtime is found" warning on CPU-only hosts."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        logger.setLevel(level)
    return benchmark


@dataclass
class Timing:
    """Per-round medians and every timed run (ms) of each callable of one :func:`interleaved` call."""

    per_round_ms: dict[str, list[float]] = field(default_factory=dict)
    runs_ms: dict[str, list[float]] = field(default_factory=dict)

    def median(self, key: str) -> float:
        """Median over rounds of the per-round median (ms)."""
        return statistics.median(self.per_round_ms[key])

    def ratio(self, key: str, baseline: str) -> float:
        """Median over rounds of ``key``'s time over ``baseline``'s (timed back to back)."""
        return statistics.median(a / b for a, b in zip(self.per_round_ms[key], self.per_round_ms[baseline]))

    def spread(self, key: str) -> float:
        """Interquartile range of all runs over the median (a noise figure)."""
        runs = self.runs_ms[key]
        if len(runs) < 2:
            return 0.0
        q = statistics.quantiles(runs, n=4)
        return (q[2] - q[0]) / statistics.median(runs)

    def medians(self) -> dict[str, float]:
        return {k: self.median(k) for k in self.per_round_ms}

    def ratios(self, baseline: str) -> dict[str, float]:
        return {k: self.ratio(k, baseline) for k in self.per_round_ms}


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, min_run_time: float, *,
                threads: int | None = None, sync: Callable[[], None] | None = None, warmup: bool = True) -> Timing:
    """Time each callable in ``fns``, ``rounds`` rounds of about ``min_run_time`` s each, the order rotating.

    ``sync`` runs after every warm-up call (e.g. ``torch.cuda.synchronize``; ``torch.utils.benchmark``
    synchronises the timed runs itself).
    """
    benchmark = benchmark_module()
    keys = list(fns)
    out = Timing({k: [] for k in keys}, {k: [] for k in keys})
    n_threads = threads if threads is not None else torch.get_num_threads()
    if warmup:
        for fn in fns.values():
            fn()
            if sync is not None:
                sync()
    for r in range(rounds):
        k = r % max(1, len(keys))
        for key in keys[k:] + keys[:k]:
            timer = benchmark.Timer(stmt="fn()", globals={"fn": fns[key]}, num_threads=n_threads)
            m = timer.blocked_autorange(min_run_time=min_run_time)
            out.per_round_ms[key].append(m.median * 1e3)
            out.runs_ms[key].extend(t * 1e3 for t in m.times)
    return out
