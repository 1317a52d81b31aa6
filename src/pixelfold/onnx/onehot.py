"""SpaceToDepth / DepthToSpace => one-hot Conv / ConvTranspose: ``onehot_s2d``, ``onehot_d2s``.

For runtimes that run convolutions but not the rearrangement ops (NVIDIA DLA rebuilds them this way).
The weight is :func:`pixelfold.onehot.onehot_weight` (kernel = stride = block, one 1 per output): in
the order of the SpaceToDepth's ``mode`` (DCR, or CRD from opset 28), and in the order of the DepthToSpace's ``mode`` (DCR
default, CRD). It needs the channel count, so the input's channel dim must be static (batch, height and
width may be dynamic). Exact for finite inputs; an ``inf``/``NaN`` input turns into ``NaN``
wherever a zero tap meets it (``0*inf``), where the rearrangement would only move it.

On an int8 QDQ graph (the input comes from a DequantizeLinear) the weight is integer too: int8 ones and zeros
behind a ``DequantizeLinear`` with scale 1 and zero point 0, so onnxruntime fuses ``DQ → Conv → Q`` into a
QLinearConv whose accumulator is the input code itself (``x_q − z_x``, one tap) and whose requantisation
``s_x·1/s_y`` is the one the rearrangement's own Q does.

>>> import numpy as np
>>> from onnx import helper, TensorProto
>>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 6])
>>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 2, 3])
>>> g = helper.make_graph([helper.make_node("SpaceToDepth", ["x"], ["y"], name="s2d", blocksize=2)], "g", [x], [y])
>>> from pixelfold.onnx.api import rewrite_onnx
>>> new, rep = rewrite_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), ("onehot_s2d",))
>>> [n.op_type for n in new.graph.node], rep.entries[0].max_error
(['Conv'], 0.0)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from pixelfold.errors import FoldError
from pixelfold.onehot import onehot_weight
from pixelfold.onnx.graph import attrs, fresh
from pixelfold.onnx.nodes import dims, elem_dtype, init, producer
from pixelfold.onnx.patterns import Pattern, Splice, register
from pixelfold.onnx.transposed import d2s_order, s2d_order


def _weight(model: onnx.ModelProto, node: onnx.NodeProto, w, tag: str) -> tuple[str, list[onnx.NodeProto]]:
    """The one-hot weight ``w`` (0/1) as an initializer, or on a QDQ graph as int8 behind a DequantizeLinear."""
    base, dtype = (node.name or tag) + "_onehot", elem_dtype(model, node.input[0])
    i = producer(model, node.input[0])
    if i is None or model.graph.node[i].op_type != "DequantizeLinear":
        return init(model, w.numpy().astype(dtype), base), []
    q, s, z = (init(model, w.numpy().astype(np.int8), base + "_q"), init(model, np.array(1, dtype), base + "_scale"),
               init(model, np.array(0, np.int8), base + "_zero"))
    out = fresh(model, base + "_dq")
    return out, [helper.make_node("DequantizeLinear", [q, s, z], [out], name=fresh(model, base + "_DQ"))]


def _s2d(model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
    node = model.graph.node[idx]
    b, order = s2d_order(node)
    N, C, H, W = dims(model, node.input[0], "onehot_s2d", "C", "for the one-hot weight")
    if (H or 0) % b or (W or 0) % b:
        raise FoldError(f"onehot_s2d: spatial size {H}x{W} is not divisible by blocksize {b}")
    w, dq = _weight(model, node, onehot_weight(C, (b, b), order), "s2d")
    conv = helper.make_node("Conv", [node.input[0], w], list(node.output),
                            name=fresh(model, (node.name or "s2d") + "_onehot"), kernel_shape=[b, b], strides=[b, b])
    return Splice(remove=[idx], nodes=[*dq, conv])


def _d2s(model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
    node = model.graph.node[idx]
    b, order = d2s_order(node)
    N, CR, H, W = dims(model, node.input[0], "onehot_d2s", "C", "for the one-hot weight")
    if CR % (b * b):
        raise FoldError(f"onehot_d2s: {CR} channels are not divisible by blocksize² = {b * b}")
    w, dq = _weight(model, node, onehot_weight(CR // (b * b), (b, b), order), "d2s")
    convt = helper.make_node("ConvTranspose", [node.input[0], w], list(node.output),
                             name=fresh(model, (node.name or "d2s") + "_onehot"), kernel_shape=[b, b], strides=[b, b])
    return Splice(remove=[idx], nodes=[*dq, convt])


register(Pattern("onehot_s2d", ("SpaceToDepth",), _s2d, "SpaceToDepth(b) => one-hot Conv(kernel b, stride b)"))
register(Pattern("onehot_d2s", ("DepthToSpace",), _d2s,
                 "DepthToSpace(b, DCR or CRD) => one-hot ConvTranspose(kernel b, stride b)"))
