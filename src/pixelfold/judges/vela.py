"""Arm Vela (Ethos-U): what its outputs mean, as pure functions of the captured text and graphs.

The worker (:mod:`pixelfold.judges._worker_vela`, run inside ``.venv-vela``)
compiles an int8 ``.tflite`` with ``vela --accelerator-config <target>
--show-cpu-operations --output-dir <dir>`` and hands back, as plain data:

- the operators of the input graph and of the compiled ``*_vela.tflite``
  (read with the flatbuffer schema Vela ships, ``ethosu.vela.tflite``):
  ``{"index", "op", "custom", "inputs": [[name, shape]], "outputs": [[name, shape]]}``;
- Vela's stdout (the ``Warning (supported operators)`` blocks with each fallback's
  ``Reason:``), the per-layer CSV and the summary CSV, and its stderr.

Placement rule: every operator of the compiled graph other than the
``CUSTOM "ethos-u"`` op runs on the CPU. An input operator is a CPU op when
the compiled graph still holds an operator writing the same output tensor.

>>> text = (FIXTURES / "ct44_u55.stdout").read_text()
>>> [(w["op"], w["reason"]) for w in parse_cpu_warnings(text)]
[('TRANSPOSE_CONV', 'stride out of range: (4,4)')]
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from .results import Judgement, OpPlacement

__all__ = [
    "VELA_TARGETS",
    "parse_cpu_warnings",
    "parse_per_layer_csv",
    "parse_summary_csv",
    "crash_message",
    "attribute_layer_cycles",
    "vela_judgement",
]

#: Judged Ethos-U targets: pixelfold's name → Vela's ``--accelerator-config``.
VELA_TARGETS = {"ethos-u55-128": "ethos-u55-128", "ethos-u65-256": "ethos-u65-256", "ethos-u85-256": "ethos-u85-256"}

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "judges"

_WARNING = re.compile(r"^Warning \(supported operators\) operator: (?P<op>[A-Z0-9_]+), ofm: '(?P<ofm>.*)'\s*$")


def parse_cpu_warnings(stdout: str) -> list[dict[str, Any]]:
    """The ``--show-cpu-operations`` blocks: ``{"op", "ofm", "reason", "constraint"}`` per fallback.

    ``reason`` is the ``Reason:`` line verbatim (without the prefix);
    ``constraint`` the explanation lines that follow it, up to the blank line.

    >>> parse_cpu_warnings("Warning (supported operators) operator: SPACE_TO_DEPTH, ofm: 'y'\\n"
    ...                    "Reason: Unsupported opType\\n\\n")
    [{'op': 'SPACE_TO_DEPTH', 'ofm': 'y', 'reason': 'Unsupported opType', 'constraint': ''}]
    """
    out: list[dict[str, Any]] = []
    lines = stdout.splitlines()
    k = 0
    while k < len(lines):
        m = _WARNING.match(lines[k])
        k += 1
        if not m:
            continue
        reason, constraint = "", []
        while k < len(lines) and lines[k].strip() and not _WARNING.match(lines[k]):
            line = lines[k].rstrip()
            if line.startswith("Reason:") and not reason:
                reason = line[len("Reason:"):].strip()
            else:
                constraint.append(line.strip())
            k += 1
        out.append({"op": m["op"], "ofm": m["ofm"], "reason": reason, "constraint": " ".join(constraint)})
    return out


def _number(text: str) -> int | float | str:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() else value


def parse_per_layer_csv(text: str) -> list[dict[str, Any]]:
    """Rows of Vela's ``<name>_per-layer.csv`` with numbers as numbers.

    >>> rows = parse_per_layer_csv("Original Operator,NNG Operator,Target,Op Cycles,MAC Count,Name\\n"
    ...                            "Conv2D,Conv2D,NPU,5488,110592,y\\n")
    >>> rows[0]["Op Cycles"], rows[0]["Name"]
    (5488, 'y')
    """
    return [{k: (_number(v) if k != "Name" else v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def parse_summary_csv(text: str) -> dict[str, Any]:
    """The one data row of ``<name>_summary_<system>.csv`` as a dict (``cycles_npu``, ``cycles_total``, ...)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    return {k: _number(v) for k, v in rows[0].items()} if rows else {}


def crash_message(stderr: str, stdout: str = "") -> str:
    """The compiler's own words for a failure: the last exception line of a traceback, else the last lines.

    >>> crash_message("Traceback (most recent call last):\\n  File x\\nRuntimeError: Non-passthrough operation "
    ...               "(Conv2D) could not run on NPU\\n")
    'RuntimeError: Non-passthrough operation (Conv2D) could not run on NPU'
    """
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*", line) or line.startswith("Error:"):
            return line.strip()
    tail = [line for line in lines if not line.startswith("Warning:")][-3:] or stdout.strip().splitlines()[-3:]
    return " | ".join(t.strip() for t in tail) or "vela failed without a message"


