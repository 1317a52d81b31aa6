"""The parts of :func:'s answer: its result types and the small helpers that build them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import timing
from .errors import FoldError
from .layers import PhaseConv
from .spec import CONV_TYPES, ConvSpec

# float64 MACs allowed for the direct stride-1 demonstration (PyTorch's float64 conv is a slow
# reference path on CPU: ~0.1-0.5 G MAC/s here).
_STRIDE1_MAC_BUDGET = 1.5e8


# ---------------------------------------------------------------------------- result types
@dataclass
class FormInfo:
    """One form of the convolution: its layer, shapes and cost.

    ``padding`` holds ``(lo, hi)`` pairs per dim; ``params`` counts weight
    and bias; ``macs`` is for the whole batch.
    """

    name: str
    spec: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int
    params: int
    macs: int


@dataclass
class Stride1Info:
    """The big kernel at stride 1 — *not* the seed's conv — and its exact polyphase form.

    ``spec``/``input_shape``/``output_shape``/``macs`` are at the full size;
    ``inner_spec``/``polyphase_macs`` describe ``polyphase(conv, block)`` at
    the full size. The checks ran on ``check_size`` (the depth-form spatial
    size, smaller than the full one when the direct conv would be slow):
    ``subsample_err`` is ``max |y1[..., ::S] - y|`` and ``polyphase_err`` is
    ``max |polyphase(x) - y1(x)|``, both in float64.
    """

    spec: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int
    macs_ratio: float
    subsample: tuple[int, ...]
    inner_spec: str
    inner_kernel: tuple[int, ...]
    polyphase_macs: int
    check_size: tuple[int, ...]
    check_space_shape: tuple[int, ...]
    subsample_err: float
    polyphase_err: float
    times: dict[str, Any] | None = None


@dataclass
class SeedReport:
    """Everything ``pixelfold explain`` prints (``to_dict()`` is what ``--json`` prints).

    ``errors`` maps a dtype name to ``max_abs_err`` (depth form vs space
    form), ``max_abs_out`` and, for dtypes other than float64, each form's
    error against the float64 result. ``times`` (seconds, medians, with
    ``spread``: interquartile range over median per form) is ``None`` when
    timing was skipped.
    """

    question: dict[str, Any]
    block: tuple[int, ...]
    order: str
    depth: FormInfo
    space: FormInfo
    errors: dict[str, dict[str, float]]
    equal: bool
    times: dict[str, Any] | None
    stride1: Stride1Info
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return _jsonable(asdict(self))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------- helpers
def default_block(channels: int, dims: int, groups: int = 1) -> int:
    """The largest ``b`` with ``b**dims`` dividing the channels of a group: all channels into space, as in the seed.

    >>> default_block(256, 2), default_block(256, 1), default_block(256, 3), default_block(3, 2)
    (16, 256, 4, 1)
    """
    per_group = channels // groups if groups > 0 and channels % groups == 0 else channels
    best = 1
    b = 2
    while b**dims <= per_group:
        if per_group % b**dims == 0:
            best = b
        b += 1
    return best


def _shape(t: Sequence[int]) -> str:
    return "×".join(str(v) for v in t)


def _compact(t: Sequence[int]) -> str:
    """``(16, 16)`` -> ``'16'``, ``(2, 4)`` -> ``'2×4'``."""
    return str(t[0]) if len(set(t)) == 1 else _shape(t)


def _pad_str(padding: Sequence[tuple[int, int]]) -> str:
    if all(lo == hi for lo, hi in padding):
        return _shape([lo for lo, _ in padding])
    return ",".join(f"{lo}/{hi}" for lo, hi in padding)


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g}"


def _fmt_time(t: float) -> str:
    if t >= 1:
        return f"{t:.3g} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"


def _fmt_err(e: float) -> str:
    return "0" if e == 0 else f"{e:.2g}"


def _form(name: str, spec: ConvSpec, input_shape: Sequence[int], output_shape: Sequence[int]) -> FormInfo:
    return FormInfo(
        name=name,
        spec=str(spec),
        input_shape=tuple(input_shape),
        output_shape=tuple(output_shape),
        weight_shape=spec.weight_shape(),
        kernel=spec.kernel,
        stride=spec.stride,
        padding=spec.padding,
        dilation=spec.dilation,
        groups=spec.groups,
        params=spec.params,
        macs=spec.macs(tuple(input_shape)),
    )


def _phaseconv_macs(pc: PhaseConv, input_shape: Sequence[int]) -> int:
    """MACs of a :class:`PhaseConv`'s inner conv on an input of ``input_shape`` (N, C, *spatial)."""
    out = pc.spec.output_size(tuple(input_shape[2:]))
    inner_in = [(-(-o // b) - 1) * s + q for o, b, s, q in zip(out, pc.out_block, pc.inner.stride, pc.inner.kernel)]
    return pc.inner.macs((input_shape[0], pc.inner.in_channels, *inner_in))


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _build_depth_conv(
    channels: int, out_channels: int, kernel: tuple[int, ...], stride: tuple[int, ...], padding: Any,
    dilation: tuple[int, ...], groups: int, dims: int, gen: torch.Generator,
) -> nn.Module:
    if channels < 1 or out_channels < 1 or groups < 1:
        raise FoldError(
            f"channels ({channels}), out-channels ({out_channels}) and groups ({groups}) must be positive"
        )
    for name, t in (("kernel", kernel), ("stride", stride), ("dilation", dilation)):
        if any(v < 1 for v in t):
            raise FoldError(f"{name} {t} must be positive in every dim")
    if channels % groups or out_channels % groups:
        raise FoldError(
            f"channels ({channels}) and out-channels ({out_channels}) must both be divisible by groups ({groups})"
        )
    try:
        conv = CONV_TYPES[dims](channels, out_channels, kernel, stride, padding, dilation, groups, bias=True,
                                dtype=torch.float64)
    except (ValueError, RuntimeError, TypeError) as err:
        raise FoldError(f"cannot build the depth-form conv: {err}") from None
    with torch.no_grad():
        fan_in = (channels // groups) * math.prod(kernel)
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen, dtype=torch.float64) * 0.1)
    return conv


def _stride1_conv(space: nn.Module, spec: ConvSpec) -> nn.Module:
    """The space-form conv with its stride set to 1 (same weight, same padding)."""
    s1 = spec.replace(stride=(1,) * spec.dims)
    conv = s1.module_type()(**s1.module_kwargs(), dtype=space.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(space.weight)
        if conv.bias is not None:
            conv.bias.copy_(space.bias)
    return conv


def _check_size(size: tuple[int, ...], min_size: tuple[int, ...], macs_at: Callable[[tuple[int, ...]], int]
                ) -> tuple[int, ...]:
    """Shrink ``size`` (halving the largest dim) until the direct stride-1 conv fits the float64 budget."""
    cur = list(size)
    while macs_at(tuple(cur)) > _STRIDE1_MAC_BUDGET:
        i = max(range(len(cur)), key=lambda k: cur[k] - min_size[k])
        nxt = max(min_size[i], -(-cur[i] // 2))
        if nxt == cur[i]:
            break
        cur[i] = nxt
    return tuple(cur)


def _median_times(cases: dict[str, tuple[Callable[..., Any], Any]], min_run_time: float, rounds: int = 4,
                  spread: dict[str, float] | None = None
                  ) -> dict[str, float]:
    """Median per-call time (s) of each case, about ``min_run_time`` s each, interleaved over ``rounds`` rounds.

    ``spread``, if given, receives each case's interquartile range over its median.
    """
    fns = {name: (lambda fn=fn, arg=arg: fn(arg)) for name, (fn, arg) in cases.items()}
    with torch.no_grad():
        t = timing.interleaved(fns, rounds, min_run_time / rounds)
    if spread is not None:
        spread.update({name: t.spread(name) for name in cases})
    return {name: t.median(name) / 1e3 for name in cases}
