"""Layers that hide their function in ``forward``, and their exact pixelfold forms.

Real models compute convolutions their attributes do not describe: timm's
``StdConv2d`` standardises its weight in ``forward``, ``ScaledStdConv2d``
also scales it, the ``...Same`` variants and ``Conv2dSame`` pad TF-"same" per
input, ``BlurPool2d`` is a fixed strided depthwise blur with reflect padding,
``LazyConv2d`` has no weight yet, a quantized conv holds packed int8 weights.
Rewriting any of them from its attributes gives a wrong model. So pixelfold
keeps one registry, in the style of ``torch.ao``'s fuser mappings: a layer's
class, matched by qualified name (``timm.layers.std_conv.StdConv2d``; timm
need not be imported), maps to a :class:`Hidden` that gives

(a) the conv the layer really computes (:meth:`Hidden.spec`);
(b) its exact ``fold``/``polyphase`` form where there is one
    (:meth:`Hidden.form`): a :class:`~pixelfold.PhaseConv` that computes the
    hidden part (the standardised weight, the fixed filter, the per-input
    padding) in ``forward`` from the original Parameters and buffers, which it
    keeps (the same objects: ``state_dict`` keys unchanged, optimizers keep
    training them, gradients are the original's);
(c) the reason, in words, when a transform cannot apply (:meth:`Hidden.reason`).

:func:`pixelfold.rewrite` consults it; :func:`fold` and :func:`polyphase`
here are the layer API for these classes.

>>> import torch
>>> from timm.layers import StdConv2d
>>> conv = StdConv2d(3, 8, 3, stride=2, padding=1)
>>> folded = fold(conv)                          # the standardised weight, folded in forward
>>> x = torch.randn(1, 3, 9, 10)
>>> torch.allclose(folded(x), conv(x), atol=1e-5), folded.weight is conv.weight
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FoldError
from .layers import PhaseConv
from .rearrange import check_block
from .spec import PADDING_MODES, ConvSpec
from .transforms import check_stride_divisible

__all__ = ["Hidden", "REGISTRY", "lookup", "spec_of", "fold", "polyphase", "layer_refusal",
           "StdPhaseConv", "BlurPhaseConv", "tf_same_padding"]

FORMS = ("fold", "polyphase")
Builder = Callable[[nn.Module, tuple[int, ...], tuple[int, ...], str], PhaseConv]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------------------- specs
def _tuple(v: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (int(v),) * n if isinstance(v, int) else tuple(int(x) for x in v)


def attribute_spec(module: nn.Module) -> ConvSpec:
    """The spec a conv-like module's attributes describe (``nn.ConvNd``, quantized convs, ``CondConv2d``)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return ConvSpec.from_module(module)
    kernel = _tuple(module.kernel_size, 2)  # type: ignore[arg-type]
    n = len(kernel)
    transposed = bool(getattr(module, "transposed", False))
    pad = _tuple(module.padding, n)  # type: ignore[arg-type]
    bias = getattr(module, "bias", None)
    if callable(bias):  # quantized convs: bias() is a method
        bias = bias()
    mode = getattr(module, "padding_mode", "zeros")
    return ConvSpec(int(module.in_channels), int(module.out_channels), kernel,  # type: ignore[arg-type]
                    _tuple(module.stride, n), tuple((p, p) for p in pad),  # type: ignore[arg-type]
                    _tuple(module.dilation, n), groups=int(module.groups),  # type: ignore[arg-type]
                    bias=bias is not None, padding_mode=mode if mode in PADDING_MODES else "zeros",
                    transposed=transposed,
                    output_padding=_tuple(module.output_padding, n) if transposed else ())  # type: ignore[arg-type]


_BLUR_MODES = {"constant": "zeros", "zeros": "zeros", "reflect": "reflect", "replicate": "replicate",
               "circular": "circular"}


