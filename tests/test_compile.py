"""torch.export (strict and non-strict) and torch.compile(fullgraph=True) on pixelfold modules.

Outputs must match eager; for unfrozen modules the gradients with respect to
the input and to the original ``weight``/``bias`` Parameters must match eager
under ``aot_eager`` (which traces the backward graph too).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import pixelfold

# (id, factory, input shape): 1-D/2-D/3-D, every module kind, every order
CASES: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    ("fold1d-reflect", lambda: pixelfold.fold(nn.Conv1d(3, 4, 3, stride=2, padding=1, padding_mode="reflect"), 2),
     (2, 3, 17)),
    ("fold2d-crd-groups", lambda: pixelfold.fold(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), 2),
     (2, 4, 15, 16)),
    ("fold2d-dcr-same", lambda: pixelfold.fold(nn.Conv2d(3, 4, 4, stride=2, padding="valid", dilation=2), 2, "dcr"),
     (1, 3, 13, 12)),
    ("fold3d-dcr", lambda: pixelfold.fold(nn.Conv3d(2, 4, 3, stride=2, padding=1), 2, order="dcr"), (1, 2, 6, 7, 8)),
    ("poly2d-focus", lambda: pixelfold.polyphase(nn.Conv2d(4, 4, 3, stride=2, padding=1), 2, "focus"),
     (1, 4, 12, 11)),
    ("poly1d-stride3", lambda: pixelfold.polyphase(nn.Conv1d(2, 3, 5, stride=3, padding=2)), (1, 2, 20)),
    ("sub2d-shared", lambda: pixelfold.subpixel(nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1)), (1, 4, 6, 5)),
    ("sub2d-phases", lambda: pixelfold.subpixel(nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
                                                "phases"), (1, 4, 5, 6)),
    ("sub1d-phases", lambda: pixelfold.subpixel(nn.ConvTranspose1d(4, 3, 5, stride=3, padding=1), "phases"),
     (1, 4, 7)),
    ("sub3d-dcr", lambda: pixelfold.subpixel(nn.ConvTranspose3d(2, 2, 4, stride=2, padding=1), order="dcr"),
     (1, 2, 3, 3, 3)),
]

REARRANGE: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    ("s2d3d-crd", lambda: pixelfold.SpaceToDepth(2), (1, 2, 4, 6, 4)),
    ("s2d2d-rect-dcr", lambda: pixelfold.SpaceToDepth((1, 2), "dcr"), (1, 3, 4, 6)),
    ("d2s1d-dcr", lambda: pixelfold.DepthToSpace(3, "dcr"), (1, 6, 5)),
    ("focus", lambda: pixelfold.FocusSlice(), (2, 3, 8, 8)),
    ("merge", lambda: pixelfold.merge(nn.Sequential(pixelfold.FocusSlice(), nn.Conv2d(12, 8, 3, padding=1))),
     (1, 3, 8, 10)),
    ("to_space", lambda: pixelfold.to_space(nn.Conv2d(16, 2, 3, padding=1), 4), (1, 1, 16, 12)),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _make(factory: Callable[[], nn.Module], frozen: bool) -> nn.Module:
    torch.manual_seed(0)
    model = factory()
    if frozen:
        model.freeze()
    return model


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- torch.export
@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("frozen", [False, True], ids=["live", "frozen"])
@pytest.mark.parametrize("name,factory,shape", CASES, ids=[c[0] for c in CASES])
def test_torch_export(name, factory, shape, frozen, strict):
    model = _make(factory, frozen)
    ep = torch.export.export(model, (torch.randn(shape),), strict=strict)
    x = torch.randn(shape)
    assert _close(ep.module()(x), model(x))


@pytest.mark.parametrize("name,factory,shape", REARRANGE, ids=[c[0] for c in REARRANGE])
def test_torch_export_rearrange_and_plain_convs(name, factory, shape):
    model = _make(factory, False)
    for strict in (False, True):
        ep = torch.export.export(model, (torch.randn(shape),), strict=strict)
        x = torch.randn(shape)
        assert _close(ep.module()(x), model(x))


def test_torch_export_dynamic_shapes():
    model = pixelfold.fold(nn.Conv2d(3, 8, 3, stride=2, padding=1), 2, "dcr")
    batch, h = torch.export.Dim("batch"), torch.export.Dim("h", min=2, max=128)
    ep = torch.export.export(model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch, 2: 2 * h},))
    x = torch.randn(5, 3, 22, 16)
    assert _close(ep.module()(x), model(x))


def test_torch_export_channels_last():
    model = pixelfold.polyphase(nn.Conv2d(3, 4, 5, padding=2), 2, "dcr")
    x = torch.randn(1, 3, 12, 12).to(memory_format=torch.channels_last)
    ep = torch.export.export(model, (x,))
    assert _close(ep.module()(x), model(x))


# ---------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("frozen", [False, True], ids=["live", "frozen"])
@pytest.mark.parametrize("name,factory,shape", CASES, ids=[c[0] for c in CASES])
def test_compile_forward(name, factory, shape, frozen, backend):
    model = _make(factory, frozen)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    x = torch.randn(shape)
    with torch.no_grad():
        assert _close(compiled(x), model(x))


@pytest.mark.parametrize("name,factory,shape", REARRANGE, ids=[c[0] for c in REARRANGE])
def test_compile_rearrange_and_plain_convs(name, factory, shape):
    model = _make(factory, False)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    inputs = [torch.randn(shape)]
    if len(shape) == 4:
        inputs.append(torch.randn(shape).to(memory_format=torch.channels_last))
    for x in inputs:
        assert _close(compiled(x), model(x))


@pytest.mark.parametrize("name,factory,shape", CASES, ids=[c[0] for c in CASES])
def test_compile_gradients_aot_eager(name, factory, shape):
    model = _make(factory, False)
    params = [p for p in (model.weight, model.bias) if p is not None]
    x = torch.randn(shape)
    g_out = None

    def grads(fn):
        xi = x.clone().requires_grad_(True)
        y = fn(xi)
        nonlocal g_out
        if g_out is None:
            g_out = torch.randn_like(y)
        return torch.autograd.grad(y, [xi, *params], g_out)

    expected = grads(model)
    got = grads(torch.compile(model, fullgraph=True, backend="aot_eager"))
    for e, g in zip(expected, got):
        assert _close(g, e)


def test_compile_frozen_input_gradient():
    model = _make(CASES[1][1], True)
    x = torch.randn(CASES[1][2], requires_grad=True)
    (ge,) = torch.autograd.grad(model(x).square().sum(), x)
    (gc,) = torch.autograd.grad(torch.compile(model, fullgraph=True, backend="aot_eager")(x).square().sum(), x)
    assert _close(gc, ge)


def test_compile_training_step_updates_original_weight():
    """An optimizer on the original Parameters trains the compiled module like the eager one."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    model = pixelfold.fold(conv, 2, "dcr")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    x = torch.randn(2, 3, 16, 16)
    compiled(x).square().mean().backward()
    opt.step()
    assert _close(compiled(x), conv(x))


def test_compile_dynamic_batch():
    model = pixelfold.subpixel(nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1), order="dcr")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=True)
    for n in (1, 3):
        x = torch.randn(n, 4, 5, 6)
        assert _close(compiled(x), model(x))


def test_compile_inductor_tiny():
    """The default backend (inductor, C++ codegen on CPU): ~12 s cold on 2 cores, ~3 s with a warm cache."""
    model = pixelfold.fold(nn.Conv1d(3, 4, 3, stride=2, padding=1), 2)
    x = torch.randn(2, 3, 15)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert _close(compiled(x), model(x))
