"""Conv (stride 1) -> DepthToSpace(r, DCR or CRD) => one ConvTranspose (stride r): the ``transposed`` pattern.

The weight is :func:`pixelfold.transforms.transposed_weight` with the order the DepthToSpace's ``mode``
names (``DCR``, the ONNX default, is order ``"dcr"``; ``CRD`` is ``"crd"``, torch's ``pixel_shuffle``);
a converter that ignores the mode builds the wrong transposed conv for one of the two. Dilation is
written out densely first (zero taps), all-zero taps at both kernel ends are trimmed with
:func:`pixelfold.transforms.trim_zero_taps`. ONNX ConvTranspose crops each side on its own, so the
conv's padding may be asymmetric (``SAME_UPPER`` with an even kernel): the result crops
``(E-1-lo)*r`` at the start and ``(E-1-hi)*r`` at the end of each dim (``E`` the dense kernel extent).

Applies when: the Conv's output feeds only the DepthToSpace; the Conv is 2-D with constant weight and
bias, stride 1, each pad at most ``E-1``, and a bias equal across each output channel's ``r*r`` phases
(a ConvTranspose has one bias per channel). Grouped convs are exact too: the ConvTranspose keeps as many
groups as the order leaves apart (``groups=1``, zeros between groups, when DCR mixes them).

>>> ORDER_OF_MODE["DCR"], ORDER_OF_MODE["CRD"]
('dcr', 'crd')
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper

from pixelfold.errors import FoldError
from pixelfold.onnx.fold import conv_pads
from pixelfold.onnx.graph import attrs, fresh
from pixelfold.onnx.nodes import conv_weights, dims, init, producer, sole_consumer, text
from pixelfold.onnx.patterns import Pattern, Splice, register
from pixelfold.spec import ConvSpec
from pixelfold.transforms import dense_kernel, transposed_weight, trim_zero_taps

#: ONNX DepthToSpace ``mode`` -> pixelfold channel order (see :mod:`pixelfold.rearrange`)
ORDER_OF_MODE = {"DCR": "dcr", "CRD": "crd"}


def d2s_order(node: onnx.NodeProto) -> tuple[int, str]:
    """``(blocksize, order)`` of a DepthToSpace node (mode defaults to DCR)."""
    a = attrs(node)
    mode = text(a.get("mode"), "DCR").upper()
    if mode not in ORDER_OF_MODE:
        raise FoldError(f"DepthToSpace mode {mode!r} is not DCR or CRD")
    return int(a["blocksize"]), ORDER_OF_MODE[mode]


def s2d_order(node: onnx.NodeProto) -> tuple[int, str]:
    """``(blocksize, order)`` of a SpaceToDepth node: DCR, or the ``mode`` opset 28 added (``CRD``).

    >>> from onnx import helper
    >>> s2d_order(helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2, mode="CRD"))
    (2, 'crd')
    """
    a = attrs(node)
    mode = text(a.get("mode"), "DCR").upper()
    if mode not in ORDER_OF_MODE:
        raise FoldError(f"SpaceToDepth mode {mode!r} is not DCR or CRD")
    return int(a["blocksize"]), ORDER_OF_MODE[mode]


def _build(model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
    d2s = model.graph.node[idx]
    r, order = d2s_order(d2s)
    ci = producer(model, d2s.input[0])
    if ci is None or model.graph.node[ci].op_type != "Conv":
        kind = "a graph input or initializer" if ci is None else f"a {model.graph.node[ci].op_type}"
        raise FoldError(f"transposed: the DepthToSpace input {d2s.input[0]!r} comes from {kind}, not a Conv")
    sole_consumer(model, d2s.input[0], "transposed")
    conv = model.graph.node[ci]
    w, b = conv_weights(model, conv, "transposed")
    a = attrs(conv)
    same = text(a.get("auto_pad"), "NOTSET") in ("SAME_UPPER", "SAME_LOWER")
    x_shape = dims(model, conv.input[0], "transposed", "HW", "to resolve auto_pad") if same else [None] * 4
    s = list(a.get("strides", [1, 1]))
    d = list(a.get("dilations", [1, 1]))
    g = int(a.get("group", 1))
    if s != [1, 1]:
        raise FoldError(f"transposed: strides {s}; only a stride-1 Conv + DepthToSpace is one ConvTranspose")
    k = list(w.shape[2:])
    pads = conv_pads(conv, x_shape[2:], k, s, d)
    dense = dense_kernel(torch.from_numpy(np.array(w)).double(), d)
    E = list(dense.shape[2:])
    lo, hi = pads[:2], pads[2:]
    for i in range(2):
        if max(lo[i], hi[i]) > E[i] - 1:
            raise FoldError(f"transposed: pads ({lo[i]}, {hi[i]}) in dim {i} exceed kernel extent - 1 = {E[i] - 1}: "
                            "a ConvTranspose can only crop, not pad; the pair is kept")
    spec = ConvSpec(w.shape[1] * g, w.shape[0], tuple(E), (1, 1), tuple((v, v) for v in lo), (1, 1), groups=g,
                    bias=b is not None)
    tb = None if b is None else torch.from_numpy(np.array(b)).double()
    tw, tb, new = transposed_weight(dense, tb, spec, (r, r), order)
    begin = [(E[i] - 1 - lo[i]) * r for i in range(2)]
    end = [(E[i] - 1 - hi[i]) * r for i in range(2)]
    least = [min(p, q) for p, q in zip(begin, end)]
    tw, trimmed = trim_zero_taps(tw, new.replace(padding=tuple((v, v) for v in least)))
    cut = [least[i] - trimmed.padding[i][0] for i in range(2)]
    begin = [p - c for p, c in zip(begin, cut)]
    end = [p - c for p, c in zip(end, cut)]
    base = conv.name or "conv"
    inputs = [conv.input[0], init(model, tw.numpy().astype(w.dtype), conv.input[1] + "_transposed")]
    if tb is not None:
        inputs.append(init(model, tb.numpy().astype(b.dtype), conv.input[2] + "_transposed"))
    node = helper.make_node("ConvTranspose", inputs, list(d2s.output), name=fresh(model, base + "_transposed"),
                            kernel_shape=list(trimmed.kernel), strides=[r, r], pads=begin + end, group=trimmed.groups)
    return Splice(remove=[ci, idx], nodes=[node], at=max(ci, idx) - 1)


register(Pattern("transposed", ("DepthToSpace",), _build,
                 "stride-1 Conv -> DepthToSpace (DCR or CRD) => one ConvTranspose(stride r)", lift_qdq=True))
