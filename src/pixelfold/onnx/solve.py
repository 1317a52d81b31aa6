"""Rewrite an ONNX graph for a named NPU target: keep what it runs, replace what it rejects by the cheapest exact form it runs.

The ONNX counterpart of :mod:`pixelfold.targets.solver`, with the same targets (``pixelfold/targets/data``),
the same decisions and the same report. For each node of the original graph, in order:

1. :func:`pixelfold.onnx.ops.onnx_ops` says what the node is; if the target accepts every op, the node
   stays exactly as it is.
2. Otherwise every registered pattern (:data:`pixelfold.onnx.patterns.PATTERNS`) anchored on its op type is
   a candidate. A candidate's emitted nodes are mapped back to ops and judged; an emitted node the target
   rejects is rewritten in turn by the patterns anchored on it, inside the same candidate (composition,
   at most :data:`DEPTH` deep): ``fold`` then ``lower4`` (the SpaceToDepth as rank-4 Reshape/Transpose),
   ``subpixel`` then ``lower4`` (a ConvTranspose stride 3 -> Conv + a DepthToSpace block 3, lowered),
   ``dcr_flip`` then ``lower4`` (a CRD shuffle after a Conv, whose transposes rk3588 refuses in CRD).
3. Of the candidates whose every op the target accepts, the cheapest (fewest MACs, then fewest nodes) is
   verified in onnxruntime against the graph before it (fail closed: a mismatch or an error reverts it and
   the next cheapest is tried).
4. If none is accepted the node is kept and reported ``skipped`` with the violated constraint in the
   target's own words (:attr:`pixelfold.targets.Violation.message`) and what each form broke.

>>> from onnx import helper, TensorProto, numpy_helper
>>> import numpy as np
>>> w = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")
>>> g = helper.make_graph([helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", strides=[3, 3])],
...     "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 15, 15])], [w])
>>> m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
>>> new, rep = rewrite_onnx_for_target(m, "rk3588")
>>> [(e.path, e.status, e.transform) for e in rep.entries]
[('up', 'changed', 'subpixel+lower4')]
>>> [n.op_type for n in new.graph.node]
['Conv', 'Reshape', 'Transpose', 'Reshape', 'Transpose', 'Reshape']
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import onnx

from pixelfold.errors import FoldError
from pixelfold.onnx import graph, verify
from pixelfold.onnx.ops import node_macs, onnx_ops
from pixelfold.onnx.patterns import PATTERNS
from pixelfold.report import LayerChange, RewriteReport

__all__ = ["rewrite_onnx_for_target", "rewrite_onnx_file_for_target", "Candidate", "candidates", "DEPTH"]

#: how many patterns one candidate may chain (the anchor's, then fixes of what it emitted)
DEPTH = 3
#: op types that get a report line even when the target runs them (the PyTorch side lists its conv-like layers)
LISTED = ("Conv", "ConvTranspose", "SpaceToDepth", "DepthToSpace")


@dataclass
class Candidate:
    """One exact form of a node: the patterns chained, the model with it spliced in, its nodes and their ops."""

    chain: list[str]
    model: onnx.ModelProto
    nodes: list[str]  # names of the nodes the candidate emitted (graph order)
    ops: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what the target says about them (empty: accepted)
    macs: float = math.nan  # of the whole candidate model: forms that also change a neighbour compare fairly

    @property
    def label(self) -> str:
        return "+".join(self.chain)


def _messages(violations: Sequence[Any]) -> list[str]:
    return list(dict.fromkeys(f"{v.op}: {v.message}" for v in violations))


def _splice(model: onnx.ModelProto, idx: int, name: str, shapes: dict) -> tuple[onnx.ModelProto, set[str], set[str]]:
    """``(new model, names removed, names added)`` of pattern ``name`` at node ``idx``; FoldError if it does not apply."""
    cand = copy.deepcopy(model)
    splice = PATTERNS[name].splice(cand, idx, shapes)
    removed = {cand.graph.node[i].name for i in splice.remove}
    added = {n.name for n in splice.nodes}
    splice.apply(cand)
    graph.prune_initializers(cand)
    return cand, removed, added


def _judge(model: onnx.ModelProto, names: set[str], target: Any) -> tuple[list[str], list[Any], list[str], float, int | None]:
    """``(names in graph order, ops, problems, MACs of the model, index of the first rejected node)`` of a
    candidate's nodes."""
    shapes = graph.static_shapes(model)
    order, ops, problems, first = [], [], [], None
    macs = total_macs(model, shapes)
    for i, n in enumerate(model.graph.node):
        if n.name not in names:
            continue
        order.append(n.name)
        mine = onnx_ops(model, n, shapes)
        ops.extend(mine)
        bad = target.rejects(mine)
        if bad:
            problems.extend(_messages(bad))
            if first is None and any(n.op_type in p.anchors for p in PATTERNS.values()):
                first = i
    return order, ops, list(dict.fromkeys(problems)), macs, first


