"""pixelfold modules are called like the layers they replace (issue 9, crashes): memory format and
contiguity of the output, unbatched ``(C, *spatial)`` input, the ``input=`` keyword, float64 backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pixelfold as pf
from pixelfold.samepad import SamePadPhaseConv


def _forms():
    torch.manual_seed(0)
    c = nn.Conv2d(3, 8, 3, padding=1)
    s = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    t = nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1)
    p = nn.Conv2d(3, 8, 4, stride=4)
    same = nn.Conv2d(3, 8, 3, stride=2, bias=False)
    return [
        ("polyphase", pf.polyphase(c, 2), c),
        ("polyphase-dcr", pf.polyphase(c, 2, order="dcr"), c),
        ("fold", pf.fold(s, 2), s),
        ("subpixel-shared", pf.subpixel(t), t),
        ("subpixel-phases", pf.subpixel(t, "phases"), t),
        ("patch-linear", pf.PatchLinear(p), p),
        ("patch-linear-dcr", pf.PatchLinear(p, order="dcr"), p),
        ("samepad", SamePadPhaseConv(same, 2), None),
    ]


FORMS = _forms()
IDS = [f[0] for f in FORMS]


@pytest.mark.parametrize("name, form, original", FORMS, ids=IDS)
def test_output_is_contiguous_like_the_conv(name, form, original):
    x = torch.randn(2, 3, 13, 11)  # odd sizes: polyphase and subpixel crop
    y = form(x)
    assert y.is_contiguous()
    y.view(-1)  # a downstream .view() works, as on the conv's output
    if original is not None:
        torch.testing.assert_close(y, original(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, form, original", FORMS, ids=IDS)
def test_channels_last_input_gives_channels_last_output_like_the_conv(name, form, original):
    x = torch.randn(2, 3, 13, 11).to(memory_format=torch.channels_last)
    y = form(x)
    if original is not None:
        ref = original(x)
        assert y.is_contiguous(memory_format=torch.channels_last) == ref.is_contiguous(
            memory_format=torch.channels_last)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, form, original", FORMS, ids=IDS)
def test_unbatched_input_and_input_keyword(name, form, original):
    x = torch.randn(3, 12, 10)
    y = form(input=x)
    assert y.dim() == 3
    torch.testing.assert_close(y, form(x[None])[0])
    if original is not None:
        torch.testing.assert_close(y, original(input=x), rtol=1e-5, atol=1e-5)


def test_subpixel_output_size_keyword_unbatched():
    t = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1)
    x = torch.randn(3, 5, 6)
    torch.testing.assert_close(pf.subpixel(t)(input=x, output_size=[10, 12]), t(x, output_size=[10, 12]),
                               rtol=1e-5, atol=1e-5)


def test_rank_error_names_both_ranks():
    with pytest.raises(pf.FoldError, match=r"expected input of rank 4 \(N, C, \*spatial\) or 3 \(C, \*spatial\), "
                                           r"got shape \(3, 8\)"):
        pf.polyphase(nn.Conv2d(3, 8, 3), 2)(torch.randn(3, 8))


@pytest.mark.parametrize("form", ["fold", "polyphase"])
def test_float64_backward_on_size1_phases(form):
    """PyTorch's float64 conv backward fails on a size-1 input dim with conv padding ("grad_weight must be
    contiguous"); the form pads explicitly there."""
    torch.manual_seed(0)
    conv = nn.Conv1d(2, 2, 3, stride=2, padding=2, groups=2, bias=False).double()
    m = pf.fold(conv, 2) if form == "fold" else pf.polyphase(conv, 1)
    x = torch.randn(1, 2, 2, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    g = torch.randn(conv(x_ref).shape, dtype=torch.float64)
    (m(x) * g).sum().backward()
    w_grad = conv.weight.grad.clone()
    conv.weight.grad = None
    (conv(x_ref) * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(w_grad, conv.weight.grad)


@pytest.mark.parametrize("order, fmt", [("crd", torch.contiguous_format), ("dcr", torch.channels_last)])
def test_patch_linear_fast_path_is_a_view(monkeypatch, order, fmt):
    """An input that is exactly one patch in the vector's memory order goes to F.linear with no rearrangement."""
    import pixelfold.layers as layers

    conv = nn.Conv2d(3, 8, 4, stride=4)
    m = pf.PatchLinear(conv, order=order)
    x = torch.randn(5, 3, 4, 4).to(memory_format=fmt)
    seen = []
    real_linear = torch.nn.functional.linear

    def spy(inp, *a, **k):
        seen.append(inp.data_ptr() == x.data_ptr())
        return real_linear(inp, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    y = m(x)
    assert seen == [True]  # the patches are x's own memory
    assert y.shape == (5, 8, 1, 1) and y.is_contiguous()
    torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)


def _nonfinite_mismatches(form, orig, shape):
    bad = 0
    for idx in range(shape[-2] * shape[-1]):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(idx))
        x.view(-1)[idx] = float("inf")
        with torch.no_grad():
            r, y = orig(x), form(x)
        bad += int((torch.isfinite(r) & ~torch.isfinite(y)).sum())
    return bad


@pytest.mark.parametrize("build, orig, shape, zero", [
    (lambda c: pf.fold(c, 2), nn.Conv2d(1, 1, 3, 2, 1), (1, 1, 8, 8), True),
    (lambda c: pf.fold(c, 2), nn.Conv2d(1, 1, 4, 2, 1), (1, 1, 8, 8), False),
    (lambda c: pf.polyphase(c, 2), nn.Conv2d(1, 1, 3, 1, 1), (1, 1, 8, 8), True),
    (lambda c: pf.polyphase(c, 1), nn.Conv2d(1, 1, 4, 2, 1), (1, 1, 8, 8), False),
    (lambda c: pf.subpixel(c), nn.ConvTranspose2d(1, 1, 4, 2, 1), (1, 1, 6, 6), True),
    (lambda c: pf.subpixel(c, "phases"), nn.ConvTranspose2d(1, 1, 4, 2, 1), (1, 1, 6, 6), False),
    (lambda c: pf.subpixel(c, "phases"), nn.ConvTranspose2d(1, 1, 3, 2, 1), (1, 1, 6, 6), False),
    (lambda c: pf.PatchLinear(c), nn.Conv2d(1, 1, 4, 4), (1, 1, 8, 8), False),
])
def test_structural_zero_taps_predict_nonfinite_exactness(build, orig, shape, zero):
    """The documented rule (layers docstring, "Non-finite inputs"): no structural zero tap -> exact for inf."""
    form = build(orig)
    assert (form.structural_zero_taps > 0) == zero
    bad = _nonfinite_mismatches(form, orig, shape)
    assert (bad > 0) == zero, bad
