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
