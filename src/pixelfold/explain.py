"""The seed question, answered for any shapes: is a conv on a deep map the same as a big strided conv on its shuffle?

A ``K×K`` conv with stride ``S`` on a ``C×H×W`` map equals a ``rK×rK`` conv with
stride ``rS`` (and padding ``rP``) on ``depth_to_space(x, r)``, a
``C/r²×rH×rW`` map: every channel's ``K×K`` slice of the weight lands on a
stride-``r`` lattice in the big kernel, at the same offset (phase) where
``depth_to_space`` puts that channel's pixels. Same weights, same MACs, same
outputs: only the layout differs.

What is *not* the same is the big kernel at stride 1: it computes ``r²×`` the
outputs (``r²×`` the MACs), of which every ``rS``-th per dim is the seed's
result; its exact and efficient form is :func:`pixelfold.polyphase`.

:func:`seed_report` builds both forms, checks them on random data, optionally
times them, and returns a :class:`SeedReport`; :func:`format_report` renders
it as the text ``pixelfold explain`` prints.

Example:
    >>> from pixelfold import explain
    >>> r = explain.seed_report(channels=16, block=4, size=8, time=False)
    >>> print(format_report(r).splitlines()[0])
    pixelfold explain: is a 3×3 conv on a 16×8×8 map the same as a 12×12 conv with stride 4 on 1×32×32?
"""

from __future__ import annotations

import copy
import math
import sys
import textwrap
import time as _time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .errors import FoldError
from .layers import polyphase, to_space
from .rearrange import check_block, depth_to_space
from .spec import ConvSpec, as_tuple

from .explain_parts import _STRIDE1_MAC_BUDGET, FormInfo, Stride1Info, SeedReport, _jsonable, default_block, _shape, _compact, _pad_str, _si, _fmt_time, _fmt_err, _form, _phaseconv_macs, _max_err, _build_depth_conv, _stride1_conv, _check_size, _median_times  # noqa: F401  (re-exported)

__all__ = [
    "FormInfo",
    "Stride1Info",
    "SeedReport",
    "seed_report",
    "format_report",
    "default_block",
    "DEFAULT_SIZE",
    "DTYPES",
]

#: Default spatial size of the depth-form map, per number of spatial dims.
DEFAULT_SIZE = {1: 64, 2: 64, 3: 16}

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


Progress = Callable[[str], None]


