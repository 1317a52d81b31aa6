"""Case groups of single convolutions (seed, stems, patchify, Focus, transposed, depthwise, 3-D) and the registry
``GROUPS`` of every group the suite runs."""

from __future__ import annotations


from torch import nn

from .cases_models import _rewrite_cases, _transform_cases, _tune_cases
from .cases_limit import limit_cases
from .cases_rearrange import _rearrange_cases
from .cases_sweep import patch_embed_cases, polyphase_sweep_cases
from .model import Case, Context, Focus, Form, Group, _conv_forms, _layout_names


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


GROUPS: list[Group] = [
    Group("seed", "The seed question",
          "A 3×3 conv on a 256-channel map is a 48×48 conv with stride 16 on the depth_to_space'd 1-channel map "
          "(pixelfold.to_space); the 48×48 conv at stride 1 is computed cheaply as a polyphase conv.",
          _seed_cases, quick=True),
    Group("sweep", "Polyphase block sweep (the seed's stride-1 48×48 conv)",
          "Conv2d(1, 1, 48) at stride 1 on 2×1×256², direct and as polyphase(b) for b = 1, 2, 4, 8, 16 (the inner "
          "conv's MACs over the direct conv's in the notes).", polyphase_sweep_cases, quick=True),
    Group("patch_embed", "Patch embeddings: conv vs PatchLinear vs F.linear",
          "ViT-B/16 Conv2d(3, 768, 16, 16) on 224² and Qwen2-VL Conv3d(3, 1280, (2, 14, 14), stride (2, 14, 14)) "
          "on 1024 patches, as the conv, pixelfold.PatchLinear, and a hand-written view/permute + F.linear.",
          patch_embed_cases, quick=True),
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
    Group("limit", "Rearrangements at the hand-written limit",
          "pixelfold.space_to_depth / depth_to_space in every order (crd, dcr, focus), 1-3-D, contiguous and "
          "channels-last, next to the hand-written reshape/permute/contiguous of the same tensor, einops.rearrange "
          "and clone(). Ratios are to the clone; the targets table gives pixelfold / best hand-written and GB/s.",
          limit_cases, quick=True),
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