def attribute_layer_cycles(layers: list[dict[str, Any]]) -> dict[str, int]:
    """Op cycles per layer name; rows Vela adds itself (named ``#<n>``) go to the next named row when that
    row comes from the same original operator (Vela splits one TFLite op into several NPU ops).

    >>> attribute_layer_cycles([{"Original Operator": "Transpose", "Op Cycles": 5, "Name": "#37"},
    ...                         {"Original Operator": "Transpose", "Op Cycles": 7, "Name": "t"},
    ...                         {"Original Operator": "Conv2D", "Op Cycles": 9, "Name": "y"}])
    {'t': 12, 'y': 9}
    """
    out: dict[str, int] = {}
    pending: list[dict[str, Any]] = []
    for row in layers:
        cycles = row.get("Op Cycles")
        if not isinstance(cycles, (int, float)):
            continue
        if str(row.get("Name", "")).startswith("#"):
            pending.append(row)
            continue
        extra = sum(int(p["Op Cycles"]) for p in pending if p.get("Original Operator") == row.get("Original Operator"))
        pending = []
        out[row["Name"]] = out.get(row["Name"], 0) + int(cycles) + extra
    return out


def _names(op: dict[str, Any], key: str = "outputs") -> list[str]:
    return [t[0] for t in op.get(key, [])]


def vela_judgement(
    target: str,
    version: str,
    input_ops: list[dict[str, Any]],
    compiled_ops: list[dict[str, Any]] | None,
    stdout: str,
    stderr: str = "",
    returncode: int = 0,
    per_layer_csv: str = "",
    summary_csv: str = "",
) -> Judgement:
    """Assemble the :class:`~pixelfold.judges.Judgement` from what Vela wrote (see the module docs).

    ``ops`` lists the *input* graph's operators in order (TFLite builtin names),
    each on the NPU unless the compiled graph kept it; a compiled-graph CPU op
    that writes no input-graph tensor is appended. ``cycles`` per op sums the
    per-layer CSV rows named after the op's output tensors (Vela names its
    layers after them; layers Vela adds itself, named ``#<n>``, stay in
    ``extra["layers"]`` only).
    """
    if returncode != 0 or compiled_ops is None:
        return Judgement(target, "vela", version, crashed=True, message=crash_message(stderr, stdout),
                         extra={"input_ops": input_ops})
    warnings = parse_cpu_warnings(stdout)
    layers = parse_per_layer_csv(per_layer_csv) if per_layer_csv.strip() else []
    summary = parse_summary_csv(summary_csv) if summary_csv.strip() else {}
    cpu_compiled = [op for op in compiled_ops if not (op["op"] == "CUSTOM" and op.get("custom") == "ethos-u")]
    cpu_outputs = {name for op in cpu_compiled for name in _names(op)}
    cycles_by_name = attribute_layer_cycles(layers)

    def reason_for(op: dict[str, Any]) -> tuple[str | None, str | None]:
        outs = _names(op)
        for w in warnings:
            if w["op"] == op["op"] and any(w["ofm"] == o or w["ofm"].startswith(o + "_") for o in outs):
                return w["reason"], w["constraint"]
        for w in warnings:  # the ofm name did not match (renamed by a fused activation): first of that type
            if w["op"] == op["op"]:
                return w["reason"], w["constraint"]
        return None, None

    ops: list[OpPlacement] = []
    seen: set[str] = set()
    for op in input_ops:
        outs = _names(op)
        on_cpu = any(o in cpu_outputs for o in outs)
        seen.update(o for o in outs if o in cpu_outputs)
        reason, constraint = reason_for(op) if on_cpu else (None, None)
        cycles = sum(cycles_by_name[o] for o in outs if o in cycles_by_name) if any(o in cycles_by_name for o in outs) else None
        detail = {"outputs": op.get("outputs", []), "inputs": op.get("inputs", [])}
        if op.get("options"):
            detail["options"] = op["options"]
        if constraint:
            detail["constraint"] = constraint
        ops.append(OpPlacement(op["index"], op["op"], not on_cpu, reason, cycles, detail))
    for op in cpu_compiled:
        if not any(o in seen for o in _names(op)):
            reason, constraint = reason_for(op)
            ops.append(OpPlacement(len(ops), op["op"], False, reason, None,
                                   {"outputs": op.get("outputs", []), "added_by_compiler": True,
                                    **({"constraint": constraint} if constraint else {})}))
    npu_cycles = summary.get("cycles_npu")
    total_cycles = summary.get("cycles_total")
    return Judgement(
        target,
        "vela",
        version,
        ops,
        npu_cycles=int(npu_cycles) if isinstance(npu_cycles, (int, float)) else None,
        total_cycles=int(total_cycles) if isinstance(total_cycles, (int, float)) else None,
        message="; ".join(f"{w['op']}: {w['reason']}" for w in warnings),
        extra={
            "compiled_ops": [{"op": op["op"], "custom": op.get("custom"), "outputs": _names(op)} for op in compiled_ops],
            "layers": [{k: row.get(k) for k in ("Original Operator", "NNG Operator", "Target", "Op Cycles",
                                                 "MAC Count", "Name")} for row in layers],
            "summary": {k: summary[k] for k in ("accelerator_configuration", "system_config", "memory_mode",
                                                 "inference_time", "nn_macs", "sram_memory_used",
                                                 "off_chip_flash_memory_used", "cycles_npu", "cycles_total")
                        if k in summary},
            "warnings": warnings,
        },
    )
