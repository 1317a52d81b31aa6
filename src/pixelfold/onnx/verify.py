"""Fail-closed verification: onnx.checker (full_check) + onnxruntime on random inputs.

:func:`check_candidate` is the one verification step of a rewrite, shared by :func:`pixelfold.onnx.api.rewrite_onnx`
and :func:`pixelfold.onnx.solve.rewrite_onnx_for_target`; :func:`end_to_end` is their final check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

_DTYPES = {1: np.float32, 11: np.float64, 10: np.float16}


def _inputs(model: onnx.ModelProto, rng: np.random.Generator, dyn: int) -> dict[str, np.ndarray]:
    init = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else dyn for d in tt.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(_DTYPES.get(tt.elem_type, np.float32))
    return feeds


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` under onnxruntime's CPU provider with graph optimisations off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def max_error(before: onnx.ModelProto, after: onnx.ModelProto, seed: int = 0) -> tuple[float, float]:
    """``(max |Δ|, max |reference|)`` over random inputs at the declared shapes (dynamic dims: 8 and 16).

    Raises whatever the checker or onnxruntime raises when ``after`` is not a valid model.
    """
    onnx.checker.check_model(after, full_check=True)
    rng = np.random.default_rng(seed)
    err, scale = 0.0, 0.0
    for dyn in (8, 16):
        feeds = _inputs(before, rng, dyn)
        for a, b in zip(run(before, feeds), run(after, feeds)):
            if a.shape != b.shape:
                return float("inf"), 0.0
            if a.size:
                err = max(err, float(np.max(np.abs(a.astype(np.float64) - b))))
                scale = max(scale, float(np.max(np.abs(a))))
    return err, scale


def tolerance(scale: float, dtype: type = np.float32) -> float:
    """A float32 tolerance: a few ULPs of the largest output, summed over accumulation order."""
    return 1e-5 * max(scale, 1.0) if dtype == np.float32 else 1e-12 * max(scale, 1.0)


def compare(before: onnx.ModelProto, after: onnx.ModelProto, seed: int = 0,
            anchors: list[str] | None = None) -> tuple[float, float, str, float]:
    """``(max |Δ|, tolerance, note, max |y|)``: float graphs by :func:`max_error`; int8 QDQ graphs by
    :func:`pixelfold.onnx.qdq_verify.compare` (exact integer check of the ``anchors`` Convs, ORT in LSBs)."""
    from pixelfold.onnx import qdq, qdq_verify

    if qdq.is_qdq(before):
        return qdq_verify.compare(before, after, seed, anchors)
    err, scale = max_error(before, after, seed)
    return err, tolerance(scale), "", scale


@dataclass(frozen=True)
class Check:
    """What :func:`check_candidate` measured: ``error`` against ``tolerance``, the ``note`` (int8 QDQ: every
    measurement; float: empty) and the largest |reference output| ``scale``."""

    error: float
    tolerance: float
    note: str
    scale: float

    @property
    def ok(self) -> bool:
        """True when the error is within the tolerance (the rewrite is kept)."""
        return self.error <= self.tolerance

    def reason(self, label: str) -> str:
        """Why the rewrite ``label`` is reverted (empty when it is kept)."""
        return "" if self.ok else f"{label}: max |Δ| {self.error:.3g} > tolerance {self.tolerance:.3g}; reverted"


def check_candidate(before: onnx.ModelProto, cand: onnx.ModelProto, anchors: list[str], seed: int = 0) -> Check:
    """Verify ``cand`` (``before`` with the nodes ``anchors`` rewritten): prune its unused initializers (in
    place), strict shape inference, then :func:`compare` (float graphs: onnxruntime in ULPs; int8 QDQ graphs:
    :mod:`pixelfold.onnx.qdq_verify`'s LSB gates). Raises what the checker or onnxruntime raises (the callers
    fail closed on it, see :func:`failure`).

    >>> from onnx import helper, TensorProto
    >>> io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 4, 4])
    >>> g = lambda op: helper.make_graph([helper.make_node(op, ["x"], ["y"], name="n")], "g", [io("x")], [io("y")])
    >>> m = lambda op: helper.make_model(g(op), opset_imports=[helper.make_opsetid("", 17)])
    >>> c = check_candidate(m("Identity"), m("Relu"), ["n"])
    >>> c.ok, c.reason("relu")[:14]
    (False, 'relu: max |Δ| ')
    >>> c = check_candidate(m("Relu"), m("Relu"), ["n"])
    >>> c.ok, c.error, c.tolerance == tolerance(c.scale), c.note
    (True, 0.0, True, '')
    """
    from pixelfold.onnx import graph

    graph.prune_initializers(cand)
    onnx.shape_inference.infer_shapes(cand, check_type=True, strict_mode=True)
    err, tol, note, scale = compare(before, cand, seed, anchors)
    return Check(err, tol, note, scale)


def failure(label: str, err: Exception) -> str:
    """The report's reason for a rewrite ``label`` whose check (or build) raised ``err``: reverted."""
    return f"{label}: {type(err).__name__}: {err}"[:300]


def end_to_end(before: onnx.ModelProto, after: onnx.ModelProto, anchors: list[str]) -> tuple[Check, str]:
    """The final check of a rewritten graph against the original (seed 1, every rewritten node an anchor),
    and where it was checked (int8 QDQ graphs: with the measurements)."""
    from pixelfold.onnx import qdq

    err, tol, note, scale = compare(before, after, seed=1, anchors=anchors)
    return Check(err, tol, note, scale), "onnxruntime CPU" + (f"; {note}" if qdq.is_qdq(before) else "")
