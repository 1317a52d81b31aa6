"""The rearrangement-limit group: pixelfold's space_to_depth / depth_to_space in every order, 1-3-D,
contiguous and channels-last, next to the hand-written reshape/permute/contiguous of the same tensor
(:mod:`pixelfold.bench.handwritten`), einops (when installed) and ``clone()`` (the copy floor, ratio 1 and
the GB/s reference). Target (issue 12): pixelfold ≤ 1.1× the best hand-written form."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from . import handwritten as H
from .model import Case, Context, Form, to_layout

ORDERS = ("crd", "dcr", "focus")


def _einops() -> object | None:
    try:
        import einops
    except ImportError:
        return None
    return einops


def _shapes(ctx: Context) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input shape, block): about 6.4 M values each (1.6 M in quick mode: 2-D only)."""
    n = ctx.n(8, 1)
    if ctx.quick:
        return [((n, 16, 32, 32), (2, 2))]
    return [((n, 32, 112 * 112), (4,)), ((n, 32, 112 * 112), (16,)),
            ((n, 32, 112, 112), (2, 2)), ((n, 32, 112, 112), (4, 4)), ((n, 32, 112, 112), (8, 8)),
            ((n, 16, 8, 56, 56), (2, 2, 2)), ((n, 16, 8, 56, 56), (1, 2, 2))]


def _layouts(dims: int) -> tuple[str, str]:
    return {1: ("NCL", "NLC"), 2: ("NCHW", "channels_last"), 3: ("NCDHW", "channels_last_3d")}[dims]


def limit_cases(ctx: Context) -> list[Case]:
    from ..rearrange import depth_to_space, space_to_depth

    einops = _einops()
    cases = []
    for (shape, block), order in itertools.product(_shapes(ctx), ORDERS):
        n = len(block)
        x0 = ctx.randn(*shape)
        y0 = H.s2d(x0, block, order)
        gb = 2 * x0.numel() * x0.element_size() / 1e9  # read + write, GB
        for layout in _layouts(n):
            x, y = to_layout(x0, layout), to_layout(y0, layout)
            ps, pd = H.einops_patterns(n, order)
            kw = H.einops_block(n, block)
            b = "×".join(map(str, block))
            for what, t, want in (("space_to_depth", x, y0), ("depth_to_space", y, x0)):
                s2d = what == "space_to_depth"
                ours: Callable[[torch.Tensor], torch.Tensor] = (
                    (lambda t, o=order, b=block: space_to_depth(t, b, o)) if s2d else
                    (lambda t, o=order, b=block: depth_to_space(t, b, o)))
                hand = ((lambda t, o=order, b=block: H.s2d(t, b, o)) if s2d else
                        (lambda t, o=order, b=block: H.d2s(t, b, o)))
                forms = [Form("clone()", torch.clone, t, layout, expected=t, note=f"{gb:.3f} GB moved"),
                         Form("hand-written reshape/permute/contiguous", hand, t, layout, expected=want)]
                if einops is not None:
                    pat = ps if s2d else pd
                    forms.append(Form("einops.rearrange", lambda t, p=pat, kw=kw: einops.rearrange(t, p, **kw), t, layout,
                                      expected=want, note="contiguous result"))
                forms.append(Form(f"pixelfold.{what} ({order})", ours, t, layout, expected=want))
                cases.append(Case("limit", f"{n}-D {what} b={b} {order}, {'×'.join(map(str, t.shape))} {layout}",
                                  forms, note=f"GB/s = {gb:.3f} GB / time"))
    return cases


def limit_targets(results: list) -> list[dict]:
    """pixelfold vs the best hand-written form (hand-written or einops) of each limit case, ≤ 1.1×."""
    from .measure import paired_ratio

    rows = []
    by_case: dict[str, list] = {}
    for r in results:
        if r.group == "limit" and r.status == "ok":
            by_case.setdefault(r.case, []).append(r)
    for case, rs in by_case.items():
        ours = next((r for r in rs if r.form.startswith("pixelfold.")), None)
        bars = [r for r in rs if r.form.startswith(("hand-written", "einops"))]
        if ours is None or not bars:
            continue
        ratio = max(paired_ratio(ours, b) for b in bars)  # to the fastest bar: the largest ratio
        clone = next((r for r in rs if r.form == "clone()"), None)
        gbs = ""
        if clone is not None and clone.note:
            gb = float(clone.note.split()[0])
            gbs = f"; {gb / (ours.time_ms / 1e3):.1f} GB/s vs clone {gb / (clone.time_ms / 1e3):.1f} GB/s"
        rows.append({"target": f"{case} vs best hand-written{gbs}", "block": case.split("b=")[1].split()[0],
                     "ratio": ratio, "limit": 1.1, "met": bool(ratio <= 1.1)})
    return rows
