"""The benchmark suite's data model (forms, cases, results, groups) and the layouts forms run in."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..zoo import FocusOf

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
    from ..spec import ConvSpec

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


Focus = FocusOf  # YOLOv5's Focus around a given conv (named Focus, as YOLOv5 names it)