def blur_spec(blur: nn.Module) -> ConvSpec:
    """timm ``BlurPool2d``: ``F.pad(x, padding, pad_mode)`` then a depthwise conv with the ``filt`` buffer."""
    c = int(blur.channels) if blur.channels is not None else int(blur.filt.shape[0])  # type: ignore[arg-type]
    k = int(blur.filt_size)  # type: ignore[arg-type]
    s = _tuple(blur.stride, 2)  # type: ignore[arg-type]
    left, right, top, bottom = (int(v) for v in blur.padding)  # type: ignore[union-attr]
    mode = _BLUR_MODES.get(str(blur.pad_mode), "zeros")
    return ConvSpec(c, c, (k, k), s, ((top, bottom), (left, right)), (1, 1), groups=c, bias=False,
                    padding_mode=mode)


def _blur_objection(blur: nn.Module) -> str | None:
    if blur.channels is None:
        return ("it has channels=None (its filter is expanded to the input's channel count at run time); build it "
                "with channels=C, as timm's create_aa does")
    if str(blur.pad_mode) not in _BLUR_MODES:
        return f"its pad_mode {blur.pad_mode!r} is not one pixelfold pads with ({', '.join(_BLUR_MODES)})"
    if tuple(blur.filt.shape) != (blur.channels, 1, blur.filt_size, blur.filt_size):
        return f"its filter has shape {tuple(blur.filt.shape)}, not (channels, 1, filt_size, filt_size)"
    if blur_spec(blur).symmetric_padding is None:
        return f"its padding {list(blur.padding)} is asymmetric (timm pads every side alike)"
    return None


