"""The pixelfold benchmark suite: every exact form of a layer, timed against the original.

Each *case* is a list of named *forms*: callables on the same input (in their
own memory layout) that compute the same thing, the original first. Every form
is checked against the original (max abs error) before it is timed; then all
forms of a case are timed in the same process, interleaved over several
rounds (the order rotates each round), with ``torch.utils.benchmark`` (warm-up,
blocked autorange, accelerator synchronisation). A form's time is the median
of its per-round medians, its IQR that of all its timed runs, and its ratio to
the original the median of the per-round ratios (each round's forms run back
to back, so slow phases of the machine cancel out).

Run it as ``python -m pixelfold.bench`` (or ``pixelfold bench`` once the CLI
wires it); ``--quick`` is a smoke test of a few tiny cases. Results go to
``--out`` as ``<device>.md`` (tables), ``<device>.json`` (everything, with
per-round times) and ``<device>.png`` (ratios per case).

>>> [g.key for g in GROUPS][:3]
['seed', 'stems', 'patchify']
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import datetime
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FoldError

__all__ = [
    "Form",
    "Case",
    "Result",
    "Group",
    "Context",
    "GROUPS",
    "SkipCase",
    "run",
    "main",
    "machine_info",
    "render_markdown",
    "write_results",
    "targets",
]

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
# Models of the end-to-end ``tune`` group: different families, each with strided or patchify convs to tune.
TUNE_MODELS = ("resnet50", "resnet18d", "convnext_tiny", "vit_small_patch16_224", "efficientnet_b0")


# ---------------------------------------------------------------------------- data model
@dataclass
class Form:
    """One way of computing a case's result.

    ``fn(arg)`` is what is timed. The verified output is ``check()`` if given
    (e.g. a transform-cost form times a construction and checks the module it
    builds), else ``fn(arg)``; it is compared with ``expected`` if given, else
    with the case's first form's output.
    """

    name: str
    fn: Callable[[Any], Any]
    arg: Any
    layout: str = "NCHW"
    expected: torch.Tensor | None = None
    check: Callable[[], torch.Tensor] | None = None
    note: str = ""


@dataclass
class Case:
    """A named list of forms, the original (the baseline of the ratios) first."""

    group: str
    name: str
    forms: list[Form]
    note: str = ""
    min_run_time: float | None = None  # per measurement, when longer than the suite's (whole models)
    rounds: int | None = None  # when more than the suite's (whole models: shorter, more interleaved rounds)


@dataclass
class Result:
    """One form's measurement. Times are in milliseconds."""

    group: str
    case: str
    form: str
    layout: str
    time_ms: float = math.nan
    iqr_ms: float = math.nan
    ratio: float = math.nan  # to the first form of the same layout (the original in that layout)
    ratio_first: float = math.nan  # to the case's first form (the NCHW original)
    max_err: float = math.nan  # max |form - reference|
    ref_max: float = math.nan  # max |reference|, the scale of max_err
    status: str = "ok"  # ok | error | skipped
    note: str = ""
    case_note: str = ""
    rounds_ms: list[float] = field(default_factory=list)
    runs: int = 0


class SkipCase(Exception):
    """Raised by a group's builder when its cases cannot run here (reported, not an error)."""


@dataclass
class Context:
    """What a group's builder needs: device, dtype, quick mode, batch size."""

    device: torch.device
    dtype: torch.dtype
    quick: bool
    batch: int | None = None
    compile: bool = True  # the tune group also times torch.compile'd models

    def n(self, full: int, quick: int = 1) -> int:
        """Batch size: ``--batch`` if given, else ``full`` (``quick`` in quick mode)."""
        if self.batch is not None:
            return self.batch
        return quick if self.quick else full

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=self.device, dtype=self.dtype)

    def module(self, m: nn.Module) -> nn.Module:
        return m.to(device=self.device, dtype=self.dtype)


@dataclass
class Group:
    key: str
    title: str
    about: str
    build: Callable[[Context], list[Case]]
    quick: bool = False  # part of --quick


# ---------------------------------------------------------------------------- layouts
def _layout_names(dims: int) -> tuple[str, str]:
    return {1: ("NCL", "NLC"), 2: ("NCHW", "channels_last"), 3: ("NCDHW", "channels_last_3d")}[dims]


