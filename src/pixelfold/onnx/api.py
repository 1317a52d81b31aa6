"""Rewrite an ONNX model node by node, verifying each rewrite (fail closed) and reporting."""

from __future__ import annotations

import copy
import time

import onnx

from pixelfold.errors import FoldError
from pixelfold.onnx import graph, verify
from pixelfold.onnx.patterns import PATTERNS, Pattern, load_builtin
from pixelfold.rewrite import LayerChange, RewriteReport

load_builtin()

#: the default transforms (the ``no_stride`` profile)
TRANSFORMS = ("fold", "subpixel")


def _describe(node: onnx.NodeProto) -> str:
    a = graph.attrs(node)
    if node.op_type in ("Conv", "ConvTranspose"):
        return f"{node.op_type} s{a.get('strides', [1, 1])} g{a.get('group', 1)}"
    return node.op_type + "".join(f" {k}={v.decode() if isinstance(v, bytes) else v}" for k, v in sorted(a.items()))


def _try(cur: onnx.ModelProto, idx: int, pattern: Pattern, entry: LayerChange) -> onnx.ModelProto:
    """Apply ``pattern`` at node ``idx`` to a copy of ``cur``, verify it; the new model or ``cur`` (reverted)."""
    cand = copy.deepcopy(cur)
    try:
        splice = pattern.splice(cand, idx, graph.static_shapes(cur))
        splice.apply(cand)
        check = verify.check_candidate(cur, cand, [cur.graph.node[idx].name])
    except FoldError as e:
        entry.status, entry.reason = "skipped", str(e)
        return cur
    except Exception as e:  # fail closed: anything the checker/runtime says reverts the rewrite
        entry.status, entry.reason = "failed", verify.failure(pattern.name, e)
        return cur
    entry.max_error, entry.tolerance, entry.transform, entry.note = check.error, check.tolerance, pattern.name, check.note
    entry.after = " → ".join(n.op_type for n in splice.nodes)
    if check.ok:
        entry.status, entry.reason = "changed", ""
        return cand
    entry.status, entry.reason = "failed", check.reason(pattern.name)
    return cur


def rewrite_onnx(model: onnx.ModelProto, transforms: tuple[str, ...] = TRANSFORMS) -> tuple[onnx.ModelProto, RewriteReport]:
    """A rewritten copy of ``model`` (never mutated) and a :class:`~pixelfold.rewrite.RewriteReport`.

    Each candidate is rewritten alone, checked with ``onnx.checker`` (full_check) and onnxruntime
    against the graph before it; a mismatch or error reverts it and is reported as ``failed``. Graphs with
    QuantizeLinear/DequantizeLinear nodes (int8 QDQ) are checked by :mod:`pixelfold.onnx.qdq_verify`: exact
    integer accumulators, and onnxruntime with graph optimisations on and off in LSBs of the output scales.

    >>> from onnx import helper, TensorProto, numpy_helper
    >>> import numpy as np
    >>> w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    >>> g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c", strides=[2, 2], pads=[1, 1, 1, 1])],
    ...     "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [w])
    >>> m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    >>> new, rep = rewrite_onnx(m)
    >>> [(e.path, e.status, e.transform) for e in rep.entries]
    [('c', 'changed', 'fold')]
    >>> [n.op_type for n in new.graph.node]
    ['Pad', 'SpaceToDepth', 'Conv']
    """
    unknown = set(transforms) - set(PATTERNS)
    if unknown:
        raise FoldError(f"unknown ONNX transform(s) {sorted(unknown)}; available: {list(PATTERNS)}")
    graph.check_opset(model)
    t0 = time.perf_counter()
    cur = copy.deepcopy(model)
    report = RewriteReport(rules=",".join(transforms), verified_on="onnxruntime CPU, random inputs")
    chosen = [PATTERNS[t] for t in transforms]
    names = [n.name or f"node{i}" for i, n in enumerate(cur.graph.node)]
    for name in names:
        idx = next((i for i, n in enumerate(cur.graph.node) if (n.name or f"node{i}") == name), None)
        if idx is None:
            continue
        node = cur.graph.node[idx]
        todo = [p for p in chosen if node.op_type in p.anchors]
        if not todo:
            continue
        entry = LayerChange(path=name, type=node.op_type, before=_describe(node))
        report.entries.append(entry)
        failed: list[str] = []
        for pattern in (p for p in todo if p.applies(node)):
            cur = _try(cur, idx, pattern, entry)
            if entry.status == "changed":
                break
            if entry.status == "failed":
                failed.append(entry.reason)
        if failed and entry.status != "changed":  # a failed attempt stays failed: a later pattern's skip must not hide it
            entry.status, entry.reason = "failed", "; ".join(failed)
    if report.changed:
        check, report.end_to_end_checked_on = verify.end_to_end(model, cur, [e.path for e in report.changed])
        report.end_to_end_error, report.end_to_end_tolerance, report.end_to_end_scale = check.error, check.tolerance, check.scale
    report.elapsed_s = time.perf_counter() - t0
    return cur, report


def rewrite_onnx_file(path: str, out: str, transforms: tuple[str, ...] = TRANSFORMS) -> RewriteReport:
    """Load ``path``, rewrite it, save to ``out``; returns the report."""
    model = graph.load(path)
    new, report = rewrite_onnx(model, transforms)
    onnx.save(new, out)
    return report
