"""pixelfold.zoo: every factory builds deterministically at its stated input shape, and has the layer it is there for."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pixelfold
from pixelfold.zoo import ZOO, Focus, build, example_input


def test_zoo_size_and_entries() -> None:
    assert len(ZOO) >= 12
    for name, z in ZOO.items():
        assert z.description and len(z.input_shape) in (3, 4) and z.input_shape[0] == 1, name
        assert max(z.input_shape[2:]) <= 128, name  # small enough to compile in seconds


@pytest.mark.parametrize("name", sorted(ZOO))
def test_builds_deterministically(name: str) -> None:
    a, b = build(name), build(name)
    assert not a.training
    for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(pa, pb), (name, ka)
    x = example_input(name)
    assert tuple(x.shape) == ZOO[name].input_shape and torch.equal(x, example_input(name))
    with torch.no_grad():
        y = a(x)
    assert torch.isfinite(y).all()


def _convs(m: nn.Module, cls: type) -> list[nn.Module]:
    return [c for c in m.modules() if type(c) is cls]


def test_each_model_has_its_layer() -> None:
    def spec(c: nn.Module) -> tuple:
        return (c.kernel_size, c.stride, c.padding, getattr(c, "output_padding", None))

    assert [spec(c) for c in _convs(build("fsrcnn_x3"), nn.ConvTranspose2d)] == [((9, 9), (3, 3), (4, 4), (2, 2))]
    assert [spec(c) for c in _convs(build("fsrcnn_x4"), nn.ConvTranspose2d)] == [((9, 9), (4, 4), (4, 4), (3, 3))]
    assert [spec(c)[:3] for c in _convs(build("unet_small"), nn.ConvTranspose2d)] == [((2, 2), (2, 2), (0, 0))] * 2
    dcgan = [spec(c)[:3] for c in _convs(build("dcgan_generator"), nn.ConvTranspose2d)]
    assert dcgan == [((4, 4), (1, 1), (0, 0))] + [((4, 4), (2, 2), (1, 1))] * 3
    assert [spec(c)[:3] for c in _convs(build("upsampler_1d"), nn.ConvTranspose1d)] == [((16,), (8,), (4,))]
    assert _convs(build("espcn_x3"), nn.PixelShuffle)[0].upscale_factor == 3
    assert spec(build("conv_k7s4").stem)[:3] == ((7, 7), (4, 4), (3, 3))
    assert spec(build("patchify_k8s8").stem)[:3] == ((8, 8), (8, 8), (0, 0))
    assert spec(build("resnet18").conv1)[:3] == ((7, 7), (2, 2), (3, 3))


def test_focus_is_yolov5s_and_merges_exactly() -> None:
    model = build("yolov5_focus")
    assert type(model.stem) is Focus and type(model.stem).__name__ == "Focus"
    x = example_input("yolov5_focus").double()
    stem = model.stem.double()
    merged = pixelfold.merge(stem)  # Focus.conv is YOLOv5's Conv wrapper: comes back with its conv merged
    assert merged.conv.kernel_size == (6, 6) and merged.conv.stride == (2, 2)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), stem(x), rtol=1e-9, atol=1e-12)


def test_unknown_name() -> None:
    with pytest.raises(pixelfold.FoldError, match=r"no zoo model 'yolo'; the zoo has \["):
        build("yolo")
