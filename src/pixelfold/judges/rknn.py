"""Rockchip rknn-toolkit2: what its build log means, as pure functions of the captured text.

The worker (:mod:`pixelfold.judges._worker_rknn`, run inside ``.venv-rknn``)
runs ``RKNN().config(target_platform=...)``, ``load_onnx``, ``build`` in a
temporary directory (it writes ``check*.onnx`` into the cwd) and captures two
streams: what librknnc prints on **file descriptor 1** (the ``Network Layer
Information Table``: ``ID OpType DataType Target InputShape OutputShape
Cycles(DDR/NPU/Total) RW(KB) FullName``) and the Python logger's stderr (the
``fuse_ops`` rewrites, warnings, errors).

RKNN gives no reason for a CPU placement; the judge reports, as the reason,
the graph rewrite that produced the CPU op (``fuse_ops results:`` lines such as
``convert_deconv_to_exconvtransposepad_conv``) and any warning line that
names it.

>>> rows = parse_layer_table((FIXTURES / "ct33_rk3588.fd1").read_text())
>>> [(r["op"], r["target"]) for r in rows]  # doctest: +NORMALIZE_WHITESPACE
[('InputOperator', 'CPU'), ('Conv', 'NPU'), ('exConvTransposePad', 'CPU'), ('ConvRelu', 'NPU'),
 ('ConvTranspose', 'NPU'), ('OutputOperator', 'CPU')]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .results import Judgement, OpPlacement

__all__ = ["RKNN_TARGETS", "parse_layer_table", "parse_fuse_ops", "parse_log_messages", "rknn_judgement"]

#: Judged Rockchip targets: pixelfold's name → rknn-toolkit2's ``target_platform``.
RKNN_TARGETS = {"rk3588": "rk3588", "rk3568": "rk3568", "rk3576": "rk3576", "rv1106": "rv1106"}

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "judges"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PREFIX = re.compile(r"^[DIWE] RKNN: \[[0-9:.]+\] ?")
_ROW = re.compile(
    r"^(?P<id>\d+)\s+(?P<op>\S+)\s+(?P<dtype>\S+)\s+(?P<target>CPU|NPU\S*)\s+(?P<ins>\S+)\s+(?P<outs>\S+)\s+"
    r"(?P<ddr>\d+)/(?P<npu>\d+)/(?P<total>\d+)\s+(?P<rw>\S+)\s+(?P<name>.*?)\s*$"
)
_IO_OPS = ("InputOperator", "OutputOperator")


def _clean(line: str) -> str:
    return _PREFIX.sub("", _ANSI.sub("", line)).rstrip()


def parse_layer_table(fd1: str) -> list[dict[str, Any]]:
    """The rows of librknnc's ``Network Layer Information Table`` (the last one, if it printed several).

    Each row: ``{"id", "op", "dtype", "target", "inputs", "outputs", "cycles_ddr", "cycles_npu",
    "cycles", "rw_kb", "name"}`` (``target`` is ``"CPU"`` or ``"NPU"``; multi-core chips may
    print ``NPU`` with a core suffix, kept verbatim).

    >>> parse_layer_table("ID OpType DataType Target InputShape OutputShape Cycles(DDR/NPU/Total) RW(KB) FullName\\n"
    ...                   "1 Conv INT8 NPU (1,3,4,4) (1,8,4,4) 26/230/230 2 Conv:c\\n")[0]["cycles"]
    230
    """
    tables: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] | None = None
    for raw in fd1.splitlines():
        line = _clean(raw)
        if re.match(r"^ID\s+OpType\s+DataType\s+Target", line):
            current = []
            tables.append(current)
            continue
        if current is None:
            continue
        m = _ROW.match(line)
        if m:
            current.append({
                "id": int(m["id"]), "op": m["op"], "dtype": m["dtype"], "target": m["target"],
                "inputs": m["ins"], "outputs": m["outs"], "cycles_ddr": int(m["ddr"]),
                "cycles_npu": int(m["npu"]), "cycles": int(m["total"]), "rw_kb": m["rw"], "name": m["name"],
            })
        elif current and line.startswith("---"):
            current = None  # the table's closing rule
    return tables[-1] if tables else []


def parse_fuse_ops(log: str) -> list[dict[str, Any]]:
    """The ``fuse_ops results:`` rewrites: ``{"rule", "removed": [...], "added": [...]}``.

    >>> parse_fuse_ops("D     convert_deconv_to_exconvtransposepad_conv: remove node = ['n1'], add node = ['p', 'n1#1']")
    [{'rule': 'convert_deconv_to_exconvtransposepad_conv', 'removed': ['n1'], 'added': ['p', 'n1#1']}]
    """
    out = []
    for raw in log.splitlines():
        line = _ANSI.sub("", raw)
        m = re.match(r"^D\s+(\w+): remove node = \[(.*?)\], add node = \[(.*?)\]", line)
        if m:
            split = lambda s: [t.strip().strip("'\"") for t in s.split(",") if t.strip()]  # noqa: E731
            out.append({"rule": m[1], "removed": split(m[2]), "added": split(m[3])})
    return out


def parse_log_messages(log: str) -> list[str]:
    """The toolkit's warning and error lines (``W ...`` / ``E ...``), verbatim without colour codes."""
    out = []
    for raw in log.splitlines():
        line = _ANSI.sub("", raw).rstrip()
        if re.match(r"^[WE] \w", line):
            out.append(line)
    return out


