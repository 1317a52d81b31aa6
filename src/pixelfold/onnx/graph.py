"""Graph access: load/save, initializers, static shapes, fresh names."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from pixelfold.errors import FoldError

MIN_OPSET, MAX_OPSET = 13, 28


def load(path: str) -> onnx.ModelProto:
    """Load a model and check its default-domain opset is one we handle (13-28)."""
    model = onnx.load(path)
    check_opset(model)
    return model


def opset(model: onnx.ModelProto) -> int:
    """The default-domain opset version of ``model``."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise FoldError("the model imports no default-domain opset; re-export it with opset 13-28")


def check_opset(model: onnx.ModelProto) -> None:
    """Raise :class:`FoldError` unless the default opset is in 13..28."""
    v = opset(model)
    if not MIN_OPSET <= v <= MAX_OPSET:
        raise FoldError(
            f"the model uses opset {v}; pixelfold.onnx handles opsets {MIN_OPSET}-{MAX_OPSET}; "
            "convert it with onnx.version_converter.convert_version"
        )


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializer name -> tensor proto."""
    return {t.name: t for t in model.graph.initializer}


def const(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of initializer ``name`` as NumPy, or None if it is not a constant initializer."""
    t = initializers(model).get(name)
    return None if t is None else numpy_helper.to_array(t)


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Value name -> fully static shape, after strict shape inference (names with dynamic dims left out)."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    out: dict[str, list[int]] = {}
    g = inferred.graph
    for vi in itertools.chain(g.input, g.value_info, g.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [d.dim_value for d in dims]
    return out


def fresh(model: onnx.ModelProto, base: str) -> str:
    """A value/initializer name not used anywhere in ``model``."""
    used = {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        used.update(n.input)
        used.update(n.output)
        used.add(n.name)
    used.update(i.name for i in model.graph.input)
    for i in itertools.count():
        name = f"{base}_pf{i}"
        if name not in used:
            return name
    raise AssertionError("unreachable")


def name_nodes(model: onnx.ModelProto) -> None:
    """Give (in place) every unnamed node the name the reports use for it, ``node{i}`` (its index), or a fresh
    one where that is taken: a rewrite inserts nodes, so an index is no node's identity afterwards.

    >>> g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"]),
    ...                             onnx.helper.make_node("Neg", ["y"], ["z"], name="node0")], "g", [], [])
    >>> m = onnx.helper.make_model(g)
    >>> name_nodes(m)
    >>> [n.name for n in m.graph.node]
    ['node0_pf0', 'node0']
    """
    used = {n.name for n in model.graph.node}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"node{i}" if f"node{i}" not in used else fresh(model, f"node{i}")
            used.add(n.name)


def prune_initializers(model: onnx.ModelProto) -> None:
    """Remove (in place) initializers no node and no graph output uses any more."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    removed = {t.name for t in model.graph.initializer} - {t.name for t in keep}
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    gi = [vi for vi in model.graph.input if vi.name not in removed]
    del model.graph.input[:]
    model.graph.input.extend(gi)
