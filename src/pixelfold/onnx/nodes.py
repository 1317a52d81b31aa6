"""Small graph queries and node builders shared by the layout patterns (transposed, subpixel, onehot, merge).

Kept apart from :mod:`pixelfold.onnx.graph` so that the patterns can grow without touching the core
helpers; nothing here does weight arithmetic.

>>> from onnx import helper
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["y"], ["z"])], "g", [], [])
>>> m = helper.make_model(g)
>>> producer(m, "y"), consumers(m, "y"), producer(m, "x")
(0, [1], None)
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from pixelfold.errors import FoldError
from pixelfold.onnx.graph import const, fresh


def producer(model: onnx.ModelProto, name: str) -> int | None:
    """Index of the node that outputs ``name`` (None for graph inputs and initializers)."""
    return next((i for i, n in enumerate(model.graph.node) if name in n.output), None)


def consumers(model: onnx.ModelProto, name: str) -> list[int]:
    """Indices of the nodes that read ``name`` (a node reading it twice is listed once)."""
    return [i for i, n in enumerate(model.graph.node) if name in n.input]


def sole_consumer(model: onnx.ModelProto, name: str, what: str) -> int:
    """The index of the only node reading ``name``; :class:`FoldError` if it has others or is a graph output."""
    if name in {o.name for o in model.graph.output}:
        raise FoldError(f"{what}: {name!r} is also a graph output, so it must stay; the pair is kept")
    uses = consumers(model, name)
    if len(uses) != 1:
        raise FoldError(f"{what}: {name!r} has {len(uses)} consumers; the pair can be fused only when it has exactly 1")
    return uses[0]


def text(value: object, default: str) -> str:
    """A string attribute as ``str`` (ONNX stores them as bytes)."""
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def elem_dtype(model: onnx.ModelProto, name: str) -> np.dtype:
    """NumPy dtype of value ``name`` (from shape inference); float32 when unknown."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.name == name and vi.type.tensor_type.elem_type:
            return helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    return np.dtype(np.float32)