def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` (N, C, *spatial) stored as ``layout``: contiguous or channels-last (NLC for 1-D)."""
    if layout in ("NCL", "NCHW", "NCDHW"):
        return x.contiguous()
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last_3d":
        return x.contiguous(memory_format=torch.channels_last_3d)
    if layout == "NLC":
        return x.movedim(1, -1).contiguous().movedim(-1, 1)
    raise ValueError(f"unknown layout {layout!r}")


def _module_layout(m: nn.Module, layout: str) -> nn.Module:
    if layout == "channels_last":
        return m.to(memory_format=torch.channels_last)
    if layout == "channels_last_3d":
        return m.to(memory_format=torch.channels_last_3d)
    return m


def _conv_forms(
    ctx: Context,
    conv: nn.Module,
    x: torch.Tensor,
    variants: Sequence[tuple[str, Callable[[nn.Module], Any], Sequence[str] | None]],
    layouts: Sequence[str],
) -> list[Form]:
    """Forms for each layout and each ``(name, build(conv) -> callable, layouts or None)`` variant.

    Every form gets its own deep copy of ``conv`` (pixelfold modules share the
    original's Parameters, so converting one form's memory format must not
    touch another's).
    """
    from .spec import ConvSpec

    forms = []
    for layout in layouts:
        xin = to_layout(x, layout)
        for name, build, only in variants:
            if only is not None and layout not in only:
                continue
            m = build(ctx.module(copy.deepcopy(conv)))
            note = ""
            if hasattr(m, "inner"):
                note = f"inner: {m.inner}"
            elif isinstance(m, nn.modules.conv._ConvNd) and name != "original":
                note = str(ConvSpec.from_module(m))
            if isinstance(m, nn.Module):
                m = _module_layout(m.to(device=ctx.device, dtype=ctx.dtype), layout)
                m.eval()
            forms.append(Form(name, m, xin, layout, note=note))
    return forms


# ---------------------------------------------------------------------------- case groups
def _seed_cases(ctx: Context) -> list[Case]:
    import pixelfold

    cases = []
    n = ctx.n(8, 1)
    hw = 16 if ctx.quick else 64
    conv = nn.Conv2d(256, 64, 3, padding=1)
    x = ctx.randn(n, 256, hw, hw)
    big = ctx.module(pixelfold.to_space(conv, 16))
    conv = ctx.module(conv)
    xs = pixelfold.depth_to_space(x, 16)
    cases.append(Case("seed", f"3×3 conv 256→64 on {n}×256×{hw}² vs 48×48/16 conv on {n}×1×{hw * 16}²", [
        Form("original: Conv2d 256→64 k3 p1", conv, x),
        Form("to_space(16): Conv2d 1→64 k48 s16 p16 on depth_to_space(x)", big, xs, note="input pre-shuffled"),
        Form("depth_to_space(x, 16) + to_space conv", lambda t: big(pixelfold.depth_to_space(t, 16)), x),
    ], note="same MACs; the 48×48 form reads a 1-channel map"))

    hp = 96 if ctx.quick else 256
    npoly = ctx.n(2, 1)
    big1 = nn.Conv2d(1, 1, 48)
    xp = ctx.randn(npoly, 1, hp, hp)
    poly = ctx.module(pixelfold.polyphase(big1, 16)).freeze()
    cases.append(Case("seed", f"stride-1 48×48 conv 1→1 on {npoly}×1×{hp}² vs polyphase(16)", [
        Form("original: Conv2d 1→1 k48 s1", ctx.module(big1), xp),
        Form("polyphase(16), frozen", poly, xp, note=f"inner: {poly.inner}"),
    ], note=f"smaller map ({hp}², batch {npoly}) than the seed case: the direct 48×48 stride-1 conv is slow"))
    return cases


def _stem_cases(ctx: Context) -> list[Case]:
    import pixelfold

    n = ctx.n(8, 1)
    hw = 64 if ctx.quick else 224
    layouts = _layout_names(2)
    out = []
    specs = [("ResNet-50 stem: Conv2d 3→64 k7 s2 p3", nn.Conv2d(3, 64, 7, 2, 3, bias=False))]
    if not ctx.quick:
        specs.append(("ResNet-18d stem: Conv2d 3→32 k3 s2 p1", nn.Conv2d(3, 32, 3, 2, 1, bias=False)))
    for title, conv in specs:
        x = ctx.randn(n, 3, hw, hw)
        forms = _conv_forms(ctx, conv, x, [
            ("original", lambda c: c, None),
            ("fold(2), frozen", lambda c: pixelfold.fold(c, 2).freeze(), None),
            ("fold(2, order='dcr'), frozen", lambda c: pixelfold.fold(c, 2, order="dcr").freeze(), ("channels_last",)),
        ], layouts)
        out.append(Case("stems", f"{title} at {n}×3×{hw}²", forms))
    return out


def _patchify_cases(ctx: Context) -> list[Case]:
    import pixelfold

    n = ctx.n(8, 1)
    hw = 64 if ctx.quick else 224
    layouts = _layout_names(2)
    specs = [("ViT-B/16 patch embedding: Conv2d 3→768 k16 s16", nn.Conv2d(3, 768, 16, 16))]
    if not ctx.quick:
        specs = [
            ("ConvNeXt-T stem: Conv2d 3→96 k4 s4", nn.Conv2d(3, 96, 4, 4)),
            ("Swin-B patch embedding: Conv2d 3→128 k4 s4", nn.Conv2d(3, 128, 4, 4)),
            *specs,
        ]
    out = []
    for title, conv in specs:
        k = conv.kernel_size[0]
        x = ctx.randn(n, 3, hw, hw)
        forms = _conv_forms(ctx, conv, x, [
            ("original", lambda c: c, None),
            (f"fold({k}) = space_to_depth + 1×1 conv, frozen", lambda c, k=k: pixelfold.fold(c, k).freeze(),
             ("NCHW",)),
            (f"fold({k}, order='dcr'), frozen", lambda c, k=k: pixelfold.fold(c, k, order="dcr").freeze(),
             ("channels_last",)),
            ("PatchLinear: space_to_depth(crd) + F.linear, frozen", lambda c: pixelfold.PatchLinear(c).freeze(),
             ("NCHW",)),
            ("PatchLinear(order='dcr'), frozen", lambda c: pixelfold.PatchLinear(c, "dcr").freeze(),
             ("channels_last",)),
        ], layouts)
        out.append(Case("patchify", f"{title} at {n}×3×{hw}²", forms,
                        note="F.linear forms return (N, H', W', O) viewed as NCHW (channels-last memory): tokens"))
    return out


class Focus(nn.Module):
    """YOLOv5's Focus (slice + cat, then the conv), as written in YOLOv5 (and named so: tune recognises it)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))


def _focus_cases(ctx: Context) -> list[Case]:
    import pixelfold

    n = ctx.n(8, 1)
    hw = 64 if ctx.quick else 640
    conv = nn.Conv2d(12, 32, 3, 1, 1, bias=False)  # YOLOv5s Focus(3, 32, k=3); BN + SiLU left out
    x = ctx.randn(n, 3, hw, hw)
    forms = _conv_forms(ctx, conv, x, [
        ("original: slice + cat + Conv2d 12→32 k3 p1", lambda c: Focus(c), None),
        ("FocusSlice (space_to_depth focus) + conv", lambda c: nn.Sequential(pixelfold.FocusSlice(), c), None),
        ("merge: Conv2d 3→32 k6 s2 p2", lambda c: pixelfold.merge(pixelfold.FocusSlice(), c), None),
    ], _layout_names(2))
    return [Case("focus", f"YOLOv5s Focus(3, 32, k=3) at {n}×3×{hw}²", forms)]


def _transposed_cases(ctx: Context) -> list[Case]:
    import pixelfold

    n = ctx.n(8, 1)
    hw = 16 if ctx.quick else 64
    convt = nn.ConvTranspose2d(64, 64, 4, 2, 1)
    x = ctx.randn(n, 64, hw, hw)
    forms = _conv_forms(ctx, convt, x, [
        ("original: ConvTranspose2d 64→64 k4 s2 p1", lambda c: c, None),
        ("subpixel(form='shared'), frozen", lambda c: pixelfold.subpixel(c, "shared").freeze(), None),
        ("subpixel(form='phases'), frozen", lambda c: pixelfold.subpixel(c, "phases").freeze(), None),
    ], _layout_names(2))
    for f in forms:
        if "phases" in f.name:
            f.note = "4 phase convs 64→64 k2×2 + interleave"
        elif "shared" in f.name:
            f.note = "Conv2d 64→256 k3 + depth_to_space(2)"
    return [Case("transposed", f"ConvTranspose2d(64, 64, 4, 2, 1) at {n}×64×{hw}²", forms)]


def _depthwise_cases(ctx: Context) -> list[Case]:
    import pixelfold

    n = ctx.n(8, 1)
    hw = 56
    conv = nn.Conv2d(96, 96, 3, 2, 1, groups=96, bias=False)
    x = ctx.randn(n, 96, hw, hw)
    forms = _conv_forms(ctx, conv, x, [
        ("original: depthwise Conv2d 96 k3 s2 p1", lambda c: c, None),
        ("fold(2), frozen", lambda c: pixelfold.fold(c, 2).freeze(), None),
    ], _layout_names(2))
    return [Case("depthwise", f"MobileNet depthwise 3×3/2, 96 ch at {n}×96×{hw}²", forms)]


def _video_cases(ctx: Context) -> list[Case]:
    import pixelfold

    n = ctx.n(2, 1)
    t, hw = (4, 32) if ctx.quick else (8, 112)
    conv = nn.Conv3d(3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False)
    x = ctx.randn(n, 3, t, hw, hw)
    forms = _conv_forms(ctx, conv, x, [
        ("original: Conv3d 3→64 k(3,7,7) s(1,2,2) p(1,3,3)", lambda c: c, None),
        ("fold((1, 2, 2)), frozen", lambda c: pixelfold.fold(c, (1, 2, 2)).freeze(), None),
    ], _layout_names(3))
    return [Case("video3d", f"3-D video stem at {n}×3×{t}×{hw}² (batch {n})", forms)]


def _rearrange_cases(ctx: Context) -> list[Case]:
    from .rearrange import depth_to_space, space_to_depth

    def s2d(b: Any, order: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda t: space_to_depth(t, b, order)

    def d2s(b: Any, order: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda t: depth_to_space(t, b, order)

    def ref_s2d(x: torch.Tensor, b: Sequence[int], order: str) -> torch.Tensor:
        """Direct definition by reshape/permute on NCHW (independent of rearrange.py)."""
        N, C, *S = x.shape
        n = len(S)
        v = x.contiguous().reshape(N, C, *[d for s, bi in zip(S, b) for d in (s // bi, bi)])
        ph = [3 + 2 * i for i in range(n)]
        outer = [2 + 2 * i for i in range(n)]
        chan = {"crd": [1, *ph], "dcr": [*ph, 1], "focus": [*reversed(ph), 1]}[order]
        return v.permute(0, *chan, *outer).reshape(N, C * math.prod(b), *[s // bi for s, bi in zip(S, b)])

    cases = []
    n = ctx.n(8, 1)
    c2, hw = (16, 32) if ctx.quick else (64, 112)
    blocks = (2, 4) if ctx.quick else (2, 4, 8)
    x = ctx.randn(n, c2, hw, hw)
    xcl = to_layout(x, "channels_last")
    for b in blocks:
        y = F.pixel_unshuffle(x, b)
        cases.append(Case("rearrange", f"2-D space_to_depth b={b}, {n}×{c2}×{hw}² NCHW", [
            Form("x.clone()", torch.clone, x, expected=x),
            Form("torch.pixel_unshuffle", lambda t, b=b: F.pixel_unshuffle(t, b), x, expected=y),
            Form("pixelfold.space_to_depth (crd)", s2d(b, "crd"), x, expected=y),
        ]))
        cases.append(Case("rearrange", f"2-D depth_to_space b={b}, {n}×{c2 * b * b}×{hw // b}² NCHW", [
            Form("y.clone()", torch.clone, y, expected=y),
            Form("torch.pixel_shuffle", lambda t, b=b: F.pixel_shuffle(t, b), y, expected=x),
            Form("pixelfold.depth_to_space (crd)", d2s(b, "crd"), y, expected=x),
        ]))
    for b in blocks:
        y_dcr = ref_s2d(x, (b, b), "dcr")
        y_crd = F.pixel_unshuffle(x, b)
        cases.append(Case("rearrange", f"2-D space_to_depth b={b}, {n}×{c2}×{hw}² channels_last", [
            Form("x.clone()", torch.clone, xcl, "channels_last", expected=x),
            Form("pixelfold.space_to_depth (dcr)", s2d(b, "dcr"), xcl, "channels_last", expected=y_dcr),
            Form("pixelfold.space_to_depth (crd)", s2d(b, "crd"), xcl, "channels_last", expected=y_crd),
            Form("torch.pixel_unshuffle", lambda t, b=b: F.pixel_unshuffle(t, b), xcl, "channels_last",
                 expected=y_crd),
        ]))
        ycl_dcr = to_layout(y_dcr, "channels_last")
        ycl_crd = to_layout(y_crd, "channels_last")
        cases.append(Case("rearrange", f"2-D depth_to_space b={b}, {n}×{c2 * b * b}×{hw // b}² channels_last", [
            Form("y.clone()", torch.clone, ycl_dcr, "channels_last", expected=y_dcr),
            Form("pixelfold.depth_to_space (dcr)", d2s(b, "dcr"), ycl_dcr, "channels_last", expected=x),
            Form("pixelfold.depth_to_space (crd)", d2s(b, "crd"), ycl_crd, "channels_last", expected=x),
            Form("torch.pixel_shuffle", lambda t, b=b: F.pixel_shuffle(t, b), ycl_crd, "channels_last", expected=x),
        ]))
    if ctx.quick:
        return cases
    # an RGB image (YOLOv5's Focus input): 3 channels, so runs of 3 or 6 values in channels_last memory
    xi = ctx.randn(n, 3, 640, 640)
    xil = to_layout(xi, "channels_last")
    refs = {o: ref_s2d(xi, (2, 2), o) for o in ("crd", "dcr", "focus")}
    cases.append(Case("rearrange", f"2-D space_to_depth b=2, {n}×3×640² (an image)", [
        Form("x.clone()", torch.clone, xi, expected=xi),
        Form("pixelfold.space_to_depth (crd)", s2d(2, "crd"), xi, expected=refs["crd"]),
        Form("pixelfold.space_to_depth (focus)", s2d(2, "focus"), xi, expected=refs["focus"]),
        Form("x.clone()", torch.clone, xil, "channels_last", expected=xi),
        Form("pixelfold.space_to_depth (dcr)", s2d(2, "dcr"), xil, "channels_last", expected=refs["dcr"]),
        Form("pixelfold.space_to_depth (crd)", s2d(2, "crd"), xil, "channels_last", expected=refs["crd"]),
        Form("pixelfold.space_to_depth (focus)", s2d(2, "focus"), xil, "channels_last", expected=refs["focus"]),
    ]))
    # 1-D: the same number of values as the 2-D cases
    x1 = x.reshape(n, c2, hw * hw)
    for b in (4, 16):
        y1c, y1d = ref_s2d(x1, (b,), "crd"), ref_s2d(x1, (b,), "dcr")
        x1l = to_layout(x1, "NLC")
        cases.append(Case("rearrange", f"1-D space_to_depth b={b}, {n}×{c2}×{hw * hw}", [
            Form("x.clone()", torch.clone, x1, "NCL", expected=x1),
            Form("pixelfold.space_to_depth (crd)", s2d(b, "crd"), x1, "NCL", expected=y1c),
            Form("pixelfold.space_to_depth (dcr)", s2d(b, "dcr"), x1, "NCL", expected=y1d),
            Form("x.clone()", torch.clone, x1l, "NLC", expected=x1),
            Form("pixelfold.space_to_depth (dcr)", s2d(b, "dcr"), x1l, "NLC", expected=y1d,
                 note="a view: no copy"),
        ]))
        cases.append(Case("rearrange", f"1-D depth_to_space b={b}, {n}×{c2 * b}×{hw * hw // b}", [
            Form("y.clone()", torch.clone, y1c, "NCL", expected=y1c),
            Form("pixelfold.depth_to_space (crd)", d2s(b, "crd"), y1c, "NCL", expected=x1),
            Form("y.clone()", torch.clone, to_layout(y1d, "NLC"), "NLC", expected=y1d),
            Form("pixelfold.depth_to_space (dcr)", d2s(b, "dcr"), to_layout(y1d, "NLC"), "NLC", expected=x1,
                 note="a view: no copy"),
        ]))
    # 3-D: again the same number of values
    x3 = ctx.randn(n, c2 // 2, 8, hw // 2, hw // 2)
    x3l = to_layout(x3, "channels_last_3d")
    for b in (2, (1, 2, 2)):
        bt = (b,) * 3 if isinstance(b, int) else b
        y3c, y3d = ref_s2d(x3, bt, "crd"), ref_s2d(x3, bt, "dcr")
        shape = "×".join(map(str, x3.shape))
        cases.append(Case("rearrange", f"3-D space_to_depth b={b}, {shape}", [
            Form("x.clone()", torch.clone, x3, "NCDHW", expected=x3),
            Form("pixelfold.space_to_depth (crd)", s2d(b, "crd"), x3, "NCDHW", expected=y3c),
            Form("x.clone()", torch.clone, x3l, "channels_last_3d", expected=x3),
            Form("pixelfold.space_to_depth (dcr)", s2d(b, "dcr"), x3l, "channels_last_3d", expected=y3d),
        ]))
        y3dl = to_layout(y3d, "channels_last_3d")
        cases.append(Case("rearrange", f"3-D depth_to_space b={b}, {'×'.join(map(str, y3c.shape))}", [
            Form("y.clone()", torch.clone, y3c, "NCDHW", expected=y3c),
            Form("pixelfold.depth_to_space (crd)", d2s(b, "crd"), y3c, "NCDHW", expected=x3),
            Form("y.clone()", torch.clone, y3dl, "channels_last_3d", expected=y3d),
            Form("pixelfold.depth_to_space (dcr)", d2s(b, "dcr"), y3dl, "channels_last_3d", expected=x3),
        ]))
    return cases


def _transform_cases(ctx: Context) -> list[Case]:
    """Construction cost of the exact forms, next to one forward of the original (batch 1)."""
    import pixelfold
    from . import transforms as T
    from .spec import ConvSpec

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
    from .tune import _label, tune

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
    from .rewrite import rewrite

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


GROUPS: list[Group] = [
    Group("seed", "The seed question",
          "A 3×3 conv on a 256-channel map is a 48×48 conv with stride 16 on the depth_to_space'd 1-channel map "
          "(pixelfold.to_space); the 48×48 conv at stride 1 is computed cheaply as a polyphase conv.",
          _seed_cases, quick=True),
    Group("stems", "Strided stems: fold",
          "fold(conv, 2) = pad → space_to_depth(2) → conv with half the stride on 4× the channels (MLPerf's TPU "
          "ResNet stem). Frozen (weights baked) for inference.", _stem_cases, quick=True),
    Group("patchify", "Patchify stems (kernel = stride)",
          "fold(k) turns a k×k/k conv into space_to_depth(k) + 1×1 conv; the same GEMM can run as F.linear "
          "(\"patchify as matmul\").", _patchify_cases, quick=True),
    Group("focus", "YOLOv5 Focus vs the merged 6×6/2 conv",
          "Focus (slice + cat in Focus order, then a 3×3 conv) and pixelfold.merge's equivalent single 6×6/2 p2 "
          "conv (what YOLOv5 switched to).", _focus_cases, quick=True),
    Group("transposed", "Transposed conv as sub-pixel conv",
          "ConvTranspose2d(64, 64, 4, 2, 1) vs subpixel: 'shared' = one 3×3 conv with 4× the outputs + "
          "depth_to_space (2.25× the MACs), 'phases' = four 2×2 convs + interleave (same MACs).",
          _transposed_cases, quick=True),
    Group("depthwise", "Strided depthwise conv: fold",
          "A MobileNet 3×3/2 depthwise conv vs fold(2) (a 2×2/1 grouped conv on 4 phases per channel).",
          _depthwise_cases),
    Group("video3d", "3-D video stem: fold",
          "Conv3d 3→64 k(3,7,7) s(1,2,2) p(1,3,3) vs fold with block (1, 2, 2).", _video_cases),
    Group("rearrange", "Rearrangement speed",
          "pixelfold.space_to_depth / depth_to_space vs torch.pixel_unshuffle / pixel_shuffle and vs a plain "
          "copy (clone) of the same tensor, the floor for any rearrangement that materialises its result. "
          "Ratios are to the clone.", _rearrange_cases, quick=True),
    Group("transforms", "Weight-transform cost (one-off)",
          "Time to build the exact forms (weights gathered, modules built, frozen), next to one batch-1 forward of "
          "the original: the ratio is the construction cost in forward passes.", _transform_cases, quick=True),
    Group("rewrite", "Whole-model rewrite cost (one-off)",
          "pixelfold.rewrite of a torchvision ResNet-50 with the no_stride profile, without verification and with "
          "each kind of verification, next to one batch-1 forward.", _rewrite_cases, quick=True),
    Group("tune", "End-to-end tune on whole models",
          "pixelfold.tune on whole timm models (random weights, batch 1, 224²) and on the YOLOv5s stem (640²) vs the "
          "original: in NCHW and in channels_last (tuned for that layout), and both compiled with torch.compile "
          "(NCHW). 21 rounds of 0.3 s per measurement.", _tune_cases),
]


# ---------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _max_err(out: Any, ref: torch.Tensor) -> tuple[float, float]:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the form returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(f"shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    diff = (out.detach().double() - ref.detach().double()).abs()
    return float(diff.max()) if diff.numel() else 0.0, float(ref.detach().double().abs().max()) if ref.numel() else 0.0


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (math.nan, math.nan)
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def _measure_case(case: Case, ctx: Context, threads: int, rounds: int, min_run_time: float,
                  log: Callable[[str], None]) -> list[Result]:
    from torch.utils.benchmark import Timer

    results = [Result(case.group, case.name, f.name, f.layout, note=f.note, case_note=case.note) for f in case.forms]
    # verify (this is also the first warm-up)
    reference: torch.Tensor | None = None
    with torch.no_grad():
        for i, (f, r) in enumerate(zip(case.forms, results)):
            try:
                out = f.check() if f.check is not None else f.fn(f.arg)
                _sync(ctx.device)
                if i == 0 and f.expected is None:
                    reference = out
                ref = f.expected if f.expected is not None else reference
                if ref is None:
                    raise ValueError("no reference: the first form failed")
                r.max_err, r.ref_max = _max_err(out, ref)
                del out
            except Exception as e:  # noqa: BLE001 - reported, the suite goes on
                r.status, r.note = "error", f"{type(e).__name__}: {e}"
                log(f"    ERROR {f.name}: {r.note}")
        reference = None
        live = [i for i, r in enumerate(results) if r.status == "ok"]
        for i in live:  # second warm-up
            case.forms[i].fn(case.forms[i].arg)
        _sync(ctx.device)
        per_round: dict[int, list[float]] = {i: [] for i in live}
        runs: dict[int, list[float]] = {i: [] for i in live}
        for rnd in range(max(rounds, case.rounds or 0)):
            k = rnd % max(1, len(live))
            for i in live[k:] + live[:k]:
                f = case.forms[i]
                timer = Timer("fn(x)", globals={"fn": f.fn, "x": f.arg}, num_threads=threads)
                m = timer.blocked_autorange(min_run_time=max(min_run_time, case.min_run_time or 0.0))
                per_round[i].append(m.median * 1e3)
                runs[i].extend(t * 1e3 for t in m.times)
    first = live[0] if live and live[0] == 0 else None
    base_of_layout: dict[str, int] = {}
    for i in live:
        base_of_layout.setdefault(case.forms[i].layout, i)
    for i in live:
        r = results[i]
        r.rounds_ms = per_round[i]
        r.runs = len(runs[i])
        r.time_ms = statistics.median(per_round[i])
        q1, q3 = _quartiles(runs[i])
        r.iqr_ms = q3 - q1
        b = base_of_layout[case.forms[i].layout]
        r.ratio = statistics.median(a / c for a, c in zip(per_round[i], per_round[b]))
        if first is not None:
            r.ratio_first = statistics.median(a / c for a, c in zip(per_round[i], per_round[first]))
    return results


def paired_ratio(a: Result, b: Result) -> float:
    """Median over rounds of ``a``'s time over ``b``'s (both from one case, so timed back to back)."""
    if not a.rounds_ms or len(a.rounds_ms) != len(b.rounds_ms):
        return math.nan
    return statistics.median(x / y for x, y in zip(a.rounds_ms, b.rounds_ms))


# ---------------------------------------------------------------------------- environment
def apply_mallopt() -> str:
    """Set glibc's malloc like ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` in this process.

    Large buffers then come from the heap and are reused instead of being
    mmapped (and page-faulted) afresh on every call. Returns what was done.
    """
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return "set in the environment"
    if not sys.platform.startswith("linux"):
        return "not set (not Linux)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        ok = False
    return "applied in-process with mallopt (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)" if ok else "NOT set"


def machine_info(device: torch.device, dtype: torch.dtype, threads: int, malloc: str | None = None) -> dict[str, Any]:
    """What the header of the results states."""
    from .tune import cpu_name

    env = {k: os.environ.get(k) for k in MALLOC_ENV}
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "malloc_env": env,
        "malloc": malloc or ("set in the environment" if all(env[k] == v for k, v in MALLOC_ENV.items())
                             else "not set"),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": _cpu_capability(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return info


def _cpu_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:
        return "unknown"


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


# ---------------------------------------------------------------------------- running
def _select(cases: Sequence[str] | None, quick: bool) -> list[Group]:
    if not cases:
        return [g for g in GROUPS if g.quick or not quick]
    picked = []
    for g in GROUPS:
        if any(c == g.key for c in cases):
            picked.append(g)
    unknown = [c for c in cases if c not in {g.key for g in GROUPS}]
    if unknown:
        raise ValueError(f"unknown case group(s) {unknown}; choose from {[g.key for g in GROUPS]}")
    return picked


def run(
    cases: Sequence[str] | None = None,
    quick: bool = False,
    threads: int | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    rounds: int | None = None,
    min_run_time: float | None = None,
    batch: int | None = None,
    tag: str | None = None,
    verbose: bool = False,
    malloc: str | None = None,
    compile: bool = True,
) -> list[Result]:
    """Run the suite (or the groups named in ``cases``) and return one :class:`Result` per form.

    ``quick``: a few tiny cases (a smoke test). ``threads``: torch threads
    (default: all cores). ``out``: a directory to write ``<tag>.md``,
    ``<tag>.json`` and ``<tag>.png`` to (``tag`` defaults to the device type,
    plus the dtype when it is not float32). ``device="cuda"`` times with
    accelerator synchronisation and ``cudnn.benchmark`` on. ``compile``: the
    ``tune`` group also times ``torch.compile``'d models.
    """
    dev = torch.device(device)
    dt = DTYPES[dtype] if isinstance(dtype, str) else dtype
    threads = threads or os.cpu_count() or 1
    rounds = rounds or (2 if quick else 7)
    min_run_time = min_run_time if min_run_time is not None else (0.02 if quick else 0.15)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if verbose else (lambda s: None)
    prev_threads = torch.get_num_threads()
    prev_bench = torch.backends.cudnn.benchmark
    torch.set_num_threads(threads)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ctx = Context(dev, dt, quick, batch, compile)
    info = machine_info(dev, dt, threads, malloc)
    info.update(quick=quick, rounds=rounds, min_run_time_s=min_run_time, load_before=_loadavg())
    results: list[Result] = []
    skipped: dict[str, str] = {}
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        for group in _select(cases, quick):
            log(f"[{group.key}]")
            try:
                with torch.no_grad():
                    built = group.build(ctx)
            except SkipCase as e:
                skipped[group.key] = str(e)
                log(f"  skipped: {e}")
                continue
            except Exception as e:  # noqa: BLE001 - one broken group must not stop the suite
                skipped[group.key] = f"error while building: {type(e).__name__}: {e}"
                results.append(Result(group.key, "(building the cases)", "-", "-", status="error",
                                      note=skipped[group.key]))
                log(f"  ERROR {skipped[group.key]}")
                continue
            for case in built:
                t0 = time.perf_counter()
                res = _measure_case(case, ctx, threads, rounds, min_run_time, log)
                results.extend(res)
                log(f"  {case.name}  ({time.perf_counter() - t0:.1f} s)")
                for r in res:
                    log(f"    {r.form:<60} {r.layout:<16} {r.time_ms:9.3f} ms  ×{r.ratio:6.3f}  err {r.max_err:.2e}")
            del built
    finally:
        torch.set_num_threads(prev_threads)
        torch.backends.cudnn.benchmark = prev_bench
    info.update(load_after=_loadavg(), elapsed_s=round(time.perf_counter() - start, 1), skipped=skipped)
    if out is not None:
        write_results(results, info, out, tag or _default_tag(dev, dt))
    run.last_info = info  # type: ignore[attr-defined]
    return results


def _default_tag(device: torch.device, dtype: torch.dtype) -> str:
    tag = device.type
    if dtype != torch.float32:
        tag += "-" + {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype).replace("torch.", ""))
    return tag


# ---------------------------------------------------------------------------- reporting
def targets(results: Sequence[Result]) -> list[dict[str, Any]]:
    """The performance targets, each as ``{target, block, ratio, limit, met}``.

    Rearrangements: pixelfold vs torch's op (NCHW, ≤ 1.05×) and dcr vs clone
    (channels_last, ≤ 1.5×); Focus → merged conv (channels_last, ≤ 1/1.3);
    ``tune()`` vs the original (≤ 1.03×); ResNet-50 rewrite without
    verification (< 100 ms).
    """
    by_case: dict[str, dict[tuple[str, str], Result]] = {}
    for r in results:
        if r.group == "rearrange" and r.status == "ok":
            by_case.setdefault(r.case, {})[(r.form, r.layout)] = r
    rows = []
    for case, forms in by_case.items():
        if not case.startswith("2-D"):
            continue
        what = "space_to_depth" if "space_to_depth" in case else "depth_to_space"
        block = case.split("b=")[1].split(",")[0]
        if case.endswith("NCHW"):
            torch_op = forms.get(("torch.pixel_unshuffle" if what == "space_to_depth" else "torch.pixel_shuffle",
                                  "NCHW"))
            ours = forms.get((f"pixelfold.{what} (crd)", "NCHW"))
            if torch_op and ours:
                ratio = paired_ratio(ours, torch_op)
                rows.append(dict(target=f"{what} NCHW (crd) vs torch.{torch_op.form.split('.')[-1]}", block=block,
                                 ratio=ratio, limit=1.05, met=bool(ratio <= 1.05)))
        elif case.endswith("channels_last"):
            clone = next((r for (f, lay), r in forms.items() if f.endswith("clone()") and lay == "channels_last"),
                         None)
            ours = forms.get((f"pixelfold.{what} (dcr)", "channels_last"))
            if clone and ours:
                ratio = paired_ratio(ours, clone)
                rows.append(dict(target=f"{what} channels_last (dcr) vs clone", block=block, ratio=ratio, limit=1.5,
                                 met=bool(ratio <= 1.5)))
    rows += _model_targets(results)
    return rows


def _model_targets(results: Sequence[Result]) -> list[dict[str, Any]]:
    """Focus → merged conv ≥ 1.3× faster (channels_last); tune() ≤ 1.03× the original; rewrite < 100 ms."""
    rows = []
    ok = [r for r in results if r.status == "ok"]
    for r in ok:
        if r.group == "focus" and r.form.startswith("merge") and r.layout == "channels_last":
            rows.append(dict(target="Focus + conv → merged conv, channels_last (time ratio)", block="-",
                             ratio=r.ratio, limit=round(1 / 1.3, 3), met=bool(r.ratio <= 1 / 1.3)))
        elif r.group == "tune" and r.form.startswith(("tune()", "torch.compile(tune())")):
            rows.append(dict(target=f"{r.case.split(' ')[0]}: {r.form} vs original ({r.layout})", block="-",
                             ratio=r.ratio, limit=1.03, met=bool(r.ratio <= 1.03)))
        elif r.group == "rewrite" and "verify=False" in r.form:
            rows.append(dict(target="rewrite of ResNet-50, no verification", block="-",
                             ratio=r.time_ms, limit=100, met=bool(r.time_ms < 100), unit=" ms"))
    return rows


def _fmt(v: float, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.{digits}f}"


def _fmt_err(v: float) -> str:
    if v is None or math.isnan(v):
        return "–"
    return "0" if v == 0 else f"{v:.1e}"


def render_markdown(results: Sequence[Result], info: dict[str, Any]) -> str:
    """The tables, one per group, under a header stating the machine and settings."""
    dev = info.get("gpu") or info["cpu"]
    lines = [
        f"# pixelfold benchmarks — {info['device']} ({info['dtype']})" + (" — QUICK smoke run" if info.get("quick")
                                                                         else ""),
        "",
        f"- machine: {dev}; {info['cores']} cores; torch threads {info['threads']}; ATen CPU kernels "
        f"{info.get('cpu_capability')}",
        f"- torch {info['torch']}, Python {info['python']}, {info['platform']}; date {info['date']}",
        f"- malloc: MALLOC_MMAP_MAX_={info['malloc_env'].get('MALLOC_MMAP_MAX_')}, "
        f"MALLOC_TRIM_THRESHOLD_={info['malloc_env'].get('MALLOC_TRIM_THRESHOLD_')} ({info['malloc']})",
        f"- method: torch.utils.benchmark blocked_autorange (min_run_time {info['min_run_time_s']} s) per form, "
        f"{info['rounds']} interleaved rounds in one process; time = median of round medians, IQR over all timed "
        "runs, × = median of per-round ratios to the original in the same layout",
    ]
    if "gpu" in info:
        lines.append(f"- GPU: {info['gpu']}, CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')}, "
                     f"cudnn.benchmark={info.get('cudnn_benchmark')}")
    la, lb = info.get("load_before"), info.get("load_after")
    if la is not None:
        busy = " — another process may have been active; ratios (paired per round) are more reliable than times" \
            if max(la, lb or 0) > 0.5 else ""
        lines.append(f"- 1-min load average before/after: {la:.2f}/{(lb if lb is not None else math.nan):.2f}{busy}")
    lines.append(f"- wall time of the run: {info.get('elapsed_s')} s")
    lines.append("")
    rows = targets(results)
    if rows:
        lines += ["## Targets (issue 5)", "", "| target | block | measured | limit | met |", "|---|---|---|---|---|"]
        for t in rows:
            unit = t.get("unit", "×")
            lines.append(f"| {t['target']} | {t['block']} | {_fmt(t['ratio'])}{unit} | ≤ {t['limit']}{unit} | "
                         f"{'yes' if t['met'] else '**no**'} |")
        lines.append("")
    by_group = {g.key: g for g in GROUPS}
    seen: list[str] = []
    for r in results:
        if r.group not in seen:
            seen.append(r.group)
    for key in seen:
        g = by_group.get(key)
        rs = [r for r in results if r.group == key]
        lines += [f"## {g.title if g else key}", ""]
        if g:
            lines += [g.about, ""]
        multi = len({r.layout for r in rs}) > 1
        head = "| case | form | layout | time ms | IQR ms | × original |" + (" × first |" if multi else "") + \
            " max abs err | note |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        last_case = None
        for r in rs:
            case = r.case if r.case != last_case else ""
            last_case = r.case
            note = r.note if r.status == "ok" else f"**{r.status}**: {r.note}"
            row = f"| {case} | {r.form} | {r.layout} | {_fmt(r.time_ms)} | {_fmt(r.iqr_ms)} | {_fmt(r.ratio)} |"
            if multi:
                row += f" {_fmt(r.ratio_first)} |"
            row += f" {_fmt_err(r.max_err)} | {note.replace('|', '/')} |"
            lines.append(row)
        lines.append("")
        case_notes = dict.fromkeys((r.case, r.case_note) for r in rs if r.case_note)
        if case_notes:
            lines += [f"- *{case}*: {note}" for case, note in case_notes] + [""]
    for key, why in info.get("skipped", {}).items():
        if key not in seen:
            g = by_group.get(key)
            lines += [f"## {g.title if g else key}", "", f"Skipped: {why}", ""]
    return "\n".join(lines)


_RATIO_MEANING = {
    "rearrange": "time / clone of the same tensor",
    "transforms": "construction time / one batch-1 forward of the original",
    "rewrite": "rewrite time / one batch-1 forward of the original",
}


def _plot(results: Sequence[Result], info: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base_ids = {id(_first_of_layout(results, r)) for r in results}
    rows = [r for r in results if r.status == "ok" and not math.isnan(r.ratio) and id(r) not in base_ids]
    if not rows:
        return
    groups = list(dict.fromkeys(r.group for r in rows))
    titles = {g.key: g.title for g in GROUPS}
    counts = [sum(r.group == g for r in rows) for g in groups]
    height = 0.17 * len(rows) + 0.75 * len(groups) + 1.2
    fig, axes = plt.subplots(len(groups), 1, figsize=(12, height),
                             gridspec_kw={"height_ratios": [c + 1.5 for c in counts]}, squeeze=False)
    lo = min(r.ratio for r in rows)
    hi = max(r.ratio for r in rows)
    cmap = plt.get_cmap("tab10")
    layouts = sorted({r.layout for r in rows})
    colour = {lay: cmap(i % 10) for i, lay in enumerate(layouts)}
    for ax, g in zip(axes[:, 0], groups):
        rs = [r for r in rows if r.group == g]
        ys = list(range(len(rs)))[::-1]
        ax.barh(ys, [r.ratio for r in rs], color=[colour[r.layout] for r in rs], height=0.75)
        ax.set_yticks(ys)
        ax.set_yticklabels([_label(r) for r in rs], fontsize=6.5)
        ax.set_xscale("log")
        ax.set_xlim(min(lo, 0.5) / 1.3, max(hi, 2.0) * 1.5)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_ylim(-0.75, len(rs) - 0.25)
        meaning = _RATIO_MEANING.get(g, "time / original in the same layout")
        ax.set_title(f"{titles.get(g, g)} — {meaning}", fontsize=8, loc="left")
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
        for y, r in zip(ys, rs):
            ax.text(r.ratio, y, f" {r.ratio:.2f}", va="center", fontsize=6)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[lay]) for lay in layouts]
    axes[-1, 0].set_xlabel("ratio (log scale); < 1: the rewrite is faster", fontsize=8)
    dev = info.get("gpu") or info["cpu"]
    fig.suptitle(f"pixelfold bench — {dev}, {info['device']} {info['dtype']}, {info['threads']} threads, "
                 f"torch {info['torch']}, {info['date']}", fontsize=9, y=1 - 0.08 / height)
    fig.legend(handles, layouts, fontsize=7, loc="upper center", ncol=len(layouts), frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.3 / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _first_of_layout(results: Sequence[Result], r: Result) -> Result:
    """The baseline of ``r``'s ratio: the first ok form of its case in its layout."""
    for x in results:
        if x.case == r.case and x.layout == r.layout and x.status == "ok":
            return x
    return r