def _node_name(full_name: str) -> str:
    """``'Conv:node_conv2d'`` → ``'node_conv2d'``."""
    return full_name.split(":", 1)[1] if ":" in full_name else full_name


def rknn_judgement(
    target: str,
    version: str,
    fd1: str,
    log: str,
    ok: bool,
    error: str = "",
    onnx_ops: dict[str, int] | None = None,
) -> Judgement:
    """Assemble the :class:`~pixelfold.judges.Judgement` from a build's captured streams.

    A failed build (``ok`` False: ``build()`` returned non-zero or raised, or no
    table was printed) is ``crashed=True`` with the toolkit's ``E`` lines (or
    ``error``) as the message.
    """
    rows = parse_layer_table(fd1)
    messages = parse_log_messages(log)
    if not ok or not rows:
        errors = [m for m in messages if m.startswith("E ")]
        message = error or " | ".join(errors[-3:]) or "rknn build produced no layer table"
        return Judgement(target, "rknn", version, crashed=True, message=message,
                         extra={"log_messages": messages[-20:], "onnx_ops": onnx_ops or {}})
    fuses = parse_fuse_ops(log)
    ops: list[OpPlacement] = []
    for r in rows:
        node = _node_name(r["name"])
        io = r["op"] in _IO_OPS
        on_npu = r["target"].startswith("NPU")
        reason = None
        if not on_npu and not io:
            why = [f["rule"] for f in fuses if node in f["added"] or node.split("#")[0] in f["added"]]
            said = [m for m in messages if node in m]
            parts = ([f"produced by fuse_ops rule {', '.join(why)}"] if why else []) + said
            reason = "; ".join(parts) or "placed on CPU by librknnc (no reason given)"
        detail: dict[str, Any] = {k: r[k] for k in ("dtype", "inputs", "outputs", "cycles_ddr", "cycles_npu", "name")}
        if io:
            detail["io"] = True
        ops.append(OpPlacement(r["id"], r["op"], on_npu, reason, r["cycles"], detail))
    npu = sum(p.cycles or 0 for p in ops if p.on_npu)
    total = sum(p.cycles or 0 for p in ops)
    cpu = [p for p in ops if not p.on_npu and not p.detail.get("io")]
    return Judgement(
        target,
        "rknn",
        version,
        ops,
        npu_cycles=npu,
        total_cycles=total,
        message="; ".join(f"{p.op}: {p.reason}" for p in cpu),
        extra={"fuse_ops": fuses, "log_messages": [m for m in messages if not m.startswith("W load_onnx: The config")],
               "onnx_ops": onnx_ops or {}},
    )
