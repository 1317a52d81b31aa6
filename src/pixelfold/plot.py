"""A figure that teaches the seed equivalence: weights and maps, depth form vs space form.

Four panels per row: the depth-form weight (one ``K×K`` slice per input
channel, laid out by the phase the channel moves to), the space-form
``rK×rK`` kernel with every tap coloured by the channel it came from, the
depth map (a crop of every channel) and the space map ``depth_to_space(x, r)``
(a crop), each pixel coloured by its channel. Boxes mark the window of one
output in both maps. The colours are computed by running pixelfold's own
transforms on index-encoded tensors, so the figure shows what the library
does (orders, dilation, groups and rectangular blocks included).

When the question's block is large, a second row shows the same for a block
of 2 (4 channels, labelled taps and pixels), which is easier to read.

matplotlib is imported only here, lazily, and draws with its Agg canvas
(no pyplot, so an interactive session's backend is left alone).

Example:
    >>> import tempfile, os
    >>> from pixelfold import explain, plot
    >>> r = explain.seed_report(channels=4, block=2, size=4, time=False)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = plot.seed_figure(r, os.path.join(d, "seed.png"))
    ...     os.path.getsize(path) > 10_000
    True
"""

from __future__ import annotations

import math
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .rearrange import depth_to_space
from .spec import ConvSpec
from .transforms import to_space_weight

__all__ = ["Panels", "panels", "seed_figure"]


# ---------------------------------------------------------------------------- the data behind the figure
@dataclass
class Panels:
    """2-D index arrays behind one row of the figure (3-D: the slice at offset 0 of the first dim).

    Channel ids are depth-form input channels (``-1``: a zero tap of a
    dilated kernel); ``phase_grid[i, j]`` is the channel whose pixels land at
    offset ``(i, j)`` of each block. Taps and pixels are numbered row-major
    within a channel's slice / crop.
    """

    spec: ConvSpec
    space_spec: ConvSpec
    block: tuple[int, int]
    order: str
    size: tuple[int, ...]
    phase_grid: np.ndarray  # (b0, b1) channel ids
    kernel: tuple[int, int]  # depth-form kernel (taps) shown per tile
    space_channel: np.ndarray  # (E0*b0, E1*b1) channel id per tap of the big kernel, -1 for zero taps
    space_tap: np.ndarray  # same shape: tap index (row-major in the K×K slice), -1 for zero taps
    crop: tuple[int, int]  # depth-map crop shown per channel
    map_channel: np.ndarray  # (crop0*b0, crop1*b1) channel id per pixel of the space map
    map_pixel: np.ndarray  # same shape: (y, x) of the source pixel, as y*crop1 + x
    depth_window: tuple[tuple[int, int], tuple[int, int]]  # (start, stop) per dim, depth-map pixels
    space_window: tuple[tuple[int, int], tuple[int, int]]
    out_pos: tuple[int, int]
    lifted: int  # 1: a 1-D question drawn as 1×n; 3: a 3-D question sliced; 2: as is
    nd_block: tuple[int, ...]  # the question's block, one entry per spatial dim


def _lift(t: torch.Tensor, dims: int, lead: int) -> torch.Tensor:
    """Make the trailing ``dims`` axes 2-D: unsqueeze 1-D, take index 0 of the first spatial axis for 3-D."""
    if dims == 1:
        return t.unsqueeze(lead)
    if dims == 3:
        return t.select(lead, 0)
    return t


