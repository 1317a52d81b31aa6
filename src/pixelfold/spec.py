"""`ConvSpec`: a convolution's parameters, normalised per spatial dim.

A spec is what every transform reads and writes: kernel, stride, padding
(always as ``(lo, hi)`` pairs, so asymmetric padding is representable),
dilation, groups, bias, padding mode, and for transposed convolutions the
output padding. It knows the output-size arithmetic and the cost (MACs) of
the layer, which is what ``pixelfold explain`` and the benchmarks print.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import nn

from .errors import FoldError

__all__ = ["ConvSpec", "as_tuple", "build_module", "empty_module", "CONV_TYPES", "CONV_TRANSPOSE_TYPES", "PADDING_MODES"]

CONV_TYPES: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE_TYPES: dict[int, type[nn.Module]] = {
    1: nn.ConvTranspose1d,
    2: nn.ConvTranspose2d,
    3: nn.ConvTranspose3d,
}
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

Pair = tuple[int, int]


def _as_int(v: Any) -> int:
    """``v`` as an int if it is one (Python, NumPy or 0-d integer tensor); TypeError for floats, bools, strings."""
    if isinstance(v, bool):
        raise TypeError(f"{v!r} is a bool")
    return operator.index(v)


def as_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """Broadcast an int to ``n`` entries or check a sequence has ``n`` entries of ints.

    Floats are refused rather than truncated (``(2.7, 2)`` is not the block ``(2, 2)``).

    >>> as_tuple(2, 3, "block")
    (2, 2, 2)
    >>> as_tuple((2, 1), 2, "block")
    (2, 1)
    >>> as_tuple((2.7, 2), 2, "block")
    Traceback (most recent call last):
    ...
    pixelfold.errors.FoldError: block must be an int or a tuple of 2 ints, got (2.7, 2)
    """
    if isinstance(value, bool):
        raise FoldError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    try:
        return (operator.index(value),) * n
    except TypeError:
        pass
    try:
        out = tuple(_as_int(v) for v in value)
    except TypeError:
        raise FoldError(f"{name} must be an int or a tuple of {n} ints, got {value!r}") from None
    if len(out) != n:
        raise FoldError(
            f"{name} {tuple(value)!r} has {len(out)} entries but the tensor has {n} spatial "
            f"dim(s); give one entry per spatial dim or a single int"
        )
    return out


def _normalise_padding(
    padding: Any, kernel: tuple[int, ...], dilation: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[Pair, ...]:
    n = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            if any(s != 1 for s in stride):
                raise FoldError(f"padding='same' needs stride 1, got stride {stride}")
            pairs = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pairs.append((total // 2, total - total // 2))
            return tuple(pairs)
        raise FoldError(f"padding {padding!r} is not 'valid', 'same', an int or a tuple")
    if isinstance(padding, int):
        return ((padding, padding),) * n
    items = tuple(padding)
    if len(items) == n and all(isinstance(p, int) for p in items):
        return tuple((p, p) for p in items)
    if len(items) == n and all(len(p) == 2 for p in items):
        return tuple((int(p[0]), int(p[1])) for p in items)
    raise FoldError(
        f"padding {padding!r} must be an int, one int per spatial dim ({n}), or one (lo, hi) pair per dim"
    )


@dataclass(frozen=True)
class ConvSpec:
    """A convolution's parameters, one entry per spatial dim.

    ``padding`` holds ``(lo, hi)`` pairs; for a transposed convolution it is
    the symmetric ``padding`` argument of ``nn.ConvTransposeNd`` (``lo == hi``).

    Example:
        >>> spec = ConvSpec.from_module(torch.nn.Conv2d(256, 1, 3, padding=1))
        >>> spec.kernel, spec.padding, spec.output_size((64, 64))
        ((3, 3), ((1, 1), (1, 1)), (64, 64))
        >>> spec.macs((1, 256, 64, 64))
        9437184
    """

    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[Pair, ...]
    dilation: tuple[int, ...]
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"
    transposed: bool = False
    output_padding: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.kernel)
        if not 1 <= n <= 3:
            raise FoldError(f"pixelfold handles 1, 2 or 3 spatial dims, got {n}")
        for name in ("stride", "dilation"):
            if len(getattr(self, name)) != n:
                raise FoldError(f"{name} {getattr(self, name)} does not have {n} entries")
        if len(self.padding) != n:
            raise FoldError(f"padding {self.padding} does not have {n} (lo, hi) pairs")
        if not self.output_padding:
            object.__setattr__(self, "output_padding", (0,) * n)
        if self.padding_mode not in PADDING_MODES:
            raise FoldError(f"padding_mode {self.padding_mode!r} is not one of {PADDING_MODES}")
        for name in ("kernel", "stride", "dilation"):
            values = getattr(self, name)
            if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
                raise FoldError(f"{name} {values} must be positive ints in every dim")
        if any(not isinstance(v, int) or v < 0 for v in self.output_padding):
            raise FoldError(f"output_padding {self.output_padding} must be non-negative ints")
        for name in ("in_channels", "out_channels", "groups"):
            v = getattr(self, name)
            least = 0 if name == "in_channels" else 1  # 0: not known yet (a LazyConv before its first call)
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise FoldError(f"{name} must be a {'non-negative' if least == 0 else 'positive'} int, got {v!r}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise FoldError(
                f"in_channels {self.in_channels} and out_channels {self.out_channels} must both be divisible by "
                f"groups {self.groups}"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_module(cls, module: nn.Module) -> "ConvSpec":
        """Read the spec of an ``nn.ConvNd`` or ``nn.ConvTransposeNd``.

        String paddings (``"valid"``, ``"same"``) are resolved to numbers.
        """
        if not isinstance(module, nn.modules.conv._ConvNd):
            raise FoldError(f"expected an nn.ConvNd or nn.ConvTransposeNd, got {type(module).__name__}")
        kernel = tuple(module.kernel_size)
        stride = tuple(module.stride)
        dilation = tuple(module.dilation)
        if module.transposed:
            padding: tuple[Pair, ...] = tuple((p, p) for p in module.padding)  # type: ignore[union-attr]
        else:
            padding = _normalise_padding(module.padding, kernel, dilation, stride)
        return cls(
            in_channels=module.in_channels,
            out_channels=module.out_channels,
            kernel=kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            transposed=bool(module.transposed),
            output_padding=tuple(module.output_padding) if module.transposed else (),
        )

    @classmethod
    def make(
        cls,
        in_channels: int,
        out_channels: int,
        kernel: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: Any = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        dims: int = 2,
    ) -> "ConvSpec":
        """Build a (non-transposed) spec from ``nn.ConvNd``-style arguments.

        >>> ConvSpec.make(3, 64, 7, stride=2, padding=3).padding
        ((3, 3), (3, 3))
        >>> ConvSpec.make(3, 64, 0)
        Traceback (most recent call last):
        ...
        pixelfold.errors.FoldError: kernel (0, 0) must be positive ints in every dim
        """
        k = as_tuple(kernel, dims, "kernel")
        s = as_tuple(stride, dims, "stride")
        d = as_tuple(dilation, dims, "dilation")
        pad = _normalise_padding(padding, k, d, s)
        if any(lo < 0 or hi < 0 for lo, hi in pad):
            raise FoldError(f"padding {padding!r} must be non-negative (crop the input instead)")
        return cls(in_channels, out_channels, k, s, pad, d, groups, bias, padding_mode)

    # ------------------------------------------------------------------ properties
    @property
    def dims(self) -> int:
        """Number of spatial dims (1, 2 or 3)."""
        return len(self.kernel)

    @property
    def span(self) -> tuple[int, ...]:
        """Extent of the (dilated) kernel per dim: ``dilation * (kernel - 1) + 1``."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    @property
    def symmetric_padding(self) -> tuple[int, ...] | None:
        """Per-dim padding if every dim pads both sides equally, else ``None``."""
        if all(lo == hi for lo, hi in self.padding):
            return tuple(lo for lo, _ in self.padding)
        return None

    @property
    def params(self) -> int:
        """Number of parameters (weight and bias)."""
        w = self.out_channels * (self.in_channels // self.groups) * math.prod(self.kernel)
        return w + (self.out_channels if self.bias else 0)

    # ------------------------------------------------------------------ arithmetic
    def output_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Output spatial size for an input of spatial size ``spatial``."""
        if len(spatial) != self.dims:
            raise FoldError(f"spatial size {tuple(spatial)} does not have {self.dims} entries")
        out = []
        for L, k, s, (lo, hi), d, op in zip(
            spatial, self.kernel, self.stride, self.padding, self.dilation, self.output_padding
        ):
            if self.transposed:
                out.append((L - 1) * s - lo - hi + d * (k - 1) + op + 1)
            else:
                out.append((L + lo + hi - d * (k - 1) - 1) // s + 1)
        return tuple(out)

    def macs(self, input_shape: Sequence[int]) -> int:
        """Multiply-accumulates of one forward pass on ``input_shape`` = (N, C, *spatial).

        For a transposed conv this counts every input pixel times every tap
        (what a direct implementation does).
        """
        n, spatial = input_shape[0], tuple(input_shape[2:])
        per_tap = (self.in_channels // self.groups) * self.out_channels * math.prod(self.kernel)
        if self.transposed:
            return n * per_tap * math.prod(spatial)
        return n * per_tap * math.prod(self.output_size(spatial))

    # ------------------------------------------------------------------ building
    def module_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the matching ``nn.ConvNd`` / ``nn.ConvTransposeNd``.

        Raises :class:`FoldError` if the padding is asymmetric (which no
        ``nn.ConvNd`` can express).
        """
        pad = self.symmetric_padding
        if pad is None:
            raise FoldError(
                f"padding {self.padding} is asymmetric, which nn.Conv{self.dims}d cannot express; "
                "pad the input explicitly (torch.nn.functional.pad) or use a pixelfold module, which does"
            )
        kwargs: dict[str, Any] = dict(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=self.kernel,
            stride=self.stride,
            padding=pad,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias,
            padding_mode=self.padding_mode,
        )
        if self.transposed:
            kwargs["output_padding"] = self.output_padding
        return kwargs

    def module_type(self) -> type[nn.Module]:
        """The ``nn`` class this spec describes."""
        return (CONV_TRANSPOSE_TYPES if self.transposed else CONV_TYPES)[self.dims]

    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the weight tensor (PyTorch's layout for the conv kind)."""
        if self.transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    def replace(self, **changes: Any) -> "ConvSpec":
        """A copy with some fields changed (``dataclasses.replace``)."""
        return replace(self, **changes)

    def __str__(self) -> str:
        def fmt(t: Sequence[int]) -> str:
            return "×".join(str(v) for v in t)

        pad = self.symmetric_padding
        pad_s = fmt(pad) if pad is not None else ",".join(f"{lo}/{hi}" for lo, hi in self.padding)
        kind = "ConvTranspose" if self.transposed else "Conv"
        parts = [
            f"{kind}{self.dims}d {self.in_channels}→{self.out_channels}",
            f"k{fmt(self.kernel)}",
            f"s{fmt(self.stride)}",
            f"p{pad_s}",
        ]
        if any(d != 1 for d in self.dilation):
            parts.append(f"d{fmt(self.dilation)}")
        if self.groups != 1:
            parts.append(f"g{self.groups}")
        if self.padding_mode != "zeros":
            parts.append(self.padding_mode)
        if self.transposed and any(self.output_padding):
            parts.append(f"op{fmt(self.output_padding)}")
        return " ".join(parts)


def empty_module(spec: ConvSpec, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> nn.Module:
    """An ``nn.ConvNd`` / ``nn.ConvTransposeNd`` for ``spec`` with uninitialised tensors.

    Built on the meta device and materialised with ``to_empty``, so it neither spends time on a
    random init that is overwritten at once nor advances the global RNG (pixelfold's constructors
    must not change what the user's next ``torch.randn`` returns).

    >>> state = torch.random.get_rng_state()
    >>> m = empty_module(ConvSpec.make(3, 8, 3))
    >>> torch.equal(state, torch.random.get_rng_state()), type(m).__name__
    (True, 'Conv2d')
    """
    module = spec.module_type()(**spec.module_kwargs(), device="meta", dtype=dtype)
    return module.to_empty(device=device if device is not None else "cpu")


def build_module(
    spec: ConvSpec,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    like: nn.Module | None = None,
) -> nn.Module:
    """A fresh ``nn.ConvNd`` with ``spec`` and the given weight/bias (copied).

    dtype and device follow ``weight``; ``requires_grad`` follows ``like``'s
    weight when given.
    """
    module = empty_module(spec, weight.device, weight.dtype)
    with torch.no_grad():
        if tuple(module.weight.shape) != tuple(weight.shape):
            raise FoldError(f"internal: weight shape {tuple(weight.shape)} != spec's {tuple(module.weight.shape)}")
        module.weight.copy_(weight)
        if module.bias is not None and bias is not None:
            module.bias.copy_(bias)
    if like is not None:
        module.weight.requires_grad_(like.weight.requires_grad)
        if module.bias is not None and getattr(like, "bias", None) is not None:
            module.bias.requires_grad_(like.bias.requires_grad)
        module.train(like.training)
    return module
