"""The NPU suite (``make npu``): every model of :mod:`pixelfold.zoo` on every judged target, before and after
``pixelfold.rewrite(model, target)``, placed and costed by the vendor's own compiler.

For each model × target: the compiler's verdict on the original (operators on the NPU / on the CPU with the
compiler's reasons, estimated cycles, or its crash), what the rewrite changed (each form and the constraint that
made it necessary, or the constraint no exact form meets), the compiler's verdict on the rewritten model, and the
rewrite's end-to-end float64 error. Operators are split into pixelfold's own (convolutions and the
rearrangements, pads, slices and concatenations its forms emit) and the rest (activations, norms, softmax ...):
the suite's claim is about the former. Results go to ``npu.md`` and ``npu.json``.

``python -m pixelfold.npu_suite --out benchmarks/results [--models ...] [--targets ...]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import FoldError

__all__ = ["Row", "run", "render_markdown", "main", "verdicts", "KNOWN_FAILURES", "OUR_OPS"]

#: Operator types (TFLite builtins for Vela, RKNN op types) that pixelfold's forms emit or replace.
OUR_OPS = frozenset({
    "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D", "FULLY_CONNECTED", "BATCH_MATMUL", "PAD",
    "RESHAPE", "TRANSPOSE", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE", "STRIDED_SLICE", "SLICE", "CONCATENATION", "GATHER",
    "Conv", "ConvTranspose", "exConvTransposePad", "DepthToSpace", "SpaceToDepth", "Reshape", "Transpose", "Gather",
    "Pad", "Slice", "Concat", "exwindow3", "MatMul", "Gemm",
})


#: The convolution-family operators among :data:`OUR_OPS` (what an unchanged model must not leave on the CPU).
CONV_FAMILY = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D", "Conv", "ConvTranspose",
                         "exConvTransposePad", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE", "DepthToSpace", "SpaceToDepth"})


@dataclass
class Verdict:
    """One compiler verdict, reduced to what the table shows."""

    npu_ops: int = 0
    cpu_ops: list[str] = field(default_factory=list)
    cycles: int | None = None
    crashed: bool = False
    message: str = ""
    reasons: dict[str, list[str]] = field(default_factory=dict)
    float_tflite_error: float | None = None  # Vela only: relative max error of the float TFLite vs PyTorch

    @classmethod
    def of(cls, j: Any) -> "Verdict":
        check = (getattr(j, "extra", None) or {}).get("tflite_check") or {}
        return cls(len(j.npu_ops), list(j.cpu_ops or []), j.npu_cycles if j.npu_cycles is not None else j.total_cycles,
                   bool(j.crashed), j.message[:500], {k: v[:2] for k, v in j.cpu_reasons.items()},
                   check.get("float_error"))

    @property
    def ours_on_cpu(self) -> list[str]:
        return sorted({op for op in self.cpu_ops if op in OUR_OPS})

    def cell(self) -> str:
        if self.crashed:
            return "**crash**"
        kc = "" if self.cycles is None else f" {self.cycles / 1e3:.1f}k"
        if not self.cpu_ops:
            return f"NPU{kc}"
        return f"CPU: {', '.join(sorted(set(self.cpu_ops)))}{kc}"


@dataclass
class Row:
    """One model on one target."""

    model: str
    target: str
    before: Verdict
    after: Verdict | None
    changed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    e2e_error: float | None = None
    rewrite_ms: float = 0.0

    @property
    def outcome(self) -> str:
        """How the rewrite did, against the suite's claim (see the module docstring)."""
        if not self.changed:
            if not self.before.crashed and not self.before.ours_on_cpu:
                return "unchanged: already on the NPU"
            if self.before.crashed:
                return "unchanged; the compiler failed: " + self.before.message[:120]
            return "unchanged: " + (self.kept[0] if self.kept else "no constraint broken that pixelfold can see")
        a = self.after
        if a is None or a.crashed:
            return "rewritten, but the compiler failed: " + (a.message[:120] if a else "not judged")
        if a.ours_on_cpu:
            return f"rewritten; still on the CPU: {', '.join(a.ours_on_cpu)}"
        if self.slower:
            return f"rewritten; more cycles than the original ran on the NPU ({self.before.cycles} → {a.cycles})"
        return "rewritten: every conv and rearrangement on the NPU"

    @property
    def slower(self) -> bool:
        """The original ran pixelfold's ops on the NPU, and the rewrite costs more estimated cycles."""
        b, a = self.before, self.after
        return (bool(self.changed) and a is not None and not b.crashed and not b.ours_on_cpu
                and b.cycles is not None and a.cycles is not None and a.cycles > b.cycles)

    @property
    def failed(self) -> bool:
        """Against issue 10's "Done when": a crash (before and unchanged, or after), a failed rewrite, one of
        pixelfold's operators left on the CPU after a rewrite, or a rewrite that costs more cycles.

        >>> ok, crash = Verdict(3, [], 100), Verdict(crashed=True, message="RuntimeError: x")
        >>> Row("m", "t", crash, ok, changed=["0: fold"]).failed, Row("m", "t", crash, crash).failed
        (False, True)
        >>> Row("m", "t", ok, Verdict(3, [], 150), changed=["0: fold"]).failed
        True
        >>> cpu, flat = Verdict(2, ["TRANSPOSE_CONV"], 90), Verdict(2, ["Reshape"], 90)
        >>> Row("m", "t", cpu, cpu).failed, Row("m", "t", cpu, cpu, kept=["up: stride 3 > 2"]).failed
        (True, False)
        >>> Row("m", "t", flat, flat).failed  # the compiler's own Reshape of the model's flatten
        False
        """
        if self.changed:
            a = self.after
            return a is None or a.crashed or bool(a.ours_on_cpu) or self.slower or any("FAILED" in k for k in self.kept)
        # a conv the compiler leaves on the CPU with no constraint named: the target data missed one (a Reshape
        # the compiler itself made from the model's flatten or 1-D conv is not pixelfold's)
        unexplained = bool(set(self.before.ours_on_cpu) & CONV_FAMILY) and not self.kept
        return self.before.crashed or unexplained or any("FAILED" in k for k in self.kept)


