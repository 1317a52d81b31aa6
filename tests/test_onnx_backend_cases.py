"""pixelfold.onnx on ONNX's own backend node test cases (``onnx.backend.test.case.node``): graphs and expected
outputs this project did not write. Each case's weights (graph inputs there) become initializers, every transform
that anchors on its ops is tried, and the rewritten graph must reproduce ONNX's expected outputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

from pixelfold.onnx import verify  # noqa: E402
from pixelfold.onnx.api import rewrite_onnx  # noqa: E402
from pixelfold.onnx.patterns import PATTERNS  # noqa: E402

OPS = {"Conv", "ConvTranspose", "SpaceToDepth", "DepthToSpace"}


def _cases() -> dict:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    out = {}
    for c in cases:
        ops = {n.op_type for n in c.model.graph.node}
        if c.kind == "node" and ops & OPS and c.data_sets:
            out[c.name] = c
    return out


CASES = _cases()


def _frozen(case) -> tuple[onnx.ModelProto, dict, list]:
    """The case's model with every graph input but the first turned into an initializer (its test data)."""
    inputs, outputs = case.data_sets[0]
    m = onnx.ModelProto()
    m.CopyFrom(case.model)
    g = m.graph
    names = [i.name for i in g.input]
    for name, value in list(zip(names, inputs))[1:]:
        g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    keep = [vi for vi in g.input if vi.name == names[0]]
    del g.input[:]
    g.input.extend(keep)
    return m, {names[0]: np.asarray(inputs[0])}, [np.asarray(o) for o in outputs]


def test_the_backend_cases_are_found():
    assert len(CASES) >= 20, sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_backend_case_rewritten_matches_onnx_expected_outputs(name):
    model, feeds, expected = _frozen(CASES[name])
    new, report = rewrite_onnx(model, tuple(PATTERNS))
    assert not report.failed, report.failed  # a wrong rewrite would be reverted and reported failed
    got, before = verify.run(new, feeds), verify.run(model, feeds)
    for g, b, e in zip(got, before, expected):
        assert g.shape == e.shape
        tol = 2e-3 if e.dtype == np.float16 else 1e-5  # ORT's fp16 kernels vs ONNX's reference: ~1e-3 apart
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol * max(1.0, float(np.abs(e).max(initial=0))))
        if report.changed:  # and as close to onnxruntime's run of the original as the float32 sum order allows
            np.testing.assert_allclose(g, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max(initial=0))))


def test_backend_cases_are_rewritten_not_just_passed_through():
    """Not vacuous: the strided Conv/ConvTranspose and the rearrangement cases are rewritten."""
    changed = {}
    for name, case in CASES.items():
        model, _, _ = _frozen(case)
        _, report = rewrite_onnx(model, tuple(PATTERNS))
        if report.changed:
            changed[name] = sorted({e.transform for e in report.changed})
    for must in ("test_conv_with_strides_padding", "test_convtranspose", "test_depthtospace_crd_mode_example",
                 "test_spacetodepth_example"):
        assert must in changed, (must, changed)
    assert len(changed) >= 15, changed