def total_macs(model: onnx.ModelProto, shapes: dict | None = None) -> float:
    """Multiply-accumulates of one run of ``model`` (Conv, ConvTranspose, MatMul, Gemm nodes; ``nan`` if unknown)."""
    shapes = graph.static_shapes(model) if shapes is None else shapes
    return sum(node_macs(model, n, shapes) for n in model.graph.node)


def _grow(model: onnx.ModelProto, names: set[str], chain: list[str], target: Any, depth: int) -> list[Candidate]:
    """The candidate, completed: rejected emitted nodes rewritten by the patterns anchored on them."""
    try:
        order, ops, problems, macs, first = _judge(model, names, target)
    except Exception as err:  # noqa: BLE001 - fail closed: a form that cannot be judged is not accepted
        return [Candidate(chain, model, sorted(names), problems=[f"{type(err).__name__}: {err}"[:200]])]
    here = Candidate(chain, model, order, ops, problems, macs)
    if not problems or first is None or depth <= 0:
        return [here]
    node = model.graph.node[first]
    shapes = graph.static_shapes(model)
    out: list[Candidate] = []
    for name, p in PATTERNS.items():
        if node.op_type not in p.anchors or not p.applies(node) or name in chain:
            continue
        try:
            cand, removed, added = _splice(model, first, name, shapes)
        except Exception:  # noqa: BLE001 - FoldError (does not apply) or a builder crash: one form fewer
            continue
        out.extend(_grow(cand, (names - removed) | added, chain + [name], target, depth - 1))
    return out or [here]


def candidates(model: onnx.ModelProto, idx: int, target: Any) -> tuple[list[Candidate], dict[str, str]]:
    """Every form of node ``idx`` the registered patterns give (completed, judged); and why others did not apply."""
    node = model.graph.node[idx]
    shapes = graph.static_shapes(model)
    out: list[Candidate] = []
    refused: dict[str, str] = {}
    for name, p in PATTERNS.items():
        if node.op_type not in p.anchors or not p.applies(node):
            continue
        try:
            cand, removed, added = _splice(model, idx, name, shapes)
        except FoldError as err:
            refused[name] = str(err)
            continue
        except Exception as err:  # noqa: BLE001 - fail closed: a builder crash is one form fewer, said in the report
            refused[name] = f"{type(err).__name__}: {err}"[:200]
            continue
        out.extend(_grow(cand, added, [name], target, DEPTH - 1))
    return out, refused


def _cost(c: Candidate, i: int) -> tuple[float, int, int, int]:
    """Fewest MACs, then fewest nodes, then the shortest chain of patterns, then registry order."""
    return (c.macs if math.isfinite(c.macs) else math.inf, len(c.nodes), len(c.chain), i)


def _verify(before: onnx.ModelProto, cand: Candidate, anchor: str) -> tuple[verify.Check | None, str]:
    """``(check, why not)`` of ``cand`` against ``before``: :func:`pixelfold.onnx.verify.check_candidate`, the
    step :func:`pixelfold.onnx.api.rewrite_onnx` takes (int8 QDQ graphs: its LSB gates); ``check`` is None when
    it raised."""
    try:
        check = verify.check_candidate(before, cand.model, [anchor])
    except Exception as e:  # noqa: BLE001 - fail closed
        return None, verify.failure(cand.label, e)
    return check, check.reason(cand.label)


def _describe(node: onnx.NodeProto, ops: Sequence[Any]) -> str:
    return "; ".join(map(str, ops)) if ops else node.op_type


