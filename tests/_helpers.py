"""Strategies and reference checks shared by the tests.

Every exactness test compares against :mod:`pixelfold.reference` (a direct
NumPy float64 convolution, written without torch) on small shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from torch import nn

from pixelfold import reference
from pixelfold.spec import CONV_TRANSPOSE_TYPES, CONV_TYPES, ConvSpec

F64_ATOL = 1e-10


def to_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def ref_conv(conv: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The reference output of a plain ``nn.ConvNd`` (any padding mode) on ``x``."""
    spec = ConvSpec.from_module(conv)
    return reference.conv(
        to_np(x),
        to_np(conv.weight),
        None if conv.bias is None else to_np(conv.bias),
        stride=spec.stride,
        padding=spec.padding,
        dilation=spec.dilation,
        groups=spec.groups,
        padding_mode=spec.padding_mode,
    )


def ref_conv_transpose(convt: nn.Module, x: torch.Tensor) -> np.ndarray:
    spec = ConvSpec.from_module(convt)
    return reference.conv_transpose(
        to_np(x),
        to_np(convt.weight),
        None if convt.bias is None else to_np(convt.bias),
        stride=spec.stride,
        padding=tuple(lo for lo, _ in spec.padding),
        output_padding=spec.output_padding,
        dilation=spec.dilation,
        groups=spec.groups,
    )


def assert_close_np(actual: torch.Tensor | np.ndarray, expected: np.ndarray, atol: float = F64_ATOL,
                    rtol: float = 0.0) -> None:
    a = to_np(actual) if isinstance(actual, torch.Tensor) else actual
    assert a.shape == expected.shape, f"shape {a.shape} != reference {expected.shape}"
    np.testing.assert_allclose(a, expected, atol=atol, rtol=rtol)


def dtype_tol(dtype: torch.dtype, scale: float) -> float:
    """Tolerance for a result of magnitude ``scale`` computed in ``dtype``.

    Sums of a few hundred products: a few ulps of the largest partial sum.
    """
    eps = {torch.float64: 1e-15, torch.float32: 1.2e-7, torch.bfloat16: 7.8e-3, torch.float16: 9.8e-4}[dtype]
    return 64 * eps * max(scale, 1.0)


@dataclass
class ConvCase:
    """A random conv layer and an input it accepts."""

    conv: nn.Module
    x: torch.Tensor
    params: dict[str, Any]

    def __repr__(self) -> str:
        return f"ConvCase({ConvSpec.from_module(self.conv)}, x={tuple(self.x.shape)}, {self.params})"


def make_conv(dims: int, cin: int, cout: int, kernel: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
              groups: int = 1, bias: bool = True, padding_mode: str = "zeros", seed: int = 0,
              dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    conv = CONV_TYPES[dims](cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                            bias=bias, padding_mode=padding_mode)
    return conv.to(dtype)


def make_convt(dims: int, cin: int, cout: int, kernel: Any, stride: Any = 1, padding: Any = 0,
               output_padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True, seed: int = 0,
               dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    m = CONV_TRANSPOSE_TYPES[dims](cin, cout, kernel, stride=stride, padding=padding,
                                   output_padding=output_padding, dilation=dilation, groups=groups, bias=bias)
    return m.to(dtype)


def tuples(draw: Any, dims: int, lo: int, hi: int) -> tuple[int, ...]:
    return tuple(draw(st.integers(lo, hi)) for _ in range(dims))


@st.composite
def dims_st(draw: Any, max_dims: int = 3) -> int:
    return draw(st.sampled_from([1, 2, 2, 3][: 4 if max_dims >= 3 else 3]))


def small_extent(dims: int) -> int:
    """Spatial extents shrink with the number of dims to keep the reference fast."""
    return {1: 24, 2: 14, 3: 7}[dims]


def spatial_for(draw: Any, dims: int, minimum: tuple[int, ...], multiple: tuple[int, ...] | None = None,
                extra: int | None = None) -> tuple[int, ...]:
    """Spatial sizes >= ``minimum`` (rounded to ``multiple`` if given)."""
    extra = small_extent(dims) // 2 if extra is None else extra
    out = []
    for i in range(dims):
        v = minimum[i] + draw(st.integers(0, extra))
        if multiple is not None:
            v = -(-v // multiple[i]) * multiple[i]
        out.append(v)
    return tuple(out)


def prod(t: tuple[int, ...]) -> int:
    return math.prod(t)
