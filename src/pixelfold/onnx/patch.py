"""Patchify Conv (kernel == stride, no pads) => Reshape, Transpose, Reshape, MatMul [Add], Reshape, Transpose.

The "patch embedding is a linear layer" view (:class:`pixelfold.phaseconv.PatchLinear`) as an ONNX graph:
``x (N, C, H, W)`` is cut into ``kh x kw`` patches, ``(N, C, h, kh, w, kw)`` -> ``(N, h, w, C, kh, kw)`` ->
``(N*h*w, C*kh*kw)``, one GEMM with the ``(C*kh*kw, O)`` weight (``PatchLinear``'s map in order
:data:`PATCH_ORDER`, transposed), the bias added, and ``(N, h, w, O)`` -> ``(N, O, h, w)``. The patch vector's
layout must match the Transpose's ``(C, kh, kw)``: ``"crd"`` (channel-major, the weight's own flattening).

Applies when: a 2-D Conv with constant weight (and bias), kernel == stride in each dim, pads all 0 (or
``auto_pad`` VALID, or SAME_* resolving to 0), dilation 1, one group, static C, H and W (the batch may be
dynamic: the reshapes copy or infer it). Rows/columns past the last whole patch, which the Conv ignores,
are cut by a Slice first. On an int8 QDQ graph the weight stays integer (the lift, :mod:`pixelfold.onnx.qdq_lift`):
the GEMM is one ``Gemm(transB=1)`` with the conv's own ``(O, C*kh*kw)`` integer weight, per-channel scales on
axis 0 and the int32 bias as ``C``, between Q→DQ pairs, which onnxruntime fuses into one integer kernel
(QGemm) as it fuses the Conv into QLinearConv. Only strided convs are tried (``strides >= 2``): a 1x1 stride-1 Conv is a GEMM too,
but rewriting every pointwise conv of a model is not what this pattern is for.

>>> PATCH_ORDER
'crd'
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper
from torch import nn

from pixelfold.errors import FoldError
from pixelfold.onnx.fold import conv_pads
from pixelfold.onnx.graph import attrs, fresh
from pixelfold.onnx.nodes import conv_weights, crop, dims, init
from pixelfold.onnx.patterns import Pattern, Splice, register
from pixelfold.phaseconv import PatchLinear

#: the patch vector layout the weight is flattened in; it must be the ``(C, kh, kw)`` the Transpose gives
PATCH_ORDER = "crd"


def patch_matrix(w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """The ``(C*kh*kw, O)`` GEMM weight of a patchify conv weight ``w`` ``(O, C, kh, kw)`` (via ``PatchLinear``).

    >>> patch_matrix(np.arange(8.).reshape(2, 1, 2, 2), None).tolist()
    [[0.0, 4.0], [1.0, 5.0], [2.0, 6.0], [3.0, 7.0]]
    """
    O, C, kh, kw = w.shape
    conv = nn.Conv2d(C, O, (kh, kw), stride=(kh, kw), bias=b is not None).double()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.array(w, np.float64)))
    m = PatchLinear(conv, PATCH_ORDER)
    with torch.no_grad():
        return m.transformed_weight().detach().numpy().T.astype(w.dtype)


def patch_nodes(model: onnx.ModelProto, node: onnx.NodeProto, gemm: bool = False) -> list[onnx.NodeProto]:
    """Replacement nodes for a patchify Conv ``node``; adds initializers to ``model``; :class:`FoldError` if it
    is not one (the reason and the numbers in the message). ``gemm``: one ``Gemm(transB=1)`` with the ``(O, K)``
    weight and the bias as its ``C`` (the int8 QDQ form) instead of ``MatMul`` with ``(K, O)`` + ``Add``."""
    w, b = conv_weights(model, node, "patch_matmul")
    a = attrs(node)
    O, Cg, kh, kw = w.shape
    k = [kh, kw]
    s = list(a.get("strides", [1, 1]))
    d = list(a.get("dilations", [1, 1]))
    g = int(a.get("group", 1))
    if g != 1:
        raise FoldError(f"patch_matmul: group {g}; one GEMM needs group 1")
    if d != [1, 1]:
        raise FoldError(f"patch_matmul: dilations {d}; patches need dilation 1")
    if s != k:
        raise FoldError(f"patch_matmul: kernel {k} != strides {s}; only a patchify conv (kernel == stride) is a GEMM")
    N, C, H, W = dims(model, node.input[0], "patch_matmul", "CHW", "for the patch reshapes")
    pads = conv_pads(node, [H, W], k, s, d)
    if any(pads):
        raise FoldError(f"patch_matmul: pads {pads}; patches need no padding (use fold or polyphase)")
    h, wd = H // kh, W // kw
    if h < 1 or wd < 1:
        raise FoldError(f"patch_matmul: input {H}x{W} is smaller than the kernel {kh}x{kw}")
    base = node.name or "conv"
    x, nodes = node.input[0], []
    if H % kh or W % kw:  # the conv ignores the rows/columns past the last whole patch
        axes = [ax for ax, (L, kk) in zip((2, 3), ((H, kh), (W, kw))) if L % kk]
        x, cut = crop(model, x, axes, [0] * len(axes), [(h * kh, wd * kw)[ax - 2] for ax in axes], base)
        nodes.append(cut)

    def reshape(src: str, shape: list[int], tag: str) -> str:
        out = fresh(model, base + tag)
        nodes.append(helper.make_node("Reshape", [src, init(model, np.array(shape, np.int64), base + tag + "_shape")],
                                      [out], name=fresh(model, base + tag + "_Reshape")))
        return out

    def transpose(src: str, perm: list[int], tag: str, out: str | None = None) -> str:
        out = out or fresh(model, base + tag)
        nodes.append(helper.make_node("Transpose", [src], [out], name=fresh(model, base + tag + "_Transpose"),
                                      perm=perm))
        return out

    t = reshape(x, [0, C, h, kh, wd, kw], "_patches6")  # 0: copy N (may be dynamic)
    t = transpose(t, [0, 2, 4, 1, 3, 5], "_patchesT")  # (N, h, w, C, kh, kw): the crd patch vector
    t = reshape(t, [-1, C * kh * kw], "_rows")
    y = fresh(model, base + "_gemm")
    if gemm:
        weight = init(model, np.ascontiguousarray(patch_matrix(w, b).T), node.input[1] + "_patch")
        nodes.append(helper.make_node("Gemm", [t, weight] + ([node.input[2]] if b is not None else []), [y],
                                      name=fresh(model, base + "_Gemm"), transB=1))
    else:
        nodes.append(helper.make_node("MatMul", [t, init(model, patch_matrix(w, b), node.input[1] + "_patch")], [y],
                                      name=fresh(model, base + "_MatMul")))
    if b is not None and not gemm:
        z = fresh(model, base + "_biased")
        nodes.append(helper.make_node("Add", [y, node.input[2]], [z], name=fresh(model, base + "_Add")))
        y = z
    y = reshape(y, [-1, h, wd, O], "_nhwc")
    transpose(y, [0, 3, 1, 2], "_nchw", out=node.output[0])
    return nodes


def _build(model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
    return Splice(remove=[idx], nodes=patch_nodes(model, model.graph.node[idx]))


def _build_gemm(model: onnx.ModelProto, idx: int, shapes: dict) -> Splice:
    return Splice(remove=[idx], nodes=patch_nodes(model, model.graph.node[idx], gemm=True))


def _patchify(node: onnx.NodeProto) -> bool:
    return max(attrs(node).get("strides", [1, 1])) >= 2


register(Pattern("patch_matmul", ("Conv",), _build,
                 "patchify Conv (kernel == stride, no pads) => [Slice] Reshape Transpose Reshape MatMul [Add] "
                 "Reshape Transpose",
                 _patchify, lift_qdq=True, qdq_build=_build_gemm))