def conv_weights(model: onnx.ModelProto, node: onnx.NodeProto, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(weight, bias or None)`` of a Conv/ConvTranspose; :class:`FoldError` unless both are initializers."""
    w = const(model, node.input[1])
    if w is None:
        raise FoldError(f"{what}: the weight {node.input[1]!r} is not an initializer; constant weights are needed")
    if w.ndim != 4:
        raise FoldError(f"{what}: handles 2-D convs (rank-4 weight); this weight has rank {w.ndim}")
    b = None
    if len(node.input) > 2 and node.input[2]:
        b = const(model, node.input[2])
        if b is None:
            raise FoldError(f"{what}: the bias {node.input[2]!r} is not an initializer; constant biases are needed")
    return w, b


def static_shape(shapes: dict, name: str, what: str, rank: int = 4) -> list[int]:
    """The static shape of ``name``; :class:`FoldError` if it is dynamic or not of ``rank``."""
    if name not in shapes:
        raise FoldError(f"{what}: the shape of {name!r} is not static; it is needed to build the weights")
    s = shapes[name]
    if len(s) != rank:
        raise FoldError(f"{what}: handles rank-{rank} tensors (2-D); {name!r} has rank {len(s)}")
    return s


def init(model: onnx.ModelProto, array: np.ndarray, base: str) -> str:
    """Add ``array`` as a fresh initializer; its name."""
    name = fresh(model, base)
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
    return name


def dims(model: onnx.ModelProto, name: str, what: str, need: str = "", why: str = "") -> list[int | None]:
    """The ``N, C, H, W`` dims of ``name`` (None where dynamic); :class:`FoldError` if its rank is not 4 or a
    dim named in ``need`` (e.g. ``"HW"``) is dynamic (``why`` says what for)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    vi = next((v for v in list(inferred.input) + list(inferred.value_info) + list(inferred.output) if v.name == name),
              None)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        raise FoldError(f"{what}: the rank of {name!r} is unknown; a rank-4 (2-D) tensor is needed")
    d = [x.dim_value if x.HasField("dim_value") else None for x in vi.type.tensor_type.shape.dim]
    if len(d) != 4:
        raise FoldError(f"{what}: handles rank-4 tensors (2-D); {name!r} has rank {len(d)}")
    missing = "".join(c for c, v in zip("NCHW", d) if c in need and v is None)
    if missing:
        raise FoldError(f"{what}: dim {'/'.join(missing)} of {name!r} is not static; it is needed {why}".rstrip())
    return d


#: a Slice end that means "to the end" (ONNX clamps it)
TO_END = int(np.iinfo(np.int64).max)


def crop(model: onnx.ModelProto, x: str, axes: list[int], start: list[int], end: list[int], base: str,
         out: str | None = None, tag: str = "_Slice") -> tuple[str, onnx.NodeProto]:
    """A Slice of ``x`` on ``axes`` (``end`` negative: from the end, :data:`TO_END`: to the end); ``(value, node)``."""
    names = [init(model, np.array(v, np.int64), base + n) for v, n in ((start, "_st"), (end, "_en"), (axes, "_ax"))]
    y = out or fresh(model, base + "_cut")
    return y, helper.make_node("Slice", [x, *names], [y], name=fresh(model, base + tag))


def pad_or_slice(model: onnx.ModelProto, x: str, lo: list[int], hi: list[int], base: str) -> tuple[str, list[onnx.NodeProto]]:
    """Nodes padding (positive) or cropping (negative) H and W of ``x`` by ``lo``/``hi``; the new value name.

    Independent of the spatial size (crops count from the ends), so it works for dynamic H and W too.
    """
    nodes: list[onnx.NodeProto] = []
    axes = [i for i in range(2) if lo[i] < 0 or hi[i] < 0]
    if axes:
        x, node = crop(model, x, [2 + i for i in axes], [max(-lo[i], 0) for i in axes],
                       [hi[i] if hi[i] < 0 else TO_END for i in axes], base)
        nodes.append(node)
    if any(v > 0 for v in lo + hi):
        p = init(model, np.array([0, 0, max(lo[0], 0), max(lo[1], 0), 0, 0, max(hi[0], 0), max(hi[1], 0)], np.int64),
                 base + "_pads")
        y = fresh(model, base + "_padded")
        nodes.append(helper.make_node("Pad", [x, p], [y], name=fresh(model, base + "_Pad"), mode="constant"))
        x = y
    return x, nodes


def dense_index(shape: tuple[int, ...], groups: int) -> torch.Tensor:
    """A grouped conv weight ``(O, C/g, *K)`` as 1-based indices written out densely ``(O, C, *K)`` (0 between groups).

    Gather ``concat([0], w.flatten())`` at a transformed index map to get the transformed weight; see
    :func:`pixelfold.probe._regroup` for splitting it back into groups.

    >>> dense_index((2, 1, 1, 1), 2).flatten().tolist()
    [1, 0, 0, 2]
    """
    O, Cg, *K = shape
    index = torch.arange(1, int(np.prod(shape)) + 1, dtype=torch.long).reshape(shape)
    dense = torch.zeros(O, Cg * groups, *K, dtype=torch.long)
    for j in range(groups):
        rows = slice(j * O // groups, (j + 1) * O // groups)
        dense[rows, j * Cg:(j + 1) * Cg] = index[rows]
    return dense


def gather(w: np.ndarray, index: torch.Tensor) -> np.ndarray:
    """``w`` gathered at a 1-based index map from :func:`dense_index` (0: a structural zero)."""
    return np.concatenate([np.zeros(1, w.dtype), np.array(w).reshape(-1)])[index.numpy()]


def constant(model: onnx.ModelProto, name: str) -> tuple[np.ndarray | None, int | None]:
    """``(value, index of its Constant node or None)`` for an initializer or a ``Constant`` node's output."""
    v = const(model, name)
    if v is not None:
        return v, None
    i = producer(model, name)
    if i is not None and model.graph.node[i].op_type == "Constant":
        a = model.graph.node[i].attribute
        if len(a) == 1 and a[0].name == "value":
            return numpy_helper.to_array(a[0].t), i
    return None, None
