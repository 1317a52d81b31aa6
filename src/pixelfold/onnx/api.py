"""Rewrite an ONNX model node by node, verifying each rewrite (fail closed) and reporting; the nodes a rewrite
makes are offered to the other transforms of the list (chaining, :func:`rewrite_onnx`)."""

from __future__ import annotations

import collections
import copy
import time
from dataclasses import dataclass
from typing import Callable

import onnx

from pixelfold.errors import FoldError
from pixelfold.onnx import graph, verify
from pixelfold.onnx.patterns import PATTERNS, Pattern, load_builtin
from pixelfold.rewrite import LayerChange, RewriteReport

load_builtin()

#: the default transforms (the ``no_stride`` profile)
TRANSFORMS = ("fold", "subpixel")
#: at most this many chained rewrites are tried per node of the input graph (bounds the work list)
CHAIN_LIMIT = 16


def _describe(node: onnx.NodeProto) -> str:
    a = graph.attrs(node)
    if node.op_type in ("Conv", "ConvTranspose"):
        return f"{node.op_type} s{a.get('strides', [1, 1])} g{a.get('group', 1)}"
    return node.op_type + "".join(f" {k}={v.decode() if isinstance(v, bytes) else v}" for k, v in sorted(a.items()))


def _try(cur: onnx.ModelProto, idx: int, pattern: Pattern, entry: LayerChange,
         refuse: Callable[[list[onnx.NodeProto]], str] | None = None) -> tuple[onnx.ModelProto, list[str], set[str]]:
    """Apply ``pattern`` at node ``idx`` to a copy of ``cur``, verify it: ``(new model, names of the nodes it made
    (graph order), names of the nodes it removed)``, or ``(cur, [], set())`` (reverted). ``refuse(new nodes)``,
    if given, may veto the splice before it is verified (a non-empty reason: reported ``skipped``)."""
    cand = copy.deepcopy(cur)
    try:
        splice = pattern.splice(cand, idx, graph.static_shapes(cur))
        why = refuse(splice.nodes) if refuse else ""
        if why:
            raise FoldError(why)
        removed = {cand.graph.node[i].name for i in splice.remove}
        splice.apply(cand)
        check = verify.check_candidate(cur, cand, [cur.graph.node[idx].name])
    except FoldError as e:
        entry.status, entry.reason = "skipped", str(e)
        return cur, [], set()
    except Exception as e:  # fail closed: anything the checker/runtime says reverts the rewrite
        entry.status, entry.reason = "failed", verify.failure(pattern.name, e)
        return cur, [], set()
    entry.max_error, entry.tolerance, entry.transform, entry.note = check.error, check.tolerance, pattern.name, check.note
    entry.after = " → ".join(n.op_type for n in splice.nodes)
    if check.ok:
        entry.status, entry.reason = "changed", ""
        removed |= {n.name for n in cur.graph.node} - {n.name for n in cand.graph.node}  # drop_if_dead ones too
        return cand, [n.name for n in splice.nodes if n.name], removed
    entry.status, entry.reason = "failed", check.reason(pattern.name)
    return cur, [], set()


@dataclass(frozen=True)
class _Made:
    """How a node came to be: ``lineage``, every transform on the way (none of them is tried on it); ``root``, the
    input graph's node the chain began at; ``note``, for the report ("created by subpixel of up")."""

    lineage: frozenset[str]
    root: str
    note: str


def _undoes(lineage: frozenset[str], name: str) -> Callable[[list[onnx.NodeProto]], str]:
    """The veto of a chained rewrite ``name``: it may not make a node that a transform of its ``lineage``
    rewrites (``subpixel``'s DepthToSpace back into a ConvTranspose by ``transposed``, ``fold``'s SpaceToDepth
    merged back into a strided Conv): that would undo or redo an earlier rewrite of the chain."""
    def veto(nodes: list[onnx.NodeProto]) -> str:
        for n in nodes:
            for t in sorted(lineage):
                if n.op_type in PATTERNS[t].anchors and PATTERNS[t].applies(n):
                    return (f"{name} would make a {_describe(n)} that {t}, earlier in this chain, rewrites "
                            "(a round trip or a repeat); not chained")
        return ""
    return veto


