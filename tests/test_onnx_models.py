"""pixelfold.onnx on graphs we do not write by hand: torchvision exports (issue 11)."""

from __future__ import annotations

import io

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from pixelfold.onnx import verify  # noqa: E402
from pixelfold.onnx.api import rewrite_onnx  # noqa: E402


def _export(name: str, size: int = 32) -> "onnx.ModelProto":
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    f = io.BytesIO()
    torch.onnx.export(net, torch.randn(1, 3, size, size), f, opset_version=17, dynamo=False)
    return onnx.load_from_string(f.getvalue())


def _check(m, n_changed):
    new, rep = rewrite_onnx(m)
    assert len(rep.changed) == n_changed, [(e.path, e.status, e.reason) for e in rep.entries]
    assert not rep.failed
    err, scale = verify.max_error(m, new, seed=3)
    assert err <= 1e-5 * max(scale, 1.0)
    used = {i for n in new.graph.node for i in n.input}
    assert all(t.name in used for t in new.graph.initializer)  # old weights removed
    return rep


def test_mobilenet_v3_small_stem_and_depthwise_fold():
    """The stem and the 4 depthwise stride-2 convs (group > 1: CRD Reshape/Transpose/Reshape) all fold."""
    rep = _check(_export("mobilenet_v3_small"), 5)
    assert not rep.skipped
    assert sum(e.after.startswith("Pad → Reshape → Transpose → Reshape → Conv") for e in rep.changed) == 4


@pytest.mark.slow
@pytest.mark.parametrize("name,n", [("resnet18", 7)])
def test_torchvision_slow(name, n):
    _check(_export(name), n)


def test_sweep_writes_table(tmp_path):
    from pixelfold.onnx import sweep

    assert sweep.main(["--out", str(tmp_path), "--models", "mobilenet_v3_small"]) == 0
    text = (tmp_path / "onnx_sweep.md").read_text()
    assert "| mobilenet_v3_small | fold ×5 | 0 skipped, 0 failed |" in text
    assert "| fold ×5, 0 skipped, 0 failed | 0 |" in text  # int8 QDQ: integer accumulators exact


def _check_qdq(name, n_changed, activation="int8"):
    from pixelfold.onnx import qdq_verify as qv

    q = qv.quantize(_export(name), per_channel=True, activation=activation)
    new, rep = rewrite_onnx(q)
    assert len(rep.changed) == n_changed, [(e.path, e.status, e.reason) for e in rep.entries]
    assert not rep.failed
    e = qv.measure(q, new, [c.path for c in rep.changed], seed=3)
    assert e["checked"] == n_changed and e["integer"] == 0.0, e
    assert e["local_off"] <= 1.0, e  # float32 conv with a reordered sum: one LSB at most at the folded conv
    if e["fused"]:
        assert e["on"] == 0.0, e
    return rep, e


@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_mobilenet_v3_small_qdq_bit_identical(activation):
    rep, e = _check_qdq("mobilenet_v3_small", 5, activation)  # the stem and the 4 depthwise stride-2 convs
    assert not rep.skipped


@pytest.mark.slow
@pytest.mark.parametrize("name,n", [("resnet18", 7), ("regnet_x_400mf", 9)])  # regnet: + 4 grouped stride 2
@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_torchvision_qdq_slow(name, n, activation):
    _check_qdq(name, n, activation)
