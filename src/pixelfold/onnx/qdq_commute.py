"""Moving a per-tensor QuantizeLinear → DequantizeLinear pair across a rearrangement, so float patterns match.

``quantize_static`` leaves SpaceToDepth / DepthToSpace in float with a Q→DQ pair beside them:
``Conv → Q → DQ → DepthToSpace`` and ``SpaceToDepth → Q → DQ → Conv``. The ``transposed`` and ``merge``
patterns look for ``Conv → DepthToSpace`` and ``SpaceToDepth → Conv``. A rearrangement only moves values, and a
per-tensor Q/DQ acts on each value alone, so the pair commutes with it exactly:

- after: ``Conv → Q → DQ → D2S``  ⇒  ``Conv → D2S → Q → DQ`` (the D2S's consumers read the same name);
- before: ``S2D → Q → DQ → Conv``  ⇒  ``Q → DQ → S2D → Conv`` (the Conv reads the same name).

:func:`commute` works in place on a copy of the graph (the caller's candidate), gives moved tensors fresh names (a
name keeps its shape) and re-sorts the nodes topologically.
"""

from __future__ import annotations

import onnx

from pixelfold.onnx.graph import const, fresh
from pixelfold.onnx.nodes import consumers, producer

def _per_tensor(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    s = const(model, node.input[1]) if len(node.input) > 1 else None
    return s is not None and s.size == 1


def _only_reader(model: onnx.ModelProto, name: str) -> onnx.NodeProto | None:
    readers = consumers(model, name)
    if len(readers) != 1 or name in {o.name for o in model.graph.output}:
        return None
    return model.graph.node[readers[0]]


def toposort(model: onnx.ModelProto) -> None:
    """Re-order ``model.graph.node`` (in place) so every node follows its producers; stable otherwise."""
    nodes = list(model.graph.node)
    ready = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    done: list[onnx.NodeProto] = []
    while nodes:
        k = next((k for k, n in enumerate(nodes) if all(i in ready for i in n.input)), None)
        if k is None:
            raise ValueError("the graph has a cycle or an undefined input")
        n = nodes.pop(k)
        done.append(n)
        ready.update(n.output)
    del model.graph.node[:]
    model.graph.node.extend(done)


def _after_chain(model: onnx.ModelProto, d2s: onnx.NodeProto):
    """``(conv, q, dq)`` of ``Conv → Q → DQ → d2s`` (each read only by the next, per-tensor), or None."""
    i = producer(model, d2s.input[0])
    dq = model.graph.node[i] if i is not None else None
    if dq is None or dq.op_type != "DequantizeLinear" or _only_reader(model, dq.output[0]) is not d2s:
        return None
    j = producer(model, dq.input[0])
    q = model.graph.node[j] if j is not None else None
    if q is None or q.op_type != "QuantizeLinear" or _only_reader(model, q.output[0]) is not dq:
        return None
    k = producer(model, q.input[0])
    conv = model.graph.node[k] if k is not None else None
    if conv is None or conv.op_type != "Conv" or not (_per_tensor(model, q) and _per_tensor(model, dq)):
        return None
    return conv, q, dq


def _before_chain(model: onnx.ModelProto, s2d: onnx.NodeProto):
    """``(q, dq, conv)`` of ``s2d → Q → DQ → Conv`` (each read only by the next, per-tensor), or None."""
    q = _only_reader(model, s2d.output[0])
    if q is None or q.op_type != "QuantizeLinear":
        return None
    dq = _only_reader(model, q.output[0])
    if dq is None or dq.op_type != "DequantizeLinear" or not (_per_tensor(model, q) and _per_tensor(model, dq)):
        return None
    conv = _only_reader(model, dq.output[0])
    return (q, dq, conv) if conv is not None and conv.op_type == "Conv" else None


def weighted_of(model: onnx.ModelProto, anchor: onnx.NodeProto) -> onnx.NodeProto | None:
    """The Conv a Q→DQ pair separates from ``anchor`` (a DepthToSpace after it, a SpaceToDepth before it), or None."""
    if anchor.op_type == "DepthToSpace":
        chain = _after_chain(model, anchor)
        return chain[0] if chain else None
    if anchor.op_type == "SpaceToDepth":
        chain = _before_chain(model, anchor)
        return chain[2] if chain else None
    return None


def commute(model: onnx.ModelProto, anchor: onnx.NodeProto) -> tuple[str, str] | None:
    """Move the pair (in place, then :func:`toposort`): ``Conv → Q → DQ → D2S`` ⇒ ``Conv → D2S → Q → DQ``, or
    ``S2D → Q → DQ → Conv`` ⇒ ``Q → DQ → S2D → Conv``. ``(anchor's output, Conv's output)`` names afterwards
    (nodes are found again by them: the sort copies the node messages), or None (graph unchanged)."""
    if anchor.op_type == "DepthToSpace" and (chain := _after_chain(model, anchor)):
        conv, q, dq = chain
        moved, q_out = fresh(model, anchor.output[0] + "_moved"), fresh(model, q.output[0] + "_moved")
        wiring = [(anchor, q.input[0], moved), (q, moved, q_out), (dq, q_out, anchor.output[0])]
        names = (moved, conv.output[0])
    elif anchor.op_type == "SpaceToDepth" and (chain := _before_chain(model, anchor)):
        q, dq, conv = chain
        q_out, dq_out = fresh(model, q.output[0] + "_moved"), fresh(model, dq.output[0] + "_moved")
        wiring = [(q, anchor.input[0], q_out), (dq, q_out, dq_out), (anchor, dq_out, dq.output[0])]
        names = (dq.output[0], conv.output[0])
    else:
        return None
    for node, new_in, new_out in wiring:  # (node, its new input 0, its new output), computed before any change
        node.input[0], node.output[0] = new_in, new_out
    toposort(model)
    return names
