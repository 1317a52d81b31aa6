"""The patch_linear profile: every patchify conv as one matrix product (issue 12 item 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pixelfold as pf


class _Embed(nn.Module):  # a ViT-style and a Qwen2-VL-style patch embedding, and a conv that is not a patchify one
    def __init__(self) -> None:
        super().__init__()
        self.vit = nn.Conv2d(3, 32, 16, stride=16)
        self.vlm = nn.Conv3d(3, 24, (2, 14, 14), stride=(2, 14, 14), bias=False)
        self.other = nn.Conv2d(3, 8, 4, stride=4, padding=1)

    def forward(self, image, video):
        return self.vit(image).flatten(2), self.vlm(video).flatten(1), self.other(image)


def test_patch_linear_profile_rewrites_every_patchify_conv_exactly():
    torch.manual_seed(0)
    model = _Embed().eval()
    args = (torch.randn(2, 3, 64, 48), torch.randn(5, 3, 2, 14, 14))
    new, report = pf.rewrite(model, "patch_linear", example_inputs=args)
    assert {e.path: e.status for e in report.entries} == {"vit": "changed", "vlm": "changed", "other": "kept"}
    assert report.ok and report.entries[0].after == "patches 16×16 → linear 768→32"
    assert isinstance(new.vit, pf.PatchLinear) and isinstance(new.vlm, pf.PatchLinear)
    assert new.vit.weight is not model.vit.weight and torch.equal(new.vit.weight, model.vit.weight)
    for got, ref in zip(new(*args), model(*args)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_patch_linear_compiles_and_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    from pixelfold.export import to_onnx

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 8, stride=8)
    m = pf.PatchLinear(conv).eval()
    x = torch.randn(1, 3, 32, 40)
    compiled = torch.compile(m, fullgraph=True)
    torch.testing.assert_close(compiled(x), conv(x), rtol=1e-5, atol=1e-5)
    to_onnx(m, x, tmp_path / "p.onnx")  # checked in onnxruntime against PyTorch


class _CopyCounter:
    """Counts the aten ops that write a new tensor's worth of memory from another (copies), under a dispatch mode."""

    COPIES = {"copy_", "clone", "_to_copy", "contiguous", "_unsafe_view_copy"}

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counter.ops.append(func.overloadpacket.__name__)
                return func(*args, **(kwargs or {}))

        self.ops: list[str] = []
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)

    @property
    def copies(self) -> list[str]:
        return [op for op in self.ops if op in self.COPIES]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("order", ["crd", "dcr"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("memory_format", ["conv", "channels_last"])
def test_patch_linear_copies_the_input_once_and_the_output_never(dims, order, layout, memory_format):
    """One copy (the patch gather) per forward; the output is written by the GEMM in its final layout. The old
    forward copied three times (space_to_depth, F.linear making its permuted input contiguous, the output back to
    NCHW): 1.50× the hand-written F.linear on ViT-B/16. Values in float64 against the conv; strides as promised."""
    torch.manual_seed(0)
    conv = (nn.Conv2d(3, 8, 4, stride=4) if dims == 2 else nn.Conv3d(3, 8, (2, 4, 4), stride=(2, 4, 4))).double()
    x = torch.randn(2, 3, *([5, 9, 10][-dims:]), dtype=torch.float64)  # remainders: the conv ignores them
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    m = pf.PatchLinear(conv, order, memory_format).freeze().eval()
    with torch.no_grad():
        ref = conv(x)
        with _CopyCounter() as count:
            y = m(x)
    assert len(count.copies) == 1, count.ops
    torch.testing.assert_close(y, ref, rtol=1e-13, atol=1e-13)
    if memory_format == "conv":  # float32: torch's float64 Conv3d answers contiguous even for channels-last input
        assert y.stride() == conv.float()(x.float()).stride()
    else:  # the GEMM's (N, *out, O) memory
        assert y.movedim(1, -1).is_contiguous()


def test_patch_linear_memory_format_is_validated_and_planned():
    conv = nn.Conv2d(3, 8, 4, stride=4)
    with pytest.raises(pf.FoldError, match=r"memory_format must be 'conv' .* or 'channels_last' .*, got 'nhwc'"):
        pf.PatchLinear(conv, memory_format="nhwc")
    assert "memory_format='channels_last'" in repr(pf.PatchLinear(conv, memory_format="channels_last"))
    assert "memory_format" not in repr(pf.PatchLinear(conv))


@pytest.mark.parametrize("memory_format", ["conv", "channels_last"])
def test_patch_linear_empty_batch_and_zeros(memory_format):
    """Regression: the one-copy forward reshaped with -1, which an empty batch cannot resolve (RuntimeError)."""
    conv = nn.Conv2d(3, 8, 4, stride=4)
    m = pf.PatchLinear(conv, memory_format=memory_format)
    for x in (torch.zeros(0, 3, 16, 16), torch.zeros(0, 3, 16, 16).to(memory_format=torch.channels_last),
              torch.zeros(2, 3, 17, 9)):
        y = m(x)
        assert y.shape == conv(x).shape
        torch.testing.assert_close(y, conv(x), rtol=0, atol=1e-6)