def _judge_all(cases: dict[tuple[str, str], tuple[torch.nn.Module, torch.Tensor]], progress: bool
               ) -> dict[tuple[str, str], Any]:
    """Judge each (model, target) case for its own target, one worker run per target."""
    from .judges import judge_batch

    out: dict[tuple[str, str], Any] = {}
    by_target: dict[str, list[tuple[Any, torch.nn.Module, torch.Tensor]]] = {}
    for (name, target), (model, x) in cases.items():
        by_target.setdefault(target, []).append(((name, target), model, x))
    for target, batch in by_target.items():
        t0 = time.perf_counter()
        got = judge_batch(batch, [target])
        for key, per_target in got.items():
            out[key] = per_target[target]
        if progress:
            print(f"[npu] {target}: {len(batch)} models judged in {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                  flush=True)
    return out


def _judge_originals(cases: dict[str, tuple[torch.nn.Module, torch.Tensor]], targets: Sequence[str],
                     progress: bool) -> dict[tuple[str, str], Any]:
    """Judge every original model for every target in one batch: one export per compiler and lowering (the
    three Ethos-U targets share one TFLite conversion), one worker run per compiler."""
    from .judges import judge_batch

    t0 = time.perf_counter()
    got = judge_batch([(name, m, x) for name, (m, x) in cases.items()], list(targets))
    if progress:
        print(f"[npu] originals: {len(cases)} models × {len(targets)} targets judged in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return {(name, t): per[t] for name, per in got.items() for t in targets}


def run(models: Sequence[str] | None = None, targets: Sequence[str] | None = None,
        progress: bool = True) -> list[Row]:
    """Rewrite every model for every target and judge both; returns the rows (see :class:`Row`)."""
    from . import targets as T
    from . import zoo
    from .rewrite import rewrite
    from .verify import compare_modules

    names = list(models or zoo.ZOO)
    judged = [t for t in (targets or T.names()) if T.get(t).judged]
    if not judged:
        raise FoldError("no judged target given; judged targets: "
                        + ", ".join(t for t in T.names() if T.get(t).judged))
    rows: dict[tuple[str, str], Row] = {}
    before_cases, after_cases = {}, {}
    for name in names:
        model, x = zoo.build(name), zoo.example_input(name)
        for target in judged:
            before_cases[(name, target)] = (model, x)
            t0 = time.perf_counter()
            new, report = rewrite(model, target, example_inputs=x)
            row = Row(name, target, Verdict(), None, rewrite_ms=(time.perf_counter() - t0) * 1e3)
            row.changed = [f"{e.path}: {e.transform}" for e in report.changed]
            row.kept = [f"{e.path}: {e.reason}" for e in report.skipped]
            row.e2e_error = compare_modules(model, new, x) if report.changed else 0.0  # float64 copies
            if report.failed:
                row.kept += [f"{e.path}: FAILED {e.reason}" for e in report.failed]
            rows[(name, target)] = row
            if report.changed:
                after_cases[(name, target)] = (new.eval(), x)
            if progress:
                print(f"[npu] {name} → {target}: {len(report.changed)} changed, {len(report.skipped)} kept "
                      f"with a reason", file=sys.stderr, flush=True)
    before = _judge_originals({name: before_cases[(name, judged[0])] for name in names}, judged, progress)
    after = _judge_all(after_cases, progress) if after_cases else {}
    for key, row in rows.items():
        row.before = Verdict.of(before[key])
        row.after = Verdict.of(after[key]) if key in after else row.before
    return list(rows.values())


def render_markdown(rows: Sequence[Row], info: dict[str, Any]) -> str:
    """The tables of ``npu.md``."""
    lines = ["# pixelfold on NPUs: the vendor compilers' verdicts before and after `rewrite(model, target)`", "",
             f"Generated by `python -m pixelfold.npu_suite` ({info['date']}; {info['compilers']}; int8; models from "
             "`pixelfold.zoo` at their small input sizes). A cell: `NPU` (every operator on the NPU) or `CPU: <the "
             "operators left for the CPU>`, then the compiler's NPU cycle estimate in thousands; `crash`: the "
             "compiler or the converter before it failed. *Ours* = convolutions and the rearrangements, pads, "
             "slices and concatenations pixelfold's forms emit; the claim is about those. *e2e fp64*: max abs "
             "error of the rewritten model against the original in float64; *float TFLite*: relative max error of "
             "the (rewritten) model's float TFLite against PyTorch (Vela targets; litert-torch + tflite interpreter).",
             "",
             "| model | target | before | after | changed by rewrite | outcome | e2e fp64 | float TFLite |",
             "|---|---|---|---|---|---|---:|---:|"]
    for r in rows:
        after = r.after.cell() if r.changed and r.after else "(same)"
        changed = "; ".join(r.changed) or "–"
        err = "" if r.e2e_error is None else f"{r.e2e_error:.1e}"
        v = r.after if r.changed and r.after else r.before
        tfl = "" if v.float_tflite_error is None else f"{v.float_tflite_error:.1e}"
        lines.append(f"| {r.model} | {r.target} | {r.before.cell()} | {after} | {changed} | {r.outcome} | {err} "
                     f"| {tfl} |")
    lines += render_by_target(rows)
    kept = [(r, k) for r in rows for k in r.kept]
    if kept:
        lines += ["", "## What no exact form could meet, in the targets' words", ""]
        for r, k in kept:
            lines.append(f"- {r.model} → {r.target}: {k}")
    crashes = [r for r in rows if r.before.crashed or (r.after is not None and r.after.crashed)]
    if crashes:
        lines += ["", "## Compiler and converter failures", ""]
        for r in crashes:
            for when, v in (("before", r.before), ("after", r.after)):
                if v is not None and v.crashed:
                    lines.append(f"- {r.model} → {r.target} ({when}): {v.message.splitlines()[0][:300] if v.message else ''}")
    lines += ["", "## CPU reasons the compilers gave", ""]
    for r in rows:
        for when, v in (("before", r.before), ("after", r.after if r.changed else None)):
            if v is not None and v.reasons:
                for op, rs in v.reasons.items():
                    lines.append(f"- {r.model} → {r.target} ({when}) {op}: {rs[0][:200]}")
    return "\n".join(lines) + "\n"


def render_by_target(rows: Sequence[Row]) -> list[str]:
    """Per target: the rows where something is on the CPU, crashed or was rewritten; the rest counted.

    >>> ok, cpu = Verdict(3, [], 100), Verdict(2, ["TRANSPOSE_CONV"], 90)
    >>> print("\\n".join(render_by_target([Row("a", "t", cpu, ok, changed=["up: subpixel"]), Row("b", "t", ok, ok)])))
    <BLANKLINE>
    ## By target
    <BLANKLINE>
    ### t
    <BLANKLINE>
    | model | before | after | form |
    |---|---|---|---|
    | a | CPU: TRANSPOSE_CONV 0.1k | NPU 0.1k | up: subpixel |
    <BLANKLINE>
    1 other model: all on the NPU, unchanged.
    """
    out = ["", "## By target"]
    for target in dict.fromkeys(r.target for r in rows):
        mine = [r for r in rows if r.target == target]
        shown = [r for r in mine if r.changed or r.before.crashed or r.before.cpu_ops]
        out += ["", f"### {target}", ""]
        if shown:
            out += ["| model | before | after | form |", "|---|---|---|---|"]
            for r in shown:
                after = r.after.cell() if r.changed and r.after else "(same)"
                out.append(f"| {r.model} | {r.before.cell()} | {after} | {'; '.join(r.changed) or '–'} |")
            out.append("")
        rest = len(mine) - len(shown)
        if rest:
            out.append(f"{rest} other model{'s' if rest > 1 else ''}: all on the NPU, unchanged.")
    return out


def _info() -> dict[str, Any]:
    return {"date": datetime.date.today().isoformat(), "compilers": "Vela 5.2.0, rknn-toolkit2 2.5.0",
            "torch": torch.__version__}



#: Rows that fail issue 10's "Done when" for a reason pixelfold cannot fix today: ``make npu`` reports them as
#: known instead of failing, and fails on any other failing row, or on one of these once it passes (so the list
#: cannot go stale silently). Empty since 2026-12-02 (Vela 5.2.0, litert-torch 0.10, rknn-toolkit2 2.5.0).
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def verdicts(rows: Sequence[Row], known: dict[tuple[str, str], str] | None = None) -> tuple[list[Row], list[str]]:
    """The rows that fail ``make npu`` and one line per notable row: a failing row not in ``known``, or a
    known one that passes now (stale), fails; a known row that still fails is reported and tolerated.

    >>> ok, cpu = Verdict(3, [], 100), Verdict(2, ["CONV_2D"], 90)
    >>> bad, lines = verdicts([Row("a", "t", cpu, cpu), Row("b", "t", cpu, cpu), Row("c", "t", ok, ok)],
    ...                       {("b", "t"): "why", ("c", "t"): "fixed since"})
    >>> [r.model for r in bad]
    ['c', 'a']
    >>> print("\\n".join(lines))
    npu: known, not met: b → t: why
    npu: c → t passes now: remove it from KNOWN_FAILURES
    npu: FAILED a → t: ...
    """
    known = KNOWN_FAILURES if known is None else known
    stale = [r for r in rows if (r.model, r.target) in known and not r.failed]
    lines = [f"npu: known, not met: {r.model} → {r.target}: {known[(r.model, r.target)]}"
             for r in rows if r.failed and (r.model, r.target) in known]
    lines += [f"npu: {r.model} → {r.target} passes now: remove it from KNOWN_FAILURES" for r in stale]
    bad = stale + [r for r in rows if r.failed and (r.model, r.target) not in known]
    lines += [f"npu: FAILED {r.model} → {r.target}: {r.outcome}" for r in bad if r not in stale]
    return bad, lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pixelfold.npu_suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results", help="folder for npu.md and npu.json")
    p.add_argument("--models", nargs="*", default=None, help="zoo model names (default: all)")
    p.add_argument("--targets", nargs="*", default=None, help="judged targets (default: all seven)")
    args = p.parse_args(argv)
    try:
        rows = run(args.models, args.targets)
    except FoldError as err:
        print(f"pixelfold npu: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = _info()
    (out / "npu.md").write_text(render_markdown(rows, info))
    (out / "npu.json").write_text(json.dumps({"info": info, "rows": [asdict(r) for r in rows]}, indent=1))
    print(f"npu: {out / 'npu.md'}, {out / 'npu.json'} ({len(rows)} rows)")
    bad, lines = verdicts(rows)
    for line in lines:
        print(line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