# ---------------------------------------------------------------------------- the report
def seed_report(
    channels: int = 256,
    out_channels: int = 1,
    kernel: int | Sequence[int] = 3,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    block: int | Sequence[int] | None = None,
    size: int | Sequence[int] | None = None,
    dims: int = 2,
    order: str = "crd",
    dtype: str = "float32",
    batch: int = 1,
    time: bool = True,
    min_run_time: float = 0.2,
    seed: int = 0,
    progress: Progress | None = None,
) -> SeedReport:
    """Build the depth form and the space form of a conv, check them on random data, time them.

    The depth form is ``nn.ConvNd(channels, out_channels, kernel, stride,
    padding, dilation, groups)`` on ``(batch, channels, *size)``; the space
    form is :func:`pixelfold.to_space` of it, on
    ``depth_to_space(x, block, order)``. ``block=None`` picks the largest
    block whose product divides the channels of a group (16 for 256 channels
    in 2-D: the seed's "C² channels"); ``size=None`` is 64 (16 in 3-D).

    The check runs in float64 and in ``dtype``; timing (``time=True``) uses
    ``torch.utils.benchmark`` in ``dtype``, about ``min_run_time`` seconds
    per form. Raises :class:`~pixelfold.FoldError` for combinations that
    have no exact space form (e.g. channels not divisible by the block).

    Example:
        >>> r = seed_report(channels=16, block=4, size=8, time=False)
        >>> r.depth.spec, r.space.spec
        ('Conv2d 16→1 k3×3 s1×1 p1×1', 'Conv2d 1→1 k12×12 s4×4 p4×4')
        >>> r.space.input_shape, r.space.output_shape == r.depth.output_shape
        ((1, 1, 32, 32), True)
        >>> r.depth.macs == r.space.macs, r.depth.params == r.space.params, r.equal
        (True, True, True)
        >>> r.stride1.spec, r.stride1.output_shape, r.stride1.inner_spec
        ('Conv2d 1→1 k12×12 s1×1 p4×4', (1, 1, 29, 29), 'Conv2d 16→16 k4×4 s1×1 p0×0')
        >>> r.stride1.subsample_err < 1e-12 and r.stride1.polyphase_err < 1e-12
        True
        >>> seed_report(channels=12, block=4, size=8, time=False)
        Traceback (most recent call last):
        ...
        pixelfold.errors.FoldError: ... not divisible by prod(block) = 16; ...
    """
    say = progress or (lambda msg: None)
    if dims not in (1, 2, 3):
        raise FoldError(f"dims must be 1, 2 or 3, got {dims}")
    if dtype not in DTYPES:
        raise FoldError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if batch < 1:
        raise FoldError(f"batch must be positive, got {batch}")
    if time and not min_run_time > 0:
        raise FoldError(f"min_run_time must be positive, got {min_run_time}")
    k = as_tuple(kernel, dims, "kernel")
    s = as_tuple(stride, dims, "stride")
    d = as_tuple(dilation, dims, "dilation")
    pad: Any = padding if isinstance(padding, str) else as_tuple(padding, dims, "padding")
    if not isinstance(pad, str) and any(p < 0 for p in pad):
        raise FoldError(f"padding {pad} must not be negative")
    b = check_block(default_block(channels, dims, groups) if block is None else block, dims)
    sz = as_tuple(DEFAULT_SIZE[dims] if size is None else size, dims, "size")
    if any(v < 1 for v in sz):
        raise FoldError(f"size {sz} must be positive in every dim")
    question = dict(channels=channels, out_channels=out_channels, kernel=k, stride=s, padding=pad, dilation=d,
                    groups=groups, block=b, size=sz, dims=dims, order=order, dtype=dtype, batch=batch, seed=seed)

    gen = torch.Generator().manual_seed(seed)
    conv = _build_depth_conv(channels, out_channels, k, s, pad, d, groups, dims, gen)
    spec = ConvSpec.from_module(conv)
    out_size = spec.output_size(sz)
    if any(o < 1 for o in out_size):
        raise FoldError(
            f"size {_shape(sz)} is too small for {spec}: the output would be {_shape(out_size)}; "
            f"use a larger size"
        )
    space = to_space(conv, b, order)
    if not isinstance(space, nn.modules.conv._ConvNd):  # nn.Sequential(ZeroPadNd, conv): asymmetric padding
        raise FoldError(
            f"padding {spec.padding} is asymmetric ('same' with an even kernel): its space form is "
            "nn.Sequential(pad, conv) (pixelfold.to_space builds it), which explain does not compare with a "
            "stride-1 conv; use an odd kernel or explicit padding here"
        )
    sspec = ConvSpec.from_module(space)
    in_shape = (batch, channels, *sz)
    space_in = (batch, channels // math.prod(b), *[v * bi for v, bi in zip(sz, b)])
    out_shape = (batch, out_channels, *out_size)
    depth_f = _form("depth", spec, in_shape, out_shape)
    space_f = _form("space", sspec, space_in, (batch, sspec.out_channels, *sspec.output_size(space_in[2:])))

    # ---- check on random data
    say("checking the two forms on random data")
    x = torch.randn(in_shape, generator=gen, dtype=torch.float64)
    errors: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        y = conv(x)
        ys = space(depth_to_space(x, b, order))
        if tuple(ys.shape) != tuple(y.shape):  # pragma: no cover - would be a core bug
            raise FoldError(f"internal: space form gave {tuple(ys.shape)}, depth form {tuple(y.shape)}")
        errors["float64"] = {"max_abs_err": _max_err(y, ys), "max_abs_out": float(y.abs().max())}
        tdt = DTYPES[dtype]
        conv_t = copy.deepcopy(conv).to(tdt)
        space_t = copy.deepcopy(space).to(tdt)
        x_t = x.to(tdt)
        xs_t = depth_to_space(x_t, b, order).contiguous()
        if dtype != "float64":
            y_t = conv_t(x_t)
            ys_t = space_t(xs_t)
            errors[dtype] = {
                "max_abs_err": _max_err(y_t, ys_t),
                "max_abs_out": float(y.abs().max()),
                "depth_vs_float64": _max_err(y_t, y),
                "space_vs_float64": _max_err(ys_t, y),
            }
    scale = max(1.0, errors["float64"]["max_abs_out"])
    equal = errors["float64"]["max_abs_err"] <= 1e-9 * scale

    # ---- the big kernel at stride 1: not the same conv
    say("building the stride-1 kernel and its polyphase form")
    s1 = _stride1_conv(space, sspec)
    s1spec = ConvSpec.from_module(s1)
    s1_out = s1spec.output_size(space_in[2:])
    s1_macs = s1spec.macs(space_in)
    poly = polyphase(s1, b, order)
    poly_macs = _phaseconv_macs(poly, space_in)
    C_space = space_in[1]

    def s1_macs_at(depth_size: tuple[int, ...]) -> int:
        return s1spec.macs((1, C_space, *[v * bi for v, bi in zip(depth_size, b)]))

    # the smallest depth size for which the seed conv has an output
    min_size = tuple(max(1, e - lo - hi) for e, (lo, hi) in zip(spec.span, spec.padding))
    csize = _check_size(sz, min_size, s1_macs_at)
    say(f"checking the stride-1 kernel on a {_shape(csize)} depth map")
    xc = x if csize == sz and batch == 1 else torch.randn((1, channels, *csize), generator=gen, dtype=torch.float64)
    sub = tuple(sspec.stride)
    with torch.no_grad():
        yc = conv(xc)
        xc_space = depth_to_space(xc, b, order)
        y1 = s1(xc_space)
        y1_sub = y1[(slice(None), slice(None), *[slice(None, None, v) for v in sub])]
        if tuple(y1_sub.shape) != tuple(yc.shape):  # pragma: no cover - would be a core bug
            raise FoldError(f"internal: subsampled stride-1 output {tuple(y1_sub.shape)} != {tuple(yc.shape)}")
        sub_err = _max_err(y1_sub, yc)
        poly_err = _max_err(poly(xc_space), y1)
    stride1 = Stride1Info(
        spec=str(s1spec),
        input_shape=space_in,
        output_shape=(batch, s1spec.out_channels, *s1_out),
        macs=s1_macs,
        macs_ratio=s1_macs / depth_f.macs,
        subsample=sub,
        inner_spec=str(poly.inner),
        inner_kernel=tuple(poly.inner.kernel),
        polyphase_macs=poly_macs,
        check_size=csize,
        check_space_shape=tuple(xc_space.shape),
        subsample_err=sub_err,
        polyphase_err=poly_err,
    )

    # ---- timing
    times: dict[str, Any] | None = None
    if time:
        say(f"timing the depth form, the space form and depth_to_space ({dtype})")
        spread: dict[str, float] = {}
        t = _median_times(
            {
                "depth": (conv_t, x_t),
                "space": (space_t, xs_t),
                "depth_to_space": (lambda v: depth_to_space(v, b, order), x_t),
            },
            min_run_time,
            spread=spread,
        )
        times = {"dtype": dtype, "threads": torch.get_num_threads(), "unit": "s", **t,
                 "space_over_depth": t["space"] / t["depth"], "spread": spread}
        say(f"timing the stride-1 kernel and its polyphase form on a {_shape(csize)} depth map ({dtype})")
        s1_t = copy.deepcopy(s1).to(tdt)
        poly_t = polyphase(s1_t, b, order).freeze()
        xc_t = xc_space.to(tdt).contiguous()
        spread1: dict[str, float] = {}
        t1 = _median_times({"direct": (s1_t, xc_t), "polyphase": (poly_t, xc_t)}, min_run_time, spread=spread1)
        stride1.times = {**t1, "direct_over_polyphase": t1["direct"] / t1["polyphase"], "spread": spread1}

    notes = []
    if csize != sz:
        notes.append(
            f"the stride-1 checks ran on a {_shape(csize)} depth map: the direct {_shape(s1spec.kernel)} conv "
            f"at the full size ({_si(s1_macs)} MACs) is slow in float64"
        )
    return SeedReport(
        question=question, block=b, order=order, depth=depth_f, space=space_f, errors=errors, equal=equal,
        times=times, stride1=stride1, notes=notes,
    )


# ---------------------------------------------------------------------------- text
def _table(rows: list[tuple[str, str, str]], header: tuple[str, str, str]) -> list[str]:
    w0 = max(len(r[0]) for r in [header, *rows])
    w1 = max(len(r[1]) for r in [header, *rows])
    lines = [f"  {header[0]:<{w0}}   {header[1]:<{w1}}   {header[2]}".rstrip()]
    lines.append(f"  {'─' * w0}   {'─' * w1}   {'─' * max(len(r[2]) for r in [header, *rows])}")
    lines += [f"  {a:<{w0}}   {b:<{w1}}   {c}".rstrip() for a, b, c in rows]
    return lines


def format_report(r: SeedReport) -> str:
    """The report as plain text (what ``pixelfold explain`` prints).

    >>> r = seed_report(channels=4, block=2, size=4, time=False)
    >>> text = format_report(r)
    >>> "Conv2d 1→1 k6×6 s2×2 p2×2" in text and "polyphase(conv, 2)" in text
    True
    """
    dp, sp, s1 = r.depth, r.space, r.stride1
    bs = _compact(r.block)
    lattice = _compact([d * b for d, b in zip(dp.dilation, r.block)])
    out: list[str] = []
    d2s = f"depth_to_space(x, {bs}" + (f", {r.order!r})" if r.order != "crd" else ")")
    out.append(
        f"pixelfold explain: is a {_shape(dp.kernel)} conv on a {_shape(dp.input_shape[1:])} map the same as a "
        f"{_shape(sp.kernel)} conv with stride {_compact(sp.stride)} on {_shape(sp.input_shape[1:])}?"
    )
    out.append("")
    if r.equal:
        para = (
            f"Yes, exactly. {d2s} moves each channel's pixels to its offset (phase) inside a {_shape(r.block)} "
            f"block; the weight is rearranged the same way (pixelfold.to_space): every channel's "
            f"{_shape(dp.kernel)} slice lands on a stride-{lattice} lattice in the {_shape(sp.kernel)} kernel. "
            + ("Same weights, same MACs, same outputs: only the layout differs."
               if dp.macs == sp.macs else
               f"Same outputs; the dilation is written out as zero taps, so the space form has "
               f"{sp.macs / dp.macs:.3g}× the MACs (and a weight {sp.params / dp.params:.3g}× as large).")
        )
        out.append(textwrap.fill(para, width=108))
    else:  # pragma: no cover - would be a core bug
        out.append("NO: the two forms differ on random data (this is a bug in pixelfold; please report it).")
    out.append("")
    rows = [
        ("input", _shape(dp.input_shape), f"{_shape(sp.input_shape)}  = {d2s}"),
        ("layer", dp.spec, sp.spec),
        ("weight", _shape(dp.weight_shape), _shape(sp.weight_shape)),
        ("kernel", _shape(dp.kernel), _shape(sp.kernel)),
        ("stride", _shape(dp.stride), _shape(sp.stride)),
        ("padding", _pad_str(dp.padding), _pad_str(sp.padding)),
        ("dilation", _shape(dp.dilation), _shape(sp.dilation)),
        ("groups", str(dp.groups), str(sp.groups)),
        ("output", _shape(dp.output_shape), _shape(sp.output_shape)),
        ("parameters", f"{dp.params:,}", f"{sp.params:,}"),
        ("MACs", f"{dp.macs:,}  ({_si(dp.macs)})", f"{sp.macs:,}  ({_si(sp.macs)})"),
    ]
    out += _table(rows, ("", "depth form", "space form"))
    out.append("")
    out.append("check on random data (same x, same weights):")
    for name, e in r.errors.items():
        line = f"  {name:<9} max |depth − space| = {_fmt_err(e['max_abs_err'])}"
        if name != "float64":
            line += (f"   (vs float64: depth {_fmt_err(e['depth_vs_float64'])}, "
                     f"space {_fmt_err(e['space_vs_float64'])}; max |y| = {e['max_abs_out']:.3g})")
        out.append(line)
    if r.times is not None:
        t = r.times
        out.append("")
        out.append(f"time ({t['dtype']}, {t['threads']} thread{'s' if t['threads'] != 1 else ''}, "
                   "median, torch.utils.benchmark, forms interleaved):")
        ratio = t["space_over_depth"]
        rel = f"{ratio:.2f}× the depth form's time"
        rows_t = [
            ("depth form", dp.spec, _fmt_time(t["depth"]), ""),
            ("space form", sp.spec, _fmt_time(t["space"]), rel),
            ("", d2s + " alone", _fmt_time(t["depth_to_space"]), ""),
        ]
        w0 = max(len(a) for a, *_ in rows_t)
        w1 = max(len(b) for _, b, *_ in rows_t)
        w2 = max(len(c) for _, _, c, _ in rows_t)
        out += [f"  {a:<{w0}}   {b:<{w1}}   {c:>{w2}}   {e}".rstrip() for a, b, c, e in rows_t]

    # ---- not the same
    sub = ", ".join(f"::{v}" for v in s1.subsample)
    big = _shape(sp.kernel)
    ind = " " * 12
    out.append("")
    out.append(f"what is NOT the same: the {big} kernel at stride 1 (instead of {_compact(sp.stride)})")
    out.append(f"  {'layer':<10}{s1.spec} on {_shape(s1.input_shape)} → y1: {_shape(s1.output_shape)}")
    out.append(f"  {'MACs':<10}{s1.macs:,} ({_si(s1.macs)}) = {s1.macs_ratio:.0f}× the seed conv's "
               f"(≈{math.prod(s1.subsample)}× as many outputs)")
    out.append(f"  {'':<10}only y1[..., {sub}], one output in {math.prod(s1.subsample)}, is the seed's result y")
    inv = f"depth_to_space({bs}" + (f", {r.order!r})" if r.order != "crd" else ")")
    s2d = f"space_to_depth({bs}" + (f", {r.order!r})" if r.order != "crd" else ")")
    out.append(f"  the same stride-1 conv, exactly, as one dense conv on phases: polyphase(conv, {bs})")
    out.append(f"{ind}{s2d} → {s1.inner_spec} → {inv}")
    pr = s1.polyphase_macs / s1.macs
    line = f"  {'MACs':<10}{s1.polyphase_macs:,} ({_si(s1.polyphase_macs)}) = {pr:.2f}× the direct conv's"
    if pr > 1.005:
        line += f" (the shared {_shape(s1.inner_kernel)} window\n{ind}holds zero taps), in one dense conv"
    out.append(line)
    where = _shape(s1.check_size)
    smaller = s1.check_size != tuple(dp.input_shape[2:])
    out.append(f"  {'check':<10}on a {where} depth map ({_shape(s1.check_space_shape)} space map"
               + ("; the direct conv is slow in float64 at full size)" if smaller else ")"))
    out.append(f"{ind}float64  max |y1[..., {sub}] − y| = {_fmt_err(s1.subsample_err)}    "
               f"max |polyphase − y1| = {_fmt_err(s1.polyphase_err)}")
    if s1.times is not None and r.times is not None:
        t1 = s1.times
        ratio = t1["direct_over_polyphase"]
        cmp = f"polyphase {ratio:.2f}× faster" if ratio >= 1 else f"polyphase {1 / ratio:.2f}× slower"
        out.append(f"  {'time':<10}{r.times['dtype']}, {where} depth map: direct {_fmt_time(t1['direct'])}, "
                   f"polyphase {_fmt_time(t1['polyphase'])} ({cmp})")
    if r.times is not None:
        spreads = [*r.times["spread"].values(), *((s1.times or {}).get("spread", {}).values())]
        if spreads and max(spreads) > 0.15:
            out.append(f"  note: the timings spread by up to {max(spreads):.0%} (interquartile range / median): "
                       "the machine is busy;\n        rerun, or compare the ratios only")
    return "\n".join(out)


class StderrProgress:
    """Progress lines on stderr, shown only on a terminal and only once the run has taken more than ``after`` s."""

    def __init__(self, after: float = 1.0, stream: Any = None) -> None:
        self.start = _time.perf_counter()
        self.after = after
        self.stream = stream if stream is not None else sys.stderr
        self.shown = False
        self.pending: str | None = None

    def __call__(self, msg: str) -> None:
        self.pending = msg
        if not getattr(self.stream, "isatty", lambda: False)():
            return
        if _time.perf_counter() - self.start > self.after or msg.startswith("timing"):
            self.stream.write(f"\r\033[K… {msg}")
            self.stream.flush()
            self.shown = True

    def done(self) -> None:
        """Clear the progress line (if one was shown)."""
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False