def _decide(cur: onnx.ModelProto, idx: int, target: Any, entry: LayerChange, bad: list[Any]) -> onnx.ModelProto:
    """Rewrite node ``idx`` (which ``target`` rejects) by its cheapest accepted verified form; ``cur`` if none."""
    said = "; ".join(_messages(bad))
    cands, refused = candidates(cur, idx, target)
    accepted = [c for c in cands if not c.problems]
    if not accepted:
        tried = [f"{c.label}: {c.problems[0]}" for c in cands][:4] + [f"{k}: {v}" for k, v in refused.items()][:2]
        entry.status, entry.transform = "skipped", target.name
        entry.reason = f"{target.name} rejects {said}; no exact form runs on it" + (f" ({'; '.join(tried)})" if tried else "")
        return cur
    shapes = graph.static_shapes(cur)
    node_before, total_before = node_macs(cur, cur.graph.node[idx], shapes), total_macs(cur, shapes)
    failures = []
    for c in sorted(accepted, key=lambda c: _cost(c, accepted.index(c))):
        check, why = _verify(cur, c, cur.graph.node[idx].name)
        if check is None or not check.ok:
            failures.append(why)
            continue
        entry.status, entry.transform, entry.max_error, entry.tolerance = "changed", c.label, check.error, check.tolerance
        by_name = {n.name: n.op_type for n in c.model.graph.node}
        entry.after = " → ".join(by_name[n] for n in c.nodes)
        if node_before > 0 and math.isfinite(c.macs - total_before):
            entry.mac_ratio = (node_before + c.macs - total_before) / node_before
        entry.note = f"{target.name} rejects {said}; {c.label} runs on it" + (f"; {check.note}" if check.note else "")
        entry.checked_on = "onnxruntime CPU, random inputs"
        return c.model
    entry.status, entry.transform = "failed", accepted[0].label
    entry.reason = "; ".join(failures[:3]) + "; the node is kept"
    return cur


def rewrite_onnx_for_target(model: onnx.ModelProto, target: Any) -> tuple[onnx.ModelProto, RewriteReport]:
    """A copy of ``model`` (never mutated) rewritten for ``target`` (a name, a target file or a
    :class:`~pixelfold.targets.Target`), and the :class:`~pixelfold.rewrite.RewriteReport` (see the module docstring).

    Raises :class:`FoldError` for an unknown target (listing the built-in ones) or an unsupported opset.
    """
    from pixelfold import targets

    tgt = targets.get(target)
    if tgt.judge == "vela":
        raise FoldError(
            f"{tgt.name} compiles int8 TFLite (Arm Vela), not ONNX: its constraints were measured on what litert-torch "
            "writes from PyTorch, and an ONNX-to-TFLite converter writes other ops (the explicit PAD + strided "
            "CONV_2D that Vela 5.2 crashes on, for one); rewrite the PyTorch model (pixelfold rewrite MODEL --target "
            f"{tgt.name}) or judge an int8 TFLite as it is (pixelfold check model.tflite --target {tgt.name}); "
            "nothing was run")
    graph.check_opset(model)
    t0 = time.perf_counter()
    cur = copy.deepcopy(model)
    report = RewriteReport(rules=tgt.name, verified_on="onnxruntime CPU, random inputs")
    graph.name_nodes(cur)  # unnamed nodes get the name the report uses (as rewrite_onnx's)
    names = [n.name for n in cur.graph.node]
    for name in names:
        idx = next((i for i, n in enumerate(cur.graph.node) if n.name == name), None)
        if idx is None:
            continue  # removed by an earlier rewrite (e.g. dcr_flip takes the Conv before a DepthToSpace)
        node = cur.graph.node[idx]
        if node.op_type not in LISTED and not any(node.op_type in p.anchors for p in PATTERNS.values()):
            continue
        entry = LayerChange(path=name, type=node.op_type, before=node.op_type)
        try:
            ops = onnx_ops(cur, node, graph.static_shapes(cur))
        except Exception as err:  # noqa: BLE001 - FoldError, or shape inference refusing the graph: said, kept
            why = str(err) if isinstance(err, FoldError) else f"cannot judge it: {type(err).__name__}: {err}"[:300]
            entry.status, entry.reason, entry.transform = "skipped", why, tgt.name
            report.entries.append(entry)
            continue
        entry.before = _describe(node, ops)
        bad = tgt.rejects(ops)
        if node.op_type in LISTED or bad:
            report.entries.append(entry)
        if bad:
            cur = _decide(cur, idx, tgt, entry, bad)
    if report.changed:
        check, report.end_to_end_checked_on = verify.end_to_end(model, cur, [e.path for e in report.changed])
        report.end_to_end_error, report.end_to_end_tolerance, report.end_to_end_scale = check.error, check.tolerance, check.scale
    report.elapsed_s = time.perf_counter() - t0
    return cur, report


def rewrite_onnx_file_for_target(path: str, out: str, target: Any) -> RewriteReport:
    """Load ``path``, rewrite it for ``target``, save to ``out``; returns the report."""
    model = graph.load(path)
    new, report = rewrite_onnx_for_target(model, target)
    onnx.save(new, out)
    return report