def _label(r: Result) -> str:
    case = r.case
    if ":" in case:
        case = case.split(":")[0]
    elif " at " in case:
        case = case.split(" at ")[0]
    case = case if len(case) <= 44 else case[:43] + "…"
    form = r.form if len(r.form) <= 46 else r.form[:45] + "…"
    return f"{case} · {form}"


def write_results(results: Sequence[Result], info: dict[str, Any], out: str | os.PathLike[str],
                  tag: str = "cpu") -> dict[str, Path]:
    """Write ``<tag>.md``, ``<tag>.json`` and ``<tag>.png`` under ``out``; returns their paths."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"md": d / f"{tag}.md", "json": d / f"{tag}.json", "png": d / f"{tag}.png"}
    paths["md"].write_text(render_markdown(results, info) + "\n")
    payload = {"meta": info, "targets": targets(results), "results": [asdict(r) for r in results]}
    paths["json"].write_text(json.dumps(payload, indent=1, default=float, allow_nan=True) + "\n")
    try:
        _plot(results, info, paths["png"])
    except ImportError:
        paths.pop("png")
    return paths


# ---------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``pixelfold bench`` (for the CLI to reuse)."""
    from .cli import positive_float, positive_int

    parser.add_argument("--quick", action="store_true", help="a few tiny cases: a smoke test (< 30 s)")
    parser.add_argument("--cases", nargs="+", metavar="GROUP", choices=[g.key for g in GROUPS],
                        help=f"groups to run (default: all): {' '.join(g.key for g in GROUPS)}")
    parser.add_argument("--out", default=None,
                        help="directory for <tag>.md/.json/.png (default: benchmarks/results, or out/bench with "
                             "--quick)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="float32 (default), bfloat16, ...")
    parser.add_argument("--rounds", type=positive_int, default=None, help="interleaved rounds (default 7; quick 2)")
    parser.add_argument("--min-run-time", type=positive_float, default=None,
                        help="seconds per blocked_autorange measurement (default 0.15; quick 0.02)")
    parser.add_argument("--batch", type=positive_int, default=None, help="override every case's batch size")
    parser.add_argument("--tag", default=None, help="file name stem (default: device type, plus dtype if not fp32)")
    parser.add_argument("--no-mallopt", action="store_true",
                        help="do not set glibc malloc options in-process when the MALLOC_* env vars are missing")
    parser.add_argument("--no-compile", action="store_true",
                        help="tune group: skip the torch.compile forms (compiling takes ~30 s per model on CPU)")
    parser.add_argument("--list", action="store_true", help="list the case groups and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return parser


def _check_args(args: argparse.Namespace, out: str) -> torch.device:
    """Refuse a bad device, tag or output folder before anything is measured; returns the device."""
    from .cli import check_output_dir

    try:
        dev = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise FoldError(f"--device {args.device!r} is not a device; use cpu or cuda[:N]") from None
    if dev.type not in ("cpu", "cuda"):
        raise FoldError(f"--device {args.device!r}: the benchmarks run on cpu or cuda[:N], not {dev.type}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FoldError("--device cuda but torch.cuda.is_available() is False")
    if args.tag is not None and (not args.tag.strip() or os.sep in args.tag or "/" in args.tag or "\0" in args.tag
                                 or args.tag in (".", "..")):
        raise FoldError(f"--tag {args.tag!r} is not a file name stem (no '/'; the files go to --out)")
    check_output_dir(out, "--out")
    return dev


def run_from_args(args: argparse.Namespace) -> int:
    """Run with parsed :func:`add_arguments` options; returns the exit status."""
    if args.list:
        for g in GROUPS:
            print(f"{g.key:<11} {'(quick) ' if g.quick else '        '}{g.title}")
        return 0
    out = args.out or ("out/bench" if args.quick else "benchmarks/results")
    _check_args(args, out)
    malloc = None if args.no_mallopt else apply_mallopt()
    results = run(args.cases, quick=args.quick, threads=args.threads, out=out, device=args.device,
                  dtype=args.dtype, rounds=args.rounds, min_run_time=args.min_run_time, batch=args.batch,
                  tag=args.tag, verbose=not args.quiet, malloc=malloc, compile=not args.no_compile)
    info = run.last_info  # type: ignore[attr-defined]
    tag = args.tag or _default_tag(torch.device(args.device), DTYPES[args.dtype])
    print(f"wrote {Path(out) / tag}.md/.json/.png ({len(results)} forms, {info['elapsed_s']} s)")
    for t in targets(results):
        unit = t.get("unit", "×")
        print(f"  target {t['target']} b={t['block']}: {t['ratio']:.3f}{unit} (≤ {t['limit']}{unit}) "
              f"{'met' if t['met'] else 'MISSED'}")
    errors = [r for r in results if r.status == "error"]
    for r in errors:
        print(f"  ERROR {r.case} / {r.form}: {r.note}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``pixelfold bench`` / ``python -m pixelfold.bench``."""
    parser = argparse.ArgumentParser(prog="pixelfold bench", description=__doc__.split("\n\n")[0])
    try:
        return run_from_args(add_arguments(parser).parse_args(argv))
    except FoldError as err:
        print(f"pixelfold bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
