"""Fail-closed verification: onnx.checker (full_check) + onnxruntime on random inputs."""

from __future__ import annotations

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
