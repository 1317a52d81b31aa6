"""One-off costs (weight transforms, rewrite) and end-to-end tune on whole models."""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .model import TUNE_MODELS, Case, Context, Focus, Form, SkipCase, _module_layout, to_layout


def _transform_cases(ctx: Context) -> list[Case]:
    """Construction cost of the exact forms, next to one forward of the original (batch 1)."""
    import pixelfold
    from .. import transforms as T
    from ..spec import ConvSpec

    def construct(conv: nn.Module, build: Callable[[nn.Module], nn.Module], x: torch.Tensor,
                  name: str) -> Form:
        def check() -> torch.Tensor:
            with torch.no_grad():
                return build(conv)(x)
        return Form(name, build, conv, check=check)

    cases = []
    hw = 16 if ctx.quick else 64
    seed = ctx.module(nn.Conv2d(256, 64, 3, padding=1))
    xs = ctx.randn(1, 256, hw, hw)
    spec = ConvSpec.from_module(seed)

    def space_check() -> torch.Tensor:
        w, s = T.to_space_weight(seed.weight, spec, 16)
        return F.conv2d(pixelfold.depth_to_space(xs, 16), w, seed.bias, s.stride, s.symmetric_padding)

    cases.append(Case("transforms", "seed conv 256→64 k3 → to_space(16)", [
        Form("original forward (batch 1)", seed, xs),
        Form("transforms.to_space_weight (weight only)", lambda c: T.to_space_weight(c.weight, spec, 16), seed,
             check=space_check),
        Form("pixelfold.to_space(conv, 16) (module)", lambda c: pixelfold.to_space(c, 16), seed,
             check=lambda: pixelfold.to_space(seed, 16)(pixelfold.depth_to_space(xs, 16))),
    ]))
    stem = ctx.module(nn.Conv2d(3, 64, 7, 2, 3, bias=False))
    xr = ctx.randn(1, 3, 64 if ctx.quick else 224, 64 if ctx.quick else 224)
    conv8 = ctx.module(nn.Conv2d(3, 64, 8, 2, 2, bias=False))
    with torch.no_grad():
        y8 = conv8(xr)
    cases.append(Case("transforms", "ResNet-50 stem → fold(2)", [
        Form("original forward (batch 1)", stem, xr),
        construct(stem, lambda c: pixelfold.fold(c, 2).freeze(), xr, "pixelfold.fold(conv, 2).freeze()"),
        Form("pixelfold.to_depth(conv, 2) of the 8×8/2 p2 (MLPerf) stem", lambda c: pixelfold.to_depth(c, 2), conv8,
             expected=y8, check=lambda: pixelfold.to_depth(conv8, 2)(pixelfold.space_to_depth(xr, 2))),
    ]))
    if not ctx.quick:
        vit = ctx.module(nn.Conv2d(3, 768, 16, 16))
        xv = ctx.randn(1, 3, 224, 224)
        cases.append(Case("transforms", "ViT-B/16 patch embedding → fold(16)", [
            Form("original forward (batch 1)", vit, xv),
            construct(vit, lambda c: pixelfold.fold(c, 16).freeze(), xv, "pixelfold.fold(conv, 16).freeze()"),
        ]))
        convt = ctx.module(nn.ConvTranspose2d(64, 64, 4, 2, 1))
        xt = ctx.randn(1, 64, 64, 64)
        cases.append(Case("transforms", "ConvTranspose2d(64, 64, 4, 2, 1) → subpixel", [
            Form("original forward (batch 1)", convt, xt),
            construct(convt, lambda c: pixelfold.subpixel(c, "shared").freeze(), xt, "subpixel(shared).freeze()"),
            construct(convt, lambda c: pixelfold.subpixel(c, "phases").freeze(), xt, "subpixel(phases).freeze()"),
        ]))
        focus_conv = ctx.module(nn.Conv2d(12, 32, 3, 1, 1, bias=False))
        xf = ctx.randn(1, 3, 640, 640)
        cases.append(Case("transforms", "YOLOv5s Focus → merge", [
            Form("original forward (batch 1)", Focus(focus_conv), xf),
            construct(focus_conv, lambda c: pixelfold.merge(pixelfold.FocusSlice(), c), xf,
                      "pixelfold.merge(FocusSlice(), conv)"),
        ]))
        big = ctx.module(nn.Conv2d(1, 1, 48))
        xp = ctx.randn(1, 1, 256, 256)
        cases.append(Case("transforms", "48×48 stride-1 conv → polyphase(16)", [
            Form("original forward (batch 1)", big, xp),
            construct(big, lambda c: pixelfold.polyphase(c, 16).freeze(), xp, "pixelfold.polyphase(conv, 16).freeze()"),
        ]))
        c3 = ctx.module(nn.Conv3d(3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False))
        x3 = ctx.randn(1, 3, 8, 112, 112)
        cases.append(Case("transforms", "3-D video stem → fold((1, 2, 2))", [
            Form("original forward (batch 1)", c3, x3),
            construct(c3, lambda c: pixelfold.fold(c, (1, 2, 2)).freeze(), x3, "pixelfold.fold(conv, (1,2,2)).freeze()"),
        ]))
    return cases


