"""Conv (equal strides s, any pads) => [Pad] [Slice] SpaceToDepth(s*b) -> Conv(stride 1) -> DepthToSpace(b) [-> Slice].

The ONNX form of :func:`pixelfold.polyphase` with block ``b``: input and output are both cut into phases
and one stride-1, padding-free conv maps ``(s*b)^2`` input phases to ``b^2`` output phases. Its weight and
bias are :func:`pixelfold.transforms.phase_conv_weight` with ``in_block = s*b``, ``out_block = b`` in order
:data:`ORDER` (``"dcr"``: ONNX SpaceToDepth is DCR; the DepthToSpace mode is :data:`D2S_MODE` of that
order, which must agree or the phases land in the wrong place). The Conv's padding (explicit or auto_pad)
is written as an explicit Pad, then the padded size is extended or cropped at the far end to exactly
``(ceil(out/b) - 1 + Q) * s*b`` (``Q`` the inner kernel); a final Slice trims the output to the Conv's.

The block is the pattern's name: ``polyphase2`` (b = 2) and ``polyphase4`` (b = 4) are registered;
:func:`register_block` adds others. With stride 1 this is the "same big kernel at stride 1 on b x b phases"
form; the patterns apply to every 2-D Conv.

>>> D2S_MODE[ORDER]
'DCR'
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper

from pixelfold.errors import FoldError
from pixelfold.onnx.fold import conv_pads
from pixelfold.onnx.graph import attrs, fresh
from pixelfold.onnx.nodes import conv_weights, crop, dims, init, pad_or_slice
from pixelfold.onnx.patterns import Pattern, Splice, register
from pixelfold.spec import ConvSpec
from pixelfold.transforms import phase_conv_weight

#: the phase order of the inner weight (SpaceToDepth in ONNX is DCR)
ORDER = "dcr"
#: pixelfold order -> the DepthToSpace mode that reads it
D2S_MODE = {"dcr": "DCR", "crd": "CRD"}


def polyphase_nodes(model: onnx.ModelProto, node: onnx.NodeProto, block: int) -> list[onnx.NodeProto]:
    """Replacement nodes for a 2-D Conv ``node`` as polyphase with output block ``block``; adds initializers
    to ``model``. :class:`FoldError` (with the numbers) when it does not apply."""
    what = f"polyphase{block}"
    w, b = conv_weights(model, node, what)
    a = attrs(node)
    k = list(w.shape[2:])
    s = list(a.get("strides", [1, 1]))
    d = list(a.get("dilations", [1, 1]))
    g = int(a.get("group", 1))
    if s[0] != s[1]:
        raise FoldError(f"{what}: strides {s}; SpaceToDepth has one blocksize, so the strides must be equal")
    if g != 1:
        raise FoldError(f"{what}: group {g}; the DCR phase order interleaves the groups' channels (group 1 only)")
    N, C, H, W = dims(model, node.input[0], what, "HW", "for the output size and the phase padding")
    pads = conv_pads(node, [H, W], k, s, d)
    B = s[0] * block
    spec = ConvSpec.make(w.shape[1], w.shape[0], k, stride=s, padding=0, dilation=d, groups=1, bias=b is not None)
    tw, tb, inner = phase_conv_weight(torch.from_numpy(np.array(w)).double(),
                                      None if b is None else torch.from_numpy(np.array(b)).double(),
                                      spec, (B, B), (block, block), ORDER)
    if list(inner.stride) != [1, 1]:
        raise FoldError(f"{what}: inner stride {inner.stride} (expected 1)")
    out, hi = [], []
    for i, L in enumerate((H, W)):
        padded = L + pads[i] + pads[2 + i]
        n_out = (padded - (d[i] * (k[i] - 1) + 1)) // s[i] + 1
        if n_out < 1:
            raise FoldError(f"{what}: input {H}x{W} with pads {pads} is too small for kernel {k} dilation {d} "
                            f"(output {n_out} in dim {i})")
        needed = (-(-n_out // block) - 1 + inner.kernel[i]) * B
        out.append(n_out)
        hi.append(needed - L - pads[i])  # far-end pad (> 0) or crop (< 0) of the input
    base = node.name or "conv"
    x, nodes = pad_or_slice(model, node.input[0], pads[:2], hi, base)
    y = fresh(model, base + "_s2d")
    nodes.append(helper.make_node("SpaceToDepth", [x], [y], name=fresh(model, base + "_S2D"), blocksize=B))
    inputs = [y, init(model, tw.numpy().astype(w.dtype), node.input[1] + "_polyphase")]
    if tb is not None:
        inputs.append(init(model, tb.numpy().astype(b.dtype), node.input[2] + "_polyphase"))
    z = fresh(model, base + "_phases")
    nodes.append(helper.make_node("Conv", inputs, [z], name=fresh(model, base + "_polyphase"),
                                  kernel_shape=list(inner.kernel)))
    trim = [i for i in range(2) if -(-out[i] // block) * block != out[i]]
    final = node.output[0]
    u = fresh(model, base + "_d2s") if trim else final
    nodes.append(helper.make_node("DepthToSpace", [z], [u], name=fresh(model, base + "_D2S"), blocksize=block,
                                  mode=D2S_MODE[ORDER]))
    if trim:
        nodes.append(crop(model, u, [2 + i for i in trim], [0] * len(trim), [out[i] for i in trim], base,
                          out=final, tag="_Crop")[1])
    return nodes


def register_block(block: int) -> Pattern:
    """Register ``polyphase{block}``: every 2-D Conv as polyphase with output block ``block`` (>= 2)."""
    if block < 2:
        raise FoldError(f"polyphase block {block}: use fold for block 1 (no DepthToSpace)")

    def build(model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
        return Splice(remove=[idx], nodes=polyphase_nodes(model, model.graph.node[idx], block))

    return register(Pattern(f"polyphase{block}", ("Conv",), build,
                            f"Conv (stride s) => [Pad] [Slice] SpaceToDepth(s*{block}) Conv(stride 1) "
                            f"DepthToSpace({block}, DCR) [Slice]", lift_qdq=True))


register_block(2)
register_block(4)