def panels(spec: ConvSpec, block: Sequence[int], order: str = "crd", size: Sequence[int] | None = None) -> Panels:
    """Index arrays for one row of the figure, computed with pixelfold's own transforms.

    >>> p = panels(ConvSpec.make(4, 1, 3, padding=1), (2, 2), size=(4, 4))
    >>> p.phase_grid.tolist()
    [[0, 1], [2, 3]]
    >>> p.space_channel[:2, :4].tolist()
    [[0, 1, 0, 1], [2, 3, 2, 3]]
    >>> p.depth_window, p.space_window
    (((0, 3), (0, 3)), ((0, 6), (0, 6)))
    """
    n = spec.dims
    b = tuple(block)
    R = math.prod(b)
    size = tuple(size) if size is not None else (8,) * n
    Cg = spec.in_channels // spec.groups
    # --- weights: channel ids and tap ids through to_space_weight
    K = spec.kernel
    w_ch = (torch.arange(Cg, dtype=torch.float64) + 1).view(1, Cg, *[1] * n).expand(1, Cg, *K).contiguous()
    w_tap = (torch.arange(math.prod(K), dtype=torch.float64) + 1).view(1, 1, *K).expand(1, Cg, *K).contiguous()
    sw_ch, sspec = to_space_weight(w_ch, spec.replace(out_channels=1, groups=1, in_channels=Cg), b, order)
    sw_tap, _ = to_space_weight(w_tap, spec.replace(out_channels=1, groups=1, in_channels=Cg), b, order)
    space_channel = _lift(sw_ch[0, 0], n, 0).round().long().numpy() - 1
    space_tap = _lift(sw_tap[0, 0], n, 0).round().long().numpy() - 1
    # --- which channel sits at which phase (of space channel 0)
    ids = (torch.arange(Cg, dtype=torch.float64) + 1).view(1, Cg, *[1] * n)
    phase_grid = _lift(depth_to_space(ids, b, order)[0, 0], n, 0).round().long().numpy() - 1
    # --- the window of one output, and the crop of the maps that holds it
    out = spec.output_size(size)
    T = tuple(1 if o >= 2 else 0 for o in out)
    span = spec.span
    d_win = [(t * s - lo, t * s - lo + e) for t, s, (lo, _), e in zip(T, spec.stride, spec.padding, span)]
    crop = []
    for L, (a, z), bi in zip(size, d_win, b):
        want = max(z + 1, 4)  # the window of output T, plus one more pixel to show it is a window
        crop.append(max(1, min(L, want, max(1, 256 // bi))))
    x_ch = ids.expand(1, Cg, *crop).contiguous()
    pix = torch.arange(math.prod(crop), dtype=torch.float64).view(1, 1, *crop).expand(1, Cg, *crop).contiguous()
    map_channel = _lift(depth_to_space(x_ch, b, order)[0, 0], n, 0).round().long().numpy() - 1
    map_pixel = _lift(depth_to_space(pix, b, order)[0, 0], n, 0).round().long().numpy()
    s_win = [(a * bi, z * bi) for (a, z), bi in zip(d_win, b)]

    def two(t: Sequence[Any], fill: Any) -> tuple[Any, Any]:
        if n == 1:
            return (fill, t[0])
        if n == 3:
            return (t[1], t[2])
        return (t[0], t[1])

    return Panels(
        spec=spec, space_spec=sspec, block=two(b, 1), order=order, size=size, phase_grid=phase_grid,
        kernel=two(K, 1), space_channel=space_channel, space_tap=space_tap, crop=two(crop, 1),
        map_channel=map_channel, map_pixel=map_pixel,
        depth_window=two(d_win, (0, 1)), space_window=two(s_win, (0, 1)), out_pos=two(T, 0), lifted=n,
        nd_block=b,
    )


# ---------------------------------------------------------------------------- colours
def _palette(p: Panels) -> dict[int, np.ndarray]:
    """Colour per channel id, from the phase it moves to.

    Up to 10 phases: a qualitative colormap. More: hue by the row phase and
    shade (dark → pale) by the column phase, so each channel's place inside
    the block can be read off its colour.
    """
    import matplotlib

    b0, b1 = p.phase_grid.shape
    R = b0 * b1
    cols: dict[int, np.ndarray] = {}
    if R <= 10:
        cmap = matplotlib.colormaps["tab10"]
        for k, c in enumerate(p.phase_grid.reshape(-1)):
            cols[int(c)] = np.array(cmap(k)[:3])
        return cols
    hsv = matplotlib.colormaps["hsv"]
    rows, shades = (b0, b1) if min(b0, b1) > 1 else (R, 1)
    for k, c in enumerate(p.phase_grid.reshape(-1)):
        i, j = divmod(k, shades) if shades > 1 else (k, 0)
        base = np.array(hsv(0.9 * i / max(1, rows - 1))[:3]) * 0.95
        if shades > 1:
            t = j / (shades - 1)  # 0: dark, 0.5: the hue, 1: pale
            base = base * (0.45 + 1.1 * t) if t <= 0.5 else base + (t - 0.5) * 1.2 * (_WHITE - base)
        cols[int(c)] = np.clip(base, 0, 1)
    return cols


_WHITE = np.ones(3)
_ZERO = np.array([0.93, 0.93, 0.93])
_GAP = np.array([1.0, 1.0, 1.0])


def _tiles(p: Panels, pal: dict[int, np.ndarray], tile: tuple[int, int], gap: int
           ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """A canvas of one tile per phase (grid b0×b1), each tile ``tile`` cells; returns (rgb, [(row0, col0, ch)])."""
    b0, b1 = p.phase_grid.shape
    h, w = tile
    H, W = b0 * (h + gap) - gap, b1 * (w + gap) - gap
    img = np.ones((H, W, 3)) * _GAP
    origins = []
    for i in range(b0):
        for j in range(b1):
            ch = int(p.phase_grid[i, j])
            r0, c0 = i * (h + gap), j * (w + gap)
            img[r0:r0 + h, c0:c0 + w] = pal[ch]
            origins.append((r0, c0, ch))
    return img, origins


def _colour(ids: np.ndarray, pal: dict[int, np.ndarray]) -> np.ndarray:
    img = np.empty((*ids.shape, 3))
    for (y, x), ch in np.ndenumerate(ids):
        img[y, x] = _ZERO if ch < 0 else pal[int(ch)]
    return img


# ---------------------------------------------------------------------------- drawing
def _shape(t: Sequence[int]) -> str:
    return "×".join(str(v) for v in t)


def _compact(t: Sequence[int]) -> str:
    return str(t[0]) if len(set(t)) == 1 else _shape(t)


def _tap_label(t: int, K: tuple[int, int]) -> str:
    letters = string.ascii_lowercase
    return letters[t] if math.prod(K) <= 26 else str(t)


def _pix_label(y: int, x: int, crop: tuple[int, int], nd: int) -> str:
    """``"yx"`` for a pixel of a small crop (``"x"`` in 1-D); empty when the crop is too large to label."""
    if max(crop) > 10:
        return ""
    return f"{x}" if nd == 1 else f"{y}{x}"


def _style(ax: Any, img: np.ndarray, aspect: str) -> None:
    ax.imshow(img, interpolation="nearest", aspect=aspect)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _grid_lines(ax: Any, shape: tuple[int, int], step: tuple[int, int], colour: str = "white", lw: float = 1.2,
                origin: tuple[int, int] = (0, 0), extent: tuple[int, int] | None = None) -> None:
    """Lines every ``step`` cells inside the ``extent`` (default: all) starting at ``origin``."""
    H, W = extent if extent is not None else shape
    r0, c0 = origin
    for y in range(step[0], H, step[0]):
        ax.plot([c0 - 0.5, c0 + W - 0.5], [r0 + y - 0.5] * 2, color=colour, lw=lw, solid_capstyle="butt",
                zorder=2 + lw)
    for x in range(step[1], W, step[1]):
        ax.plot([c0 + x - 0.5] * 2, [r0 - 0.5, r0 + H - 0.5], color=colour, lw=lw, solid_capstyle="butt",
                zorder=2 + lw)


def _box(ax: Any, rows: tuple[int, int], cols: tuple[int, int], limit: tuple[int, int], **kw: Any) -> None:
    from matplotlib.patches import Rectangle

    r0, r1 = max(rows[0], 0), min(rows[1], limit[0])
    c0, c1 = max(cols[0], 0), min(cols[1], limit[1])
    if r1 <= r0 or c1 <= c0:
        return
    style = dict(fill=False, ec="black", lw=2.0, zorder=6)
    style.update(kw)
    ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, **style))


def _draw_row(fig: Any, axes: Sequence[Any], p: Panels, annotate: bool, label: str) -> None:
    pal = _palette(p)
    b0, b1 = p.block
    K = p.kernel
    R = b0 * b1
    aspect = "auto" if p.lifted == 1 else "equal"
    nd = len(p.size)
    lattice = _compact([d * bi for d, bi in zip(p.spec.dilation, p.nd_block)])
    ax_w, ax_sw, ax_m, ax_sm = axes
    font = 9 if annotate else 7
    gap = 1
    # highlighted channel (big rows): a phase away from the corner
    hi = _highlight(p) if not annotate else None
    hi_ch = int(p.phase_grid[hi]) if hi is not None else None

    # -- 1. depth-form weight: a tile per channel, K×K taps
    img, origins = _tiles(p, pal, K, gap)
    _style(ax_w, img, aspect)
    if annotate:
        for r0, c0, ch in origins:
            _grid_lines(ax_w, img.shape[:2], (1, 1), lw=0.5, origin=(r0, c0), extent=K)
            for y in range(K[0]):
                for x in range(K[1]):
                    ax_w.text(c0 + x, r0 + y, _tap_label(y * K[1] + x, K), ha="center", va="center",
                              fontsize=font, color="black")
            ax_w.text(c0 + (K[1] - 1) / 2, r0 - 0.62, f"ch {ch}", ha="center", va="bottom", fontsize=font,
                      color="black", fontweight="bold")
        ax_w.set_ylim(img.shape[0] - 0.5, -1.3)
    if hi is not None:
        r0, c0 = hi[0] * (K[0] + gap), hi[1] * (K[1] + gap)
        _box(ax_w, (r0, r0 + K[0]), (c0, c0 + K[1]), img.shape[:2], lw=1.6)
    sp = p.spec
    cin = f"the {R} channels feeding space channel 0" if sp.in_channels // sp.groups != R else f"{R} channels"
    slice_txt = f"{sp.kernel[0]}-tap" if nd == 1 else _shape(sp.kernel)
    if not annotate and R <= 32 and b1 <= 8:
        for r0, c0, ch in origins:
            ax_w.text(c0 + (K[1] - 1) / 2, r0 - 0.6, f"ch {ch}", ha="center", va="bottom", fontsize=font)
        ax_w.set_ylim(img.shape[0] - 0.5, -1.6)
    ax_w.set_title(f"depth-form weight {_shape(sp.weight_shape()[:2])}×{_shape(sp.kernel)}\n"
                   f"{cin}, one {slice_txt} slice each,\nplaced at the phase the channel moves to",
                   fontsize=10)

    # -- 2. space-form weight: rK×rK, each tap coloured by its channel
    img2 = _colour(p.space_channel, pal)
    _style(ax_sw, img2, aspect)
    H2, W2 = img2.shape[:2]
    _grid_lines(ax_sw, (H2, W2), (b0, b1), lw=3.0 if annotate else 0.8)
    if annotate:
        _grid_lines(ax_sw, (H2, W2), (1, 1), lw=0.5)
        for (y, x), t in np.ndenumerate(p.space_tap):
            if t >= 0:
                ax_sw.text(x, y, _tap_label(int(t), K), ha="center", va="center", fontsize=font)
    if hi_ch is not None:
        ys, xs = np.nonzero(p.space_channel == hi_ch)
        ax_sw.scatter(xs, ys, s=14, c="black", marker="o", linewidths=0, zorder=7)
    ss = p.space_spec
    ax_sw.set_title(f"space-form weight {_shape(ss.weight_shape())}, stride {_compact(ss.stride)}\n"
                    f"each channel's taps land on a stride-{lattice} lattice;\n"
                    f"each {'' if all(d == 1 for d in sp.dilation) else 'non-zero '}{_shape(p.nd_block)} block "
                    "holds one tap of every channel", fontsize=10)

    # -- 3. depth map: a crop of every channel
    cr = p.crop
    img3, origins3 = _tiles(p, pal, cr, gap)
    _style(ax_m, img3, aspect)
    (dr0, dr1), (dc0, dc1) = p.depth_window
    for r0, c0, ch in origins3:
        if annotate:
            _grid_lines(ax_m, img3.shape[:2], (1, 1), lw=0.5, origin=(r0, c0), extent=cr)
            for y in range(cr[0]):
                for x in range(cr[1]):
                    ax_m.text(c0 + x, r0 + y, _pix_label(y, x, cr, nd), ha="center", va="center",
                              fontsize=font - 1)
            ax_m.text(c0 + (cr[1] - 1) / 2, r0 - 0.62, f"ch {ch}", ha="center", va="bottom", fontsize=font,
                      fontweight="bold")
        _box(ax_m, (r0 + max(dr0, 0), r0 + min(dr1, cr[0])), (c0 + max(dc0, 0), c0 + min(dc1, cr[1])),
             img3.shape[:2],
             lw=1.6 if annotate else 0.7, clip_on=True)
    if annotate:
        ax_m.set_ylim(img3.shape[0] - 0.5, -1.3)
    if hi is not None:
        r0, c0 = hi[0] * (cr[0] + gap), hi[1] * (cr[1] + gap)
        _box(ax_m, (r0, r0 + cr[0]), (c0, c0 + cr[1]), img3.shape[:2], lw=1.6, ec="black")
    C = sp.in_channels
    sz = p.size
    if nd == 1:
        crop_txt = f"the first {cr[1]} of each channel's {sz[0]} pixels"
    else:
        crop_txt = f"top-left {_shape(cr)} of each {_shape(sz[-2:])} channel" + (" slice" if nd == 3 else "")
    o = p.out_pos[1:] if nd == 1 else p.out_pos
    o_txt = str(o[0]) if len(o) == 1 else str(tuple(o))
    ax_m.set_title(f"depth map x: {C}×{_shape(sz)}\n{crop_txt};\nbox: the window of output {o_txt}",
                   fontsize=10)

    # -- 4. space map: crop of depth_to_space(x)
    img4 = _colour(p.map_channel, pal)
    _style(ax_sm, img4, aspect)
    H4, W4 = img4.shape[:2]
    _grid_lines(ax_sm, (H4, W4), (b0, b1), lw=3.0 if annotate else 0.8)
    if annotate:
        _grid_lines(ax_sm, (H4, W4), (1, 1), lw=0.5)
        for (y, x), v in np.ndenumerate(p.map_pixel):
            yy, xx = divmod(int(v), cr[1])
            ax_sm.text(x, y, _pix_label(yy, xx, cr, nd), ha="center", va="center", fontsize=font - 1)
    (sr0, sr1), (sc0, sc1) = p.space_window
    _box(ax_sm, (sr0, sr1), (sc0, sc1), (H4, W4), lw=2.2)
    if hi_ch is not None:
        ys, xs = np.nonzero(p.map_channel == hi_ch)
        ax_sm.scatter(xs, ys, s=10, c="black", marker="o", linewidths=0, zorder=7)
    d2s = f"depth_to_space(x, {_compact(p.nd_block)}" + (f", '{p.order}')" if p.order != "crd" else ")")
    full = _shape([v * bi for v, bi in zip(sz, p.nd_block)])
    ax_sm.set_title(f"space map {d2s}: {C // math.prod(p.nd_block)}×{full}\n"
                    + (f"the first {W4}; box: the same window,\n" if nd == 1 else
                       f"top-left {H4}×{W4}; box: the same window,\n")
                    + f"{_shape(ss.kernel)} read at stride {_compact(ss.stride)}", fontsize=10)

    if p.lifted == 1:
        for a in axes:
            a.set_box_aspect(0.3)
    # row label, arrows
    fig.text(0.012, (ax_w.get_position().y0 + ax_w.get_position().y1) / 2, label, rotation=90,
             ha="left", va="center", fontsize=12, fontweight="bold")
    for a, bx, txt in ((ax_w, ax_sw, "to_space"), (ax_m, ax_sm, "depth_to_space")):
        pa, pb = a.get_position(), bx.get_position()
        y = (pa.y0 + pa.y1) / 2
        fig.text((pa.x1 + pb.x0) / 2, y + 0.018, txt, ha="center", va="bottom", fontsize=9, family="monospace")
        fig.add_artist(_arrow(fig, (pa.x1 + 0.004, y), (pb.x0 - 0.004, y)))


def _highlight(p: Panels) -> tuple[int, int]:
    """The phase whose channel the big rows mark with dots and outlines: one away from the corners."""
    b0, b1 = p.block
    return min(b0 - 1, b0 // 3 + (1 if b0 > 4 else 0)), min(b1 - 1, (2 * b1) // 3)


def _arrow(fig: Any, start: tuple[float, float], end: tuple[float, float]) -> Any:
    from matplotlib.patches import FancyArrowPatch

    return FancyArrowPatch(start, end, transform=fig.transFigure, arrowstyle="-|>", mutation_scale=16,
                           lw=1.6, color="0.25")


def seed_figure(report: Any, path: str | os.PathLike[str], dpi: int = 130) -> Path:
    """Draw the equivalence for ``report`` (a :class:`~pixelfold.explain.SeedReport`) to a PNG at ``path``.

    Returns the path written. The parent directory is created if needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    q = report.question
    spec = ConvSpec.make(q["channels"], q["out_channels"], q["kernel"], q["stride"], q["padding"],
                         q["dilation"], q["groups"], dims=q["dims"])
    main = panels(spec, report.block, report.order, q["size"])
    R = math.prod(report.block)
    big = R > 4 or max(main.space_channel.shape) > 12 or max(main.crop) > 6
    rows = [(main, not big)]
    if big:
        small_spec = ConvSpec.make(4, 1, 3, padding=1)
        rows.append((panels(small_spec, (2, 2), report.order, (4, 4)), True))

    heights = [0.5 if p.lifted == 1 else 1.0 for p, _ in rows]
    fig_h = 5.7 * sum(heights) + 1.0
    fig = Figure(figsize=(19, fig_h))
    FigureCanvasAgg(fig)
    top = 1 - 1.25 / fig_h
    bottom = 0.55 / fig_h
    gs = fig.add_gridspec(len(rows), 4, height_ratios=heights, left=0.055, right=0.99, top=top, bottom=bottom,
                          wspace=0.36, hspace=0.24)
    ds, ss = report.depth, report.space
    fig.suptitle(
        f"{ds.spec} on {_shape(ds.input_shape[1:])}   =   {ss.spec} on "
        f"{_shape(ss.input_shape[1:])} = depth_to_space(x, {_compact(report.block)})\n"
        + (f"same weights, same {ds.macs:,} MACs, same {_shape(ds.output_shape[1:])} output — only the layout "
           "differs" if ds.macs == ss.macs else
           f"same {_shape(ds.output_shape[1:])} output; the dilation is written out as zero taps (grey)")
        + f" (order {report.order!r}; colour = the input channel, i.e. the phase it moves to)",
        fontsize=13, y=1 - 0.18 / fig_h, va="top",
    )
    for k, (p, annotate) in enumerate(rows):
        axes = [fig.add_subplot(gs[k, c]) for c in range(4)]
        if k == 0:
            where = {1: "\n(1-D, drawn as 1×n)", 3: "\n(3-D: the slice at offset 0 of dim 0)"}.get(p.lifted, "")
            label = f"your question{where}"
        else:
            label = "the same at block 2 (4 channels → 1), labelled"
        _draw_row(fig, axes, p, annotate, label)
    if big:
        ch = int(main.phase_grid[_highlight(main)])
        lat = _compact([d * bi for d, bi in zip(main.spec.dilation, main.nd_block)])
        note = (f"Black dots / outlines: channel {ch}. Its {_shape(main.spec.kernel)} taps sit {lat} apart in the "
                f"big kernel, exactly as its pixels sit {_compact(main.nd_block)} apart in the space map, so the big "
                f"kernel at stride {_compact(main.space_spec.stride)} multiplies the same pairs as the small one.")
        fig.text(0.5, 0.18 / fig_h, note, ha="center", va="bottom", fontsize=10.5, style="italic")
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor="white")
    return out