def _tune_cases(ctx: Context) -> list[Case]:
    """End to end: ``pixelfold.tune`` on whole models (random weights) vs the original, eager and compiled.

    Per model, ``tune`` runs once per layout (NCHW input with ``memory_formats=("contiguous",)``,
    channels_last input with ``("channels_last",)``), so each tuned model is compared with the original
    in the layout it was tuned for; then both are compiled with ``torch.compile`` (NCHW) where that works.
    """
    from ..tune import _label, tune

    n = ctx.n(1, 1)
    scale = 64 if ctx.quick else 224
    builds: list[tuple[str, Callable[[], nn.Module], int]] = []
    try:
        import timm

        builds += [(name, lambda name=name: timm.create_model(name, pretrained=False), scale)
                   for name in (TUNE_MODELS[:1] if ctx.quick else TUNE_MODELS)]
    except ImportError:
        pass
    if not ctx.quick:  # a model with a layer whose other form wins on CPU (see the focus group)
        builds.append(("YOLOv5s stem (Focus, SiLU, Conv 32→64 3×3/2, SiLU)", _yolo_stem, 640))
    if not builds:
        raise SkipCase("timm is not installed")
    cases = []
    for name, build, hw in builds:
        torch.manual_seed(0)
        model = ctx.module(build()).eval()
        x = ctx.randn(n, 3, hw, hw)
        forms = []
        notes = []
        for layout, fmt in (("NCHW", "contiguous"), ("channels_last", "channels_last")):
            xin = to_layout(x, layout)
            base = _module_layout(copy.deepcopy(model), layout)
            tuned, plan = tune(model, xin, memory_formats=(fmt,), rounds=3 if ctx.quick else 5,
                               min_run_time=0.01 if ctx.quick else 0.1, progress=False)
            picks = [f"{lp.path} → {_label(lp.choice, lp.options)}" for lp in plan.layers if lp.choice != "original"]
            faster = []
            for lp in plan.layers:
                fastest = min(lp.times_ms, key=lp.times_ms.__getitem__)
                if fastest != "original" and lp.times_ms[fastest] < 0.97 * lp.times_ms["original"]:
                    faster.append(f"{lp.path} {fastest} {lp.times_ms[fastest] / lp.times_ms['original']:.2f}×")
            notes.append(f"{layout}: {len(plan.layers)} layers timed; faster alone: {', '.join(faster) or 'none'}; "
                         f"kept: {', '.join(picks) or 'the original'}")
            forms.append(Form("original", base, xin, layout))
            forms.append(Form("tune()", tuned.eval(), xin, layout,
                              note=f"kept: {', '.join(picks)}" if picks else "kept the original (every layer)"))
            if layout == "NCHW" and ctx.compile:
                forms.append(Form("torch.compile(original)", _compiled(base), xin, "NCHW, compiled"))
                forms.append(Form("torch.compile(tune())", _compiled(tuned), xin, "NCHW, compiled"))
        # 10-100 ms per call and slow drifts on a shared VM: many short rounds (0.3 s per measurement, the
        # forms back to back) pair the forms closer in time than a few long ones
        cases.append(Case("tune", f"{name} at {n}×3×{hw}²", forms, note="; ".join(notes),
                          min_run_time=None if ctx.quick else 0.3, rounds=None if ctx.quick else 21))
    return cases


def _yolo_stem() -> nn.Module:
    """The first two layers of YOLOv5s (v5.0) without BatchNorm: Focus(3, 32, k=3) and Conv(32, 64, 3, 2)."""
    return nn.Sequential(Focus(nn.Conv2d(12, 32, 3, 1, 1, bias=False)), nn.SiLU(),
                         nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.SiLU())


def _compiled(model: nn.Module) -> Callable[[torch.Tensor], Any]:
    """``torch.compile(model)``; compiled lazily on the first call (the suite's verification warm-up)."""
    return torch.compile(model)


def _rewrite_cases(ctx: Context) -> list[Case]:
    """The cost of ``pixelfold.rewrite`` on a whole torchvision ResNet-50, without and with verification."""
    try:
        from torchvision.models import resnet50
    except ImportError as e:
        raise SkipCase(f"torchvision is not installed ({e})") from None
    from ..rewrite import rewrite

    torch.manual_seed(0)
    model = ctx.module(resnet50()).eval()
    hw = 64 if ctx.quick else 224
    x = ctx.randn(1, 3, hw, hw)

    def built(**kw: Any) -> Callable[[], torch.Tensor]:
        return lambda: rewrite(model, "no_stride", **kw)[0](x)

    return [Case("rewrite", f"torchvision ResNet-50, profile no_stride (7 strided convs), 1×3×{hw}²", [
        Form("original forward (batch 1)", model, x),
        Form("rewrite(verify=False)", lambda m: rewrite(m, "no_stride", verify=False), model,
             check=built(verify=False)),
        Form("rewrite() (each layer checked on random inputs, float64)", lambda m: rewrite(m, "no_stride"), model,
             check=built()),
        Form("rewrite(example_inputs=x) (captured inputs + end to end)",
             lambda m: rewrite(m, "no_stride", example_inputs=x), model, check=built(example_inputs=x)),
    ], note="one-off costs, next to one forward of the model: the ratio is the cost in forward passes")]
