"""ConvTranspose (stride r) => [Slice] [Pad] Conv(stride 1) -> DepthToSpace(r) [-> Slice]: ``subpixel``, ``subpixel_crd``.

The weight and bias are :func:`pixelfold.transforms.subpixel_weight` (the shared-window form: one conv
with ``O*r*r`` outputs) in the order of the DepthToSpace that follows: ``subpixel`` emits DCR (the ONNX
default; some runtimes, e.g. NNAPI and TIM-VX, run DepthToSpace only in DCR), ``subpixel_crd`` emits CRD
(torch's ``pixel_shuffle``; it keeps a grouped ConvTranspose grouped, DCR cannot since it interleaves the
groups' channels). A stride-1 ConvTranspose becomes a plain Conv (no DepthToSpace).

Padding: ONNX crops each side of a ConvTranspose on its own (``pads`` begin/end, or ``auto_pad`` /
``output_shape``, resolved here as the ONNX spec says). Only the begin crop moves the values; it fixes the
weight. The inner conv's pads are chosen so that it yields ``ceil(out / r)`` blocks (negative pads: a Slice
of the input first); a final Slice trims the DepthToSpace output to the ConvTranspose's size.

>>> convt_pads({"strides": [2, 2], "auto_pad": b"SAME_UPPER"}, [5, 5], [3, 3], [1, 1], [0, 0])
([0, 0], [1, 1])
>>> convt_pads({"strides": [2, 2], "output_shape": [9, 10]}, [5, 5], [3, 3], [1, 1], [0, 0])
([1, 1], [1, 0])
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper

from pixelfold.errors import FoldError
from pixelfold.onnx.graph import attrs, fresh
from pixelfold.onnx.nodes import conv_weights, crop, dims, init, pad_or_slice, text
from pixelfold.onnx.patterns import Pattern, Splice, register
from pixelfold.spec import ConvSpec
from pixelfold.transforms import subpixel_geometry, subpixel_weight

#: pixelfold channel order -> ONNX DepthToSpace mode
MODE_OF_ORDER = {"dcr": "DCR", "crd": "CRD"}


def convt_pads(a: dict, in_hw: list[int], k: list[int], d: list[int], op: list[int]) -> tuple[list[int], list[int]]:
    """``(begin, end)`` crops per spatial dim of a ConvTranspose with attributes ``a`` (ONNX semantics)."""
    s = list(a.get("strides", [1, 1]))
    mode = text(a.get("auto_pad"), "NOTSET")
    want = None
    if "output_shape" in a:
        want = list(a["output_shape"])[-2:]
    elif mode in ("SAME_UPPER", "SAME_LOWER"):
        want = [n * ss for n, ss in zip(in_hw, s)]
    if want is None:
        if mode == "VALID":
            return [0, 0], [0, 0]
        p = list(a.get("pads", [0, 0, 0, 0]))
        return p[:2], p[2:]
    begin, end = [], []
    for i in range(2):
        total = s[i] * (in_hw[i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 - want[i]
        if total < 0:
            raise FoldError(f"subpixel: output_shape {want[i]} in dim {i} exceeds the largest output "
                            f"{want[i] + total} of this ConvTranspose (negative total padding {total}); the node is kept")
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return begin, end


def subpixel_nodes(model: onnx.ModelProto, node: onnx.NodeProto, order: str) -> list[onnx.NodeProto]:
    """Replacement nodes for a 2-D ConvTranspose ``node``; adds initializers to ``model``.

    Only ``auto_pad=SAME_*`` and ``output_shape`` need the input's H and W; otherwise the nodes are
    independent of them (crops count from the ends), so dynamic sizes are rewritten too.
    """
    w, b = conv_weights(model, node, "subpixel")
    a = attrs(node)
    s = list(a.get("strides", [1, 1]))
    d = list(a.get("dilations", [1, 1]))
    op = list(a.get("output_padding", [0, 0]))
    g = int(a.get("group", 1))
    if s[0] != s[1]:
        raise FoldError(f"subpixel: strides {s}; DepthToSpace has one blocksize, so the strides must be equal")
    r = s[0]
    k = list(w.shape[2:])
    sized = "output_shape" in a or text(a.get("auto_pad"), "NOTSET") in ("SAME_UPPER", "SAME_LOWER")
    x_dims = dims(model, node.input[0], "subpixel", "HW" if sized else "", "to resolve auto_pad / output_shape")
    begin, end = convt_pads(a, x_dims[2:], k, d, op)
    if min(begin + end) < 0:
        raise FoldError(f"subpixel: negative pads {begin + end}")
    E = [(kk - 1) * dd + 1 for kk, dd in zip(k, d)]
    c = [op[i] + E[i] - begin[i] - end[i] - r for i in range(2)]  # out = r*L + c
    spec = ConvSpec(w.shape[0], w.shape[1] * g, tuple(k), (r, r), tuple((p, p) for p in begin), tuple(d), groups=g,
                    bias=b is not None, transposed=True)
    tb = None if b is None else torch.from_numpy(np.array(b)).double()
    tw, tb, inner = subpixel_weight(torch.from_numpy(np.array(w)).double(), tb, spec, order)
    K = list(inner.kernel)
    lo = [-int(geo["lo"]) for geo in subpixel_geometry(spec)]
    extra = [-(-ci // r) for ci in c]  # ceil(out / r) = L + extra blocks
    hi = [extra[i] - lo[i] + K[i] - 1 for i in range(2)]
    excess = [r * extra[i] - c[i] for i in range(2)]  # r*blocks - out: cropped from the end at the last step
    base = node.name or "convt"
    x, nodes = node.input[0], []
    if min(lo + hi) < 0:  # crop first, the Conv pads nothing
        x, nodes = pad_or_slice(model, x, lo, hi, base)
        lo, hi = [0, 0], [0, 0]
    inputs = [x, init(model, tw.numpy().astype(w.dtype), node.input[1] + "_subpixel")]
    if tb is not None:
        inputs.append(init(model, tb.numpy().astype(b.dtype), node.input[2] + "_subpixel"))
    final = node.output[0]
    trim = [i for i in range(2) if excess[i]]
    y = fresh(model, base + "_phases") if (r > 1 or trim) else final
    nodes.append(helper.make_node("Conv", inputs, [y], name=fresh(model, base + "_subpixel"), kernel_shape=K,
                                  pads=lo + hi, group=g))
    if r > 1:
        z = fresh(model, base + "_d2s") if trim else final
        nodes.append(helper.make_node("DepthToSpace", [y], [z], name=fresh(model, base + "_D2S"), blocksize=r,
                                      mode=MODE_OF_ORDER[order]))
        y = z
    if trim:
        nodes.append(crop(model, y, [2 + i for i in trim], [0] * len(trim), [-excess[i] for i in trim], base,
                          out=final, tag="_Crop")[1])
    return nodes


def _builder(order: str):
    def build(model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
        return Splice(remove=[idx], nodes=subpixel_nodes(model, model.graph.node[idx], order))
    return build


register(Pattern("subpixel", ("ConvTranspose",), _builder("dcr"),
                 "ConvTranspose(stride r) => [Slice] [Pad] Conv(stride 1) -> DepthToSpace(r, DCR) [-> Slice]",
                 lift_qdq=True))
register(Pattern("subpixel_crd", ("ConvTranspose",), _builder("crd"),
                 "ConvTranspose(stride r) => [Slice] [Pad] Conv(stride 1) -> DepthToSpace(r, CRD) [-> Slice]",
                 lift_qdq=True))