# ---------------------------------------------------------------------------- the exact modules
def tf_same_padding(spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                    dilation: Sequence[int]) -> list[tuple[int, int]]:
    """timm's ``pad_same``: per dim ``max((ceil(L/s) - 1)·s + d·(k-1) + 1 - L, 0)``, the smaller half first.

    >>> tf_same_padding((9, 10), (3, 3), (2, 2), (1, 1))
    [(1, 1), (0, 1)]
    """
    out = []
    for L, k, s, d in zip(spatial, kernel, stride, dilation):
        total = max(((L + s - 1) // s - 1) * s + (k - 1) * d + 1 - L, 0)  # ceil on non-negatives only
        out.append((total // 2, total - total // 2))
    return out


def _plain_twin(conv: nn.Module, padding: int | None = None) -> nn.Module:
    """A meta-device ``nn.ConvNd`` with ``conv``'s attributes holding ``conv``'s own weight/bias Parameters."""
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(conv.kernel_size)]
    plain = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                conv.padding if padding is None else padding, conv.dilation, conv.groups,
                bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta")
    plain.weight = conv.weight
    plain.bias = conv.bias
    return plain


class StdPhaseConv(PhaseConv):
    """timm's ``StdConv2d``/``ScaledStdConv2d`` (and ``...Same``) as a :class:`~pixelfold.PhaseConv`, exactly.

    ``forward`` standardises the original ``weight`` as timm does
    (``F.batch_norm`` over each output channel, ``eps``; times
    ``gain · scale`` for the scaled variant), then gathers it into the folded
    weight; the ``...Same`` variants with dynamic padding are padded TF-"same"
    per input first. ``weight``, ``bias`` and ``gain`` are the original
    Parameters, so outputs, gradients and ``state_dict`` keys are the original's.
    """

    def __init__(self, conv: nn.Module, in_block: Sequence[int], out_block: Sequence[int], order: str = "crd") -> None:
        same = bool(getattr(conv, "same_pad", False))
        super().__init__(_plain_twin(conv, 0 if same else None), in_block, out_block, order)
        self.eps = float(conv.eps)  # type: ignore[arg-type]
        gain = getattr(conv, "gain", None)
        self.gain = gain if isinstance(gain, nn.Parameter) else None
        self.scale = float(conv.scale) if self.gain is not None else 1.0  # type: ignore[arg-type]
        self.same_geometry = ((tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation))  # type: ignore
                              if same else None)

    def standardised_weight(self) -> torch.Tensor:
        """The weight the original conv uses in ``forward`` (computed the same way, so gradients flow the same)."""
        w = self.weight
        gain = None if self.gain is None else (self.gain * self.scale).view(-1)
        return F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, weight=gain, training=True, momentum=0.0,
                            eps=self.eps).reshape_as(w)

    def _gather_weight(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        return super()._gather_weight(self.standardised_weight() if weight is None else weight)

    def _versions(self) -> tuple[int, ...]:  # a frozen form re-bakes after an optimizer step on gain too
        return super()._versions() + (() if self.gain is None else (self.gain._version,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_geometry is not None:
            pads = tf_same_padding(x.shape[2:], *self.same_geometry)
            if any(lo or hi for lo, hi in pads):
                x = F.pad(x, [v for lo, hi in reversed(pads) for v in (lo, hi)])
        return super().forward(x)

    def extra_repr(self) -> str:
        kind = "scaled standardised" if self.gain is not None else "standardised"
        same = ", pad same per input" if self.same_geometry is not None else ""
        return f"{kind} weight (eps={self.eps:g}){same}\n  {super().extra_repr()}"


class BlurPhaseConv(PhaseConv):
    """timm's ``BlurPool2d`` (pad with ``pad_mode``, fixed strided depthwise filter) as a :class:`~pixelfold.PhaseConv`.

    The filter stays a non-persistent buffer, ``filt``, the same tensor as the
    original's (``weight`` reads it), so ``state_dict`` is unchanged (empty) and
    the blur is not trained, as in timm.
    """

    def __init__(self, blur: nn.Module, in_block: Sequence[int], out_block: Sequence[int], order: str = "crd") -> None:
        spec = blur_spec(blur)
        if spec.symmetric_padding is None:
            raise FoldError(f"BlurPool2d padding {list(blur.padding)} is asymmetric; pixelfold folds symmetric ones")
        plain = nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel, spec.stride, spec.symmetric_padding,
                          groups=spec.groups, bias=False, padding_mode=spec.padding_mode, device="meta")
        plain.weight = nn.Parameter(blur.filt, requires_grad=False)  # type: ignore[arg-type]
        super().__init__(plain, in_block, out_block, order)
        self._parameters.pop("weight", None)
        self.register_buffer("filt", blur.filt, persistent=False)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The fixed blur filter (``filt``): what the inherited gather reads, so nothing else is overridden."""
        param = self._parameters.get("weight")
        if param is not None:  # while PhaseConv.__init__ runs
            return param
        filt = self._buffers.get("filt")
        if filt is None:
            raise AttributeError("weight")
        return filt

    def extra_repr(self) -> str:
        return f"fixed blur filter (buffer filt)\n  {super().extra_repr()}"


def _std_build(conv: nn.Module, in_block: tuple[int, ...], out_block: tuple[int, ...], order: str) -> PhaseConv:
    return StdPhaseConv(conv, in_block, out_block, order)


def _blur_build(blur: nn.Module, in_block: tuple[int, ...], out_block: tuple[int, ...], order: str) -> PhaseConv:
    return BlurPhaseConv(blur, in_block, out_block, order)


# ---------------------------------------------------------------------------- the registry
def _never(module: nn.Module) -> bool:
    return False


def _no_objection(module: nn.Module) -> str | None:
    return None


def _same_pad(module: nn.Module) -> bool:
    return bool(getattr(module, "same_pad", False))


_SAME_PAD_TIP = "add 'same_pad' to the profile (e.g. 'no_stride+same_pad') to fold it with per-input padding"


@dataclass(frozen=True)
class Hidden:
    """What one class hides in ``forward``, and what pixelfold can do about it exactly."""

    qualname: str  #: ``module.ClassName`` as Python reports it
    shown: str  #: the name used in messages (the public import path)
    does: str  #: what its forward does that its attributes do not say
    does_same: str = ""  #: the same when it pads TF-"same" per input (``dynamic_same``)
    spec_fn: Callable[[nn.Module], ConvSpec] = attribute_spec
    build: Builder | None = None  #: its exact fold/polyphase form: (module, in_block, out_block, order)
    dynamic_same: Callable[[nn.Module], bool] = _never  #: pads per input: rewrite needs the 'same_pad' add-on
    objection: Callable[[nn.Module], str | None] = _no_objection  #: why this instance cannot be built
    way_out: str = ""  #: what to do instead, when there is no form
    api_way_out: str = ""  #: the same for the layer API (pixelfold.fold & co.), if it differs
    prefix: str = ""  #: the same class name under this module prefix matches too (other package versions)

    def describe(self, module: nn.Module) -> str:
        return self.does_same if self.does_same and self.dynamic_same(module) else self.does

    def spec(self, module: nn.Module) -> ConvSpec | None:
        """(a) The conv ``module`` computes (padding from its attributes for the dynamic-"same" ones)."""
        try:
            return self.spec_fn(module)
        except Exception:
            return None

    def reason(self, module: nn.Module, transform: str, same_pad: bool = False) -> str | None:
        """(c) Why ``transform`` cannot rewrite ``module`` exactly; ``None`` when :meth:`form` can."""
        head = f"{self.shown} {self.describe(module)}"
        if self.build is None:
            return f"{head}: not rewritten from attributes; {self.way_out}"
        objection = self.objection(module)
        if objection:
            return f"{head}: not rewritten, {objection}"
        if transform not in FORMS:
            if transform == "merge":
                return f"{head}: {self.merge_way_out()}"
            return (f"{head}: {transform!r} has no exact form for it; 'fold' and 'polyphase' do (they compute it "
                    "in forward from the original parameters)")
        if self.dynamic_same(module) and not same_pad:
            return f"{head}: not rewritten from attributes; {_SAME_PAD_TIP}"
        return None

    def merge_way_out(self) -> str:
        if self.build is None:
            return self.way_out
        return ("a plain conv cannot compute that in forward, so merge does not apply; keep the pair as it is "
                "(pixelfold.hidden.fold folds the layer alone)")

    def form(self, module: nn.Module, transform: str, block: int | Sequence[int] | None = None,
             order: str = "crd") -> PhaseConv:
        """(b) The exact ``fold`` (block dividing the stride; default the stride) or ``polyphase`` form."""
        if self.build is None:
            raise FoldError(f"{self.shown} {self.describe(module)}: pixelfold has no exact form for it; "
                            f"{self.api_way_out or self.way_out}")
        reason = self.reason(module, transform, same_pad=True)
        if reason:
            raise FoldError(reason)
        spec = self.spec_fn(module)
        n = spec.dims
        if transform == "fold":
            b = check_block(spec.stride if block is None else block, n)
            check_stride_divisible(spec.stride, b)
            return self.build(module, b, (1,) * n, order)
        b = check_block(1 if block is None else block, n)
        return self.build(module, tuple(s * bi for s, bi in zip(spec.stride, b)), b, order)


def _entries() -> list[Hidden]:
    std, scaled = "standardises its weight in forward", "standardises and scales its weight in forward"
    same = " and pads TF-'same' in forward"
    quant = "pixelfold rewrites float convs: rewrite the float model first, then quantize it"
    qat = "rewrite the float model first, then prepare it for quantization-aware training"
    lazy = "is not materialised yet (its weight is an UninitializedParameter)"
    out = [
        Hidden("timm.layers.conv2d_same.Conv2dSame", "timm.layers.Conv2dSame",
               "pads TF-'same' in forward (dynamic, asymmetric)", way_out=_SAME_PAD_TIP,
               api_way_out="pixelfold.SamePadPhaseConv(layer, block) folds it exactly with per-input padding "
                           "(and rewrite's 'same_pad' add-on uses it)", prefix="timm."),
        Hidden("timm.layers.conv2d_same.Conv2dSameExport", "timm.layers.Conv2dSameExport",
               "pads in forward with the TF-'same' padding of the first input size it saw (cached)",
               way_out="use timm's Conv2dSame (padding computed per input), which the 'same_pad' add-on folds",
               prefix="timm."),
        Hidden("timm.layers.std_conv.StdConv2d", "timm.layers.StdConv2d", std, build=_std_build, prefix="timm."),
        Hidden("timm.layers.std_conv.StdConv2dSame", "timm.layers.StdConv2dSame", std,
               "standardises its weight" + same, build=_std_build, dynamic_same=_same_pad, prefix="timm."),
        Hidden("timm.layers.std_conv.ScaledStdConv2d", "timm.layers.ScaledStdConv2d", scaled, build=_std_build,
               prefix="timm."),
        Hidden("timm.layers.std_conv.ScaledStdConv2dSame", "timm.layers.ScaledStdConv2dSame", scaled,
               "standardises and scales its weight" + same, build=_std_build, dynamic_same=_same_pad,
               prefix="timm."),
        Hidden("timm.layers.blur_pool.BlurPool2d", "timm.layers.BlurPool2d",
               "is a fixed strided depthwise blur computed in forward (reflect padding), not an nn.ConvNd",
               spec_fn=blur_spec, build=_blur_build, objection=_blur_objection, prefix="timm."),
        Hidden("timm.layers.cond_conv2d.CondConv2d", "timm.layers.CondConv2d",
               "mixes expert kernels per sample in forward, not an nn.ConvNd",
               way_out="its kernel depends on the input, so no fixed conv equals it", prefix="timm."),
    ]
    for n in (1, 2, 3):
        out += [
            Hidden(f"torch.nn.modules.conv.LazyConv{n}d", f"nn.LazyConv{n}d", lazy,
                   way_out=f"run one forward pass first (it then becomes a plain nn.Conv{n}d)"),
            Hidden(f"torch.nn.modules.conv.LazyConvTranspose{n}d", f"nn.LazyConvTranspose{n}d", lazy,
                   way_out=f"run one forward pass first (it then becomes a plain nn.ConvTranspose{n}d)"),
            Hidden(f"torch.ao.nn.quantized.modules.conv.Conv{n}d", f"torch.ao.nn.quantized.Conv{n}d",
                   "is a quantized conv (packed int8 weight, quantized input and output)", way_out=quant),
            Hidden(f"torch.ao.nn.quantized.modules.conv.ConvTranspose{n}d", f"torch.ao.nn.quantized.ConvTranspose{n}d",
                   "is a quantized transposed conv (packed int8 weight, quantized input and output)", way_out=quant),
            Hidden(f"torch.ao.nn.intrinsic.quantized.modules.conv_relu.ConvReLU{n}d",
                   f"torch.ao.nn.intrinsic.quantized.ConvReLU{n}d",
                   "is a quantized conv + ReLU (packed int8 weight, quantized input and output)", way_out=quant),
            Hidden(f"torch.ao.nn.qat.modules.conv.Conv{n}d", f"torch.ao.nn.qat.Conv{n}d",
                   "fake-quantizes its weight in forward (quantization-aware training)", way_out=qat),
        ]
        for fused in (f"ConvBn{n}d", f"ConvBnReLU{n}d", f"ConvReLU{n}d"):
            out.append(Hidden(f"torch.ao.nn.intrinsic.qat.modules.conv_fused.{fused}",
                              f"torch.ao.nn.intrinsic.qat.{fused}",
                              "fuses its BatchNorm/ReLU and fake-quantizes its weight in forward "
                              "(quantization-aware training)", way_out=qat))
    return out


#: qualified class name → :class:`Hidden`
REGISTRY: dict[str, Hidden] = {h.qualname: h for h in _entries()}
_BY_NAME: dict[str, list[Hidden]] = {}
for _h in REGISTRY.values():
    _BY_NAME.setdefault(_h.qualname.rpartition(".")[2], []).append(_h)


def lookup(module: nn.Module | type) -> Hidden | None:
    """The registry entry for ``module``'s exact class (not subclasses: they may change ``forward`` again).

    >>> lookup(torch.nn.LazyConv2d(8, 3)).shown
    'nn.LazyConv2d'
    >>> lookup(torch.nn.Conv2d(3, 8, 3)) is None
    True
    """
    cls = module if isinstance(module, type) else type(module)
    found = REGISTRY.get(_qualname(cls))
    if found is not None:
        return found
    for h in _BY_NAME.get(cls.__qualname__, ()):
        if h.prefix and (cls.__module__ or "").startswith(h.prefix):
            return h
    return None


def spec_of(module: nn.Module) -> ConvSpec | None:
    """The conv a registered layer computes, or ``None`` for other modules.

    >>> str(spec_of(torch.nn.LazyConv2d(8, 3, stride=2)))
    'Conv2d 0→8 k3×3 s2×2 p0×0'
    """
    h = lookup(module)
    return None if h is None else h.spec(module)


def _require(module: nn.Module, what: str) -> Hidden:
    h = lookup(module)
    if h is None:
        raise FoldError(f"pixelfold.hidden.{what} takes a layer that hides its function in forward (timm "
                        f"StdConv2d, ScaledStdConv2d, BlurPool2d, ...), got {type(module).__name__}; "
                        f"for a plain conv use pixelfold.{what}")
    return h


def fold(module: nn.Module, block: int | Sequence[int] | None = None, order: str = "crd") -> PhaseConv:
    """The exact :func:`pixelfold.fold` of a registered layer (block default: its stride).

    >>> from timm.layers import BlurPool2d
    >>> blur = BlurPool2d(4, stride=2)
    >>> m = fold(blur)
    >>> str(m.inner)
    'Conv2d 16→4 k2×2 s1×1 p0×0 g4'
    >>> x = torch.randn(2, 4, 9, 8)
    >>> torch.allclose(m(x), blur(x), atol=1e-6), list(m.state_dict())
    (True, [])
    """
    return _require(module, "fold").form(module, "fold", block, order)


def polyphase(module: nn.Module, block: int | Sequence[int] = 1, order: str = "crd") -> PhaseConv:
    """The exact :func:`pixelfold.polyphase` of a registered layer."""
    return _require(module, "polyphase").form(module, "polyphase", block, order)


def layer_refusal(module: nn.Module, what: str) -> str | None:
    """The message for a pixelfold constructor (``what``) handed a registered layer; ``None`` if unregistered.

    >>> import torch.ao.nn.quantized as nnq
    >>> print(layer_refusal(nnq.Conv2d(3, 8, 3, stride=2), "fold"))
    fold takes a float nn.Conv1d/2d/3d; torch.ao.nn.quantized.Conv2d is a quantized conv (packed int8 weight, quantized input and output): pixelfold rewrites float convs: rewrite the float model first, then quantize it
    """
    h = lookup(module)
    if h is None:
        return None
    head = f"{what} takes a float nn.Conv1d/2d/3d; {h.shown} {h.describe(module)}"
    if h.build is None:
        return f"{head}: {h.api_way_out or h.way_out}"
    objection = h.objection(module)
    if objection:
        return f"{head}: pixelfold cannot rewrite it, {objection}"
    form = "polyphase" if what == "polyphase" else "fold"
    return (f"{head}, so its attributes do not describe it: pixelfold.hidden.{form}(layer, block) builds its exact "
            f"form (computed in forward from the layer's own parameters), and pixelfold.rewrite uses it")
