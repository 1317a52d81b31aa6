"""Conv -> DepthToSpace(CRD) => Conv' -> DepthToSpace(DCR): the ``dcr_flip`` pattern, for DCR-only runtimes.

NNAPI and TIM-VX (and more: see ``pixelfold/targets/data``) run DepthToSpace only in the default DCR mode;
``torch.nn.PixelShuffle`` exports as CRD. The two differ only by a permutation of the input channels,
which is absorbed into the producing Conv's output channels (and bias): the weight's rows are reordered
with :func:`pixelfold.weight_ops._permute_out` (``x_dcr[:, k] = x_crd[:, p[k]]``,
:func:`pixelfold.rearrange.phase_permutation`). The values are the same products in the same order, so
the result is bit-exact. A grouped conv is written out densely first and split back into as many
groups as the permutation leaves apart (DCR mixes the groups' channels, so usually ``groups=1``).

Applies when the DepthToSpace is CRD and its input comes from a Conv (constant weight and bias) that
feeds nothing else.

>>> from pixelfold.onnx.patterns import PATTERNS
>>> from onnx import helper
>>> PATTERNS["dcr_flip"].applies(helper.make_node("DepthToSpace", ["a"], ["b"], blocksize=2))
False
"""

from __future__ import annotations

import onnx
from onnx import helper

from pixelfold.errors import FoldError
from pixelfold.onnx.graph import attrs, fresh
from pixelfold.onnx.nodes import conv_weights, dense_index, gather, init, producer, sole_consumer
from pixelfold.onnx.patterns import Pattern, Splice, register
from pixelfold.onnx.transposed import d2s_order
from pixelfold.probe import _regroup
from pixelfold.weight_ops import _permute_out

#: the channel order the Conv's output channels are permuted into (that of DepthToSpace mode DCR)
TARGET = "dcr"


def _build(model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
    d2s = model.graph.node[idx]
    r, order = d2s_order(d2s)
    if order != "crd":
        raise FoldError(f"dcr_flip: the DepthToSpace is already {order.upper()}")
    ci = producer(model, d2s.input[0])
    if ci is None or model.graph.node[ci].op_type != "Conv":
        kind = "a graph input or initializer" if ci is None else f"a {model.graph.node[ci].op_type}"
        raise FoldError(f"dcr_flip: the DepthToSpace input {d2s.input[0]!r} comes from {kind}, not a Conv whose "
                        "output channels could absorb the permutation")
    sole_consumer(model, d2s.input[0], "dcr_flip")
    conv = model.graph.node[ci]
    w, b = conv_weights(model, conv, "dcr_flip")
    if w.shape[0] % (r * r):
        raise FoldError(f"dcr_flip: the Conv has {w.shape[0]} output channels, not divisible by blocksize² = {r * r}")
    a = attrs(conv)
    index = _permute_out(dense_index(w.shape, int(a.get("group", 1))), (r, r), TARGET)
    index, groups = _regroup(index)
    base = conv.name or "conv"
    inputs = [conv.input[0], init(model, gather(w, index), conv.input[1] + "_dcr")]
    if b is not None:
        bias_index = _permute_out(dense_index((b.size, 1), 1), (r, r), TARGET)
        inputs.append(init(model, gather(b, bias_index).reshape(-1), conv.input[2] + "_dcr"))
    keep = {k: v for k, v in a.items() if k != "group"}
    new_conv = helper.make_node("Conv", inputs, list(conv.output), name=fresh(model, base + "_dcr"), group=groups,
                                **keep)
    new_d2s = helper.make_node("DepthToSpace", list(d2s.input), list(d2s.output), name=d2s.name or fresh(model, "D2S"),
                               blocksize=r, mode="DCR")
    return Splice(remove=[ci, idx], nodes=[new_conv, new_d2s], at=max(ci, idx) - 1)


def _crd(node: onnx.NodeProto) -> bool:
    mode = attrs(node).get("mode", b"DCR")
    return (mode.decode() if isinstance(mode, bytes) else str(mode)).upper() == "CRD"


register(Pattern("dcr_flip", ("DepthToSpace",), _build,
                 "Conv -> DepthToSpace(CRD) => Conv(output channels permuted) -> DepthToSpace(DCR)", _crd, lift_qdq=True))