def rewrite_onnx(model: onnx.ModelProto, transforms: tuple[str, ...] = TRANSFORMS) -> tuple[onnx.ModelProto, RewriteReport]:
    """A rewritten copy of ``model`` (never mutated) and a :class:`~pixelfold.rewrite.RewriteReport`.

    Each candidate is rewritten alone, checked with ``onnx.checker`` (full_check) and onnxruntime
    against the graph before it; a mismatch or error reverts it and is reported as ``failed``. Graphs with
    QuantizeLinear/DequantizeLinear nodes (int8 QDQ) are checked by :mod:`pixelfold.onnx.qdq_verify`: exact
    integer accumulators, and onnxruntime with graph optimisations on and off in LSBs of the output scales.

    The transforms are tried in the order given on each node of the graph, first match wins. Rewrites chain:
    the nodes an accepted rewrite makes are offered, right after it, to the *other* transforms of the list
    (never to the ones that made them, directly or through the chain, and never where the new rewrite would
    make a node one of those rewrites: no round trips), each verified and reported as its own entry whose note
    says which rewrite made the node; at most :data:`CHAIN_LIMIT` chained entries per node of the input graph.

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
    >>> new, rep = rewrite_onnx(m, ("fold", "lower4"))  # fold's SpaceToDepth, lowered in the same pass
    >>> [(e.path, e.transform, e.note) for e in rep.changed]
    [('c', 'fold', ''), ('c_S2D_pf0', 'lower4', 'created by fold of c')]
    >>> [n.op_type for n in new.graph.node]
    ['Pad', 'Reshape', 'Transpose', 'Reshape', 'Transpose', 'Reshape', 'Conv']
    """
    unknown = set(transforms) - set(PATTERNS)
    if unknown:
        raise FoldError(f"unknown ONNX transform(s) {sorted(unknown)}; available: {list(PATTERNS)}")
    graph.check_opset(model)
    t0 = time.perf_counter()
    cur = copy.deepcopy(model)
    graph.name_nodes(cur)  # a node's name is its identity in the work list (an index shifts with each splice)
    report = RewriteReport(rules=",".join(transforms), verified_on="onnxruntime CPU, random inputs")
    chosen = [PATTERNS[t] for t in transforms]
    #: (node name, how it was made: None for the input graph's nodes), visited in order; a rewrite's nodes go first
    work: collections.deque[tuple[str, _Made | None]] = collections.deque((n.name, None) for n in cur.graph.node)
    chained: collections.Counter[str] = collections.Counter()  # chained entries per input-graph node
    while work:
        name, origin = work.popleft()
        idx = next((i for i, n in enumerate(cur.graph.node) if n.name == name), None)
        if idx is None:
            continue  # removed by an earlier rewrite
        node = cur.graph.node[idx]
        done = origin.lineage if origin else frozenset()
        todo = [p for p in chosen if node.op_type in p.anchors and p.name not in done]
        if origin:  # a made node gets a line only where a transform would rewrite it
            todo = [p for p in todo if p.applies(node)]
        if not todo:
            continue
        entry = LayerChange(path=name, type=node.op_type, before=_describe(node))
        report.entries.append(entry)
        if origin and chained[origin.root] >= CHAIN_LIMIT:
            entry.status, entry.note = "skipped", origin.note
            entry.reason = f"not chained: {CHAIN_LIMIT} chained rewrites of {origin.root} were tried (the bound)"
            continue
        if origin:
            chained[origin.root] += 1
        failed: list[str] = []
        for pattern in (p for p in todo if p.applies(node)):
            cur, new, removed = _try(cur, idx, pattern, entry, _undoes(done, pattern.name) if origin else None)
            if entry.status == "changed":
                note = f"created by {pattern.name} of {name}" + (f" ({origin.note})" if origin else "")
                how = _Made(done | {pattern.name}, origin.root if origin else name, note)
                # what it removed is not visited (e.g. dcr_flip takes the Conv before a DepthToSpace; a fresh
                # name may be reused by a new node), what it made is, next, in graph order
                work = collections.deque(w for w in work if w[0] not in removed)
                work.extendleft((n, how) for n in reversed(new))
                break
            if entry.status == "failed":
                failed.append(entry.reason)
        if failed and entry.status != "changed":  # a failed attempt stays failed: a later pattern's skip must not hide it
            entry.status, entry.reason = "failed", "; ".join(failed)
        if origin:
            entry.note = "; ".join(x for x in (origin.note, entry.note) if x)
    if report.changed:
        anchors = list(dict.fromkeys(e.path for e in report.changed))
        check, report.end_to_end_checked_on = verify.end_to_end(model, cur, anchors)
        report.end_to_end_error, report.end_to_end_tolerance, report.end_to_end_scale = check.error, check.tolerance, check.scale
    report.elapsed_s = time.perf_counter() - t0
    return cur, report


def rewrite_onnx_file(path: str, out: str, transforms: tuple[str, ...] = TRANSFORMS) -> RewriteReport:
    """Load ``path``, rewrite it, save to ``out``; returns the report."""
    model = graph.load(path)
    new, report = rewrite_onnx(model, transforms)
    onnx.save(new, out)
    return report
