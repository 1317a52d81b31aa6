"""The rearrangement group: space_to_depth / depth_to_space against clone() and torch's own ops."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .model import Case, Context, Form, to_layout


def _rearrange_cases(ctx: Context) -> list[Case]:
    from ..rearrange import depth_to_space, space_to_depth

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
