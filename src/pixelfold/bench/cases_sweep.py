"""Issue 12 item 5 cases: the polyphase block sweep of the seed's stride-1 48×48 conv, and patch embeddings
(ViT 2-D, Qwen2-VL 3-D) as conv vs ``pixelfold.PatchLinear`` vs a hand-written ``F.linear`` on the patches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..targets.solver import macs_of
from .model import Case, Context, Form


def _macs(conv: nn.Conv2d, x_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of ``conv`` on an input of ``x_shape`` (no padding)."""
    k = conv.kernel_size
    out = [(s - kk) // st + 1 for s, kk, st in zip(x_shape[2:], k, conv.stride)]
    return x_shape[0] * conv.out_channels * math.prod(out) * conv.in_channels // conv.groups * math.prod(k)


def polyphase_sweep_cases(ctx: Context) -> list[Case]:
    """The stride-1 48×48 conv (1→1, 2×1×256²) direct and as polyphase(b), b = 1, 2, 4, 8, 16, with MAC ratios."""
    import pixelfold

    n = ctx.n(2, 1)
    hw = 96 if ctx.quick else 256
    blocks = (2, 4) if ctx.quick else (1, 2, 4, 8, 16)
    torch.manual_seed(0)
    conv = ctx.module(nn.Conv2d(1, 1, 48))
    x = ctx.randn(n, 1, hw, hw)
    base = _macs(conv, tuple(x.shape))
    forms = [Form("original: Conv2d 1→1 k48 s1", conv, x, note=f"{base / 1e6:.0f} M MACs")]
    for b in blocks:
        try:
            poly = ctx.module(pixelfold.polyphase(conv, b)).freeze()
        except pixelfold.FoldError as e:
            forms.append(Form(f"polyphase({b})", lambda t: t, x, note=f"not built: {e}"))
            continue
        inner = poly.inner
        macs = macs_of(poly, tuple(x.shape))  # counted by torch (the frozen inner is not an nn.Conv2d)
        forms.append(Form(f"polyphase({b}), frozen", poly, x, note=f"inner: {inner}; {macs / base:.2f}× MACs"))
    forms.append(_tuned(conv, x, ctx))
    return [Case("sweep", f"stride-1 48×48 conv 1→1 on {n}×1×{hw}²: polyphase block sweep", forms,
                 note="tune must find the best block: only measurement does (issue 12)")]


def _tuned(conv: nn.Module, x: torch.Tensor, ctx: Context) -> Form:
    """``pixelfold.tune`` of a model holding only ``conv``, measured beside the forms it chose among."""
    from pixelfold.tune import _label, tune

    tuned, plan = tune(nn.Sequential(conv), x, rounds=3 if ctx.quick else 5,
                       min_run_time=0.01 if ctx.quick else 0.1, progress=False, freeze=True)
    lp = plan.layers[0]
    return Form("tune()", tuned.eval(), x, note=f"kept {_label(lp.choice, lp.options)} (tried "
                f"{', '.join(sorted(lp.times_ms))})")


class _HandLinear(nn.Module):
    """The patchify conv as a user writes it: unfold the patches by view/permute, then one ``F.linear``."""

    def __init__(self, conv: nn.Module, contiguous: bool = False) -> None:
        super().__init__()
        self.contiguous = contiguous  # copy the (N, O, *out) view to the conv's own (contiguous) layout
        self.k = tuple(conv.kernel_size)
        self.weight = nn.Parameter(conv.weight.detach().reshape(conv.out_channels, -1).clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, *S = x.shape
        n = len(S)
        outer = [s // k for s, k in zip(S, self.k)]
        v = x.reshape(N, C, *[d for o, k in zip(outer, self.k) for d in (o, k)])
        p = v.permute(0, *[2 + 2 * i for i in range(n)], 1, *[3 + 2 * i for i in range(n)])
        y = F.linear(p.reshape(N, *outer, -1), self.weight, self.bias).movedim(-1, 1)
        return y.contiguous() if self.contiguous else y


def patch_embed_cases(ctx: Context) -> list[Case]:
    """ViT-B/16 Conv2d(3, 768, 16, 16) on 224² and Qwen2-VL Conv3d(3, 1280, (2, 14, 14)) on 1024 patches."""
    import pixelfold

    torch.manual_seed(0)
    n = ctx.n(8, 1)
    hw = 64 if ctx.quick else 224
    specs = [(f"ViT-B/16 Conv2d(3, 768, 16, 16) at {n}×3×{hw}²", nn.Conv2d(3, 768, 16, 16), (n, 3, hw, hw))]
    # Qwen2-VL feeds (patches, 3·2·14·14) rows; as a Conv3d on 1024 patches: a 2×(32·14)×(32·14) clip
    side = 8 if ctx.quick else 32
    specs.append((f"Qwen2-VL Conv3d(3, 1280, (2, 14, 14)) on {side * side} patches (1×3×2×{side * 14}²)",
                  nn.Conv3d(3, 1280, (2, 14, 14), (2, 14, 14), bias=False), (1, 3, 2, side * 14, side * 14)))
    cases = []
    for title, conv, shape in specs:
        conv = ctx.module(conv).eval()
        x = ctx.randn(*shape)
        pl = ctx.module(pixelfold.PatchLinear(conv)).freeze().eval()
        pl_cl = ctx.module(pixelfold.PatchLinear(conv, memory_format="channels_last")).freeze().eval()
        cases.append(Case("patch_embed", title, [
            Form("original conv", conv, x),
            Form("pixelfold.PatchLinear, frozen", pl, x, note="W @ patchesᵀ: contiguous output, as the conv's"),
            Form("hand-written view/permute + F.linear + contiguous()", ctx.module(_HandLinear(conv, True)).eval(),
                 x, note="the conv's layout by one more copy"),
            Form("pixelfold.PatchLinear(memory_format='channels_last'), frozen", pl_cl, x,
                 note="patches @ Wᵀ viewed as (N, O, *out)"),
            Form("hand-written view/permute + F.linear", ctx.module(_HandLinear(conv)).eval(), x,
                 note="the same GEMM and view"),
        ], note="target: PatchLinear ≤ 1.05× the hand-written F.linear with the same output layout"))
    return cases


def sweep_targets(results: list) -> list[dict]:
    """PatchLinear ≤ 1.05× the hand-written F.linear; the best polyphase block of the sweep (informational)."""
    from .measure import paired_ratio

    rows = []
    ok = [r for r in results if r.status == "ok"]
    for case in dict.fromkeys(r.case for r in ok if r.group == "patch_embed"):
        rs = {r.form.removesuffix(", frozen"): r for r in ok if r.case == case}
        name = case.split(" on ")[0].split(" at ")[0]
        for mine, theirs, what in [
                ("pixelfold.PatchLinear", "hand-written view/permute + F.linear + contiguous()", "the conv's layout"),
                ("pixelfold.PatchLinear(memory_format='channels_last')", "hand-written view/permute + F.linear",
                 "channels-last view")]:
            if mine in rs and theirs in rs:
                ratio = paired_ratio(rs[mine], rs[theirs])
                rows.append({"target": f"{name}: PatchLinear vs hand-written F.linear ({what})",
                             "block": "-", "ratio": ratio, "limit": 1.05, "met": bool(ratio <= 1.05)})
    for case in dict.fromkeys(r.case for r in ok if r.group == "sweep"):
        rs = [r for r in ok if r.case == case]
        poly = [r for r in rs[1:] if r.form.startswith("polyphase")]
        if poly:
            best = min(poly, key=lambda r: r.ratio)
            rows.append({"target": f"best polyphase block ({best.form.split(',')[0]}) vs direct 48×48 conv",
                         "block": best.form.split("(")[1].split(")")[0], "ratio": best.ratio, "limit": 1.0,
                         "met": bool(best.ratio <= 1.0)})
    return rows
