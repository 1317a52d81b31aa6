"""Drop-in modules for the exact forms, and the constructors that build them.

Constructors that return plain PyTorch layers (fresh parameters):

- :func:`to_space` / :func:`to_depth` — the seed equivalence, conv ↔ conv.
- :func:`merge` — a space-to-depth step + conv → one conv on the original input.
- :func:`transposed` — conv + depth-to-space → ``nn.ConvTransposeNd``.

Constructors that return pixelfold modules taking the *original* input and
returning the *original* output:

- :func:`fold` — pad → space_to_depth → conv with stride/block.
- :func:`polyphase` — any stride: phase-split input → stride-1 conv → depth_to_space.
- :func:`subpixel` — a transposed conv as conv(s) + depth_to_space.

The modules keep the original layer's ``weight``/``bias`` Parameters (the
same objects, so an optimizer that holds them keeps training them and
``state_dict`` keys match the original layer) and compute the transformed
weight in ``forward`` with one gather, so gradients are identical.
``freeze()`` bakes the transformed weight for inference.

Non-finite inputs
-----------------
The forms are exact for finite inputs. With ``inf``/``NaN`` in the input a form
can differ where its inner weight holds *structural zero taps* — entries no
original tap maps to — because ``0 · inf = NaN`` while the original never
multiplies that pixel at that position. That happens when the kernel span is not
a multiple of the block: ``fold`` of a 3×3/2 conv (inner 2×2 over 4 phases, 7 of
16 taps zero), ``polyphase`` with ``block > 1`` of a kernel not divisible by it,
and ``subpixel(form="shared")`` (one window shared by all phases). Forms with no
structural zero are exact for non-finite inputs too: ``fold`` when every span
``d·(k-1)+1`` rounds to whole blocks (4×4/2, 2×2/2), ``polyphase`` of a strided
conv with ``block=1`` and such spans, ``subpixel(form="phases")`` (each phase has
only its own taps) and :class:`PatchLinear`. ``structural_zero_taps`` on a module
counts them (``0``: exact for non-finite inputs). The plain convs that ``to_space``,
``to_depth``, ``merge`` and ``transposed`` return can hold structural zeros as well
(``to_space`` of a dilated conv writes the dilation out as zero taps, ``to_depth``
zero-pads the kernel to whole blocks, a grouped ``merge`` puts zeros between groups). Zero padding, zero extension and
crops never meet data, so they do not add cases. Within one conv this cannot be
avoided (a dense inner kernel must hold the zeros), so for non-finite data use a
form with ``structural_zero_taps == 0`` or the original layer.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from . import transforms as T
from .errors import FoldError
from .probe import merge as _merge_by_probe
from .probe import padded_conv
from .rearrange import check_block, phase_permutation
from .spec import ConvSpec, build_module

from .rearrange_modules import _module_block, _module_order, SpaceToDepth, DepthToSpace, FocusSlice, is_focus  # noqa: F401  (re-exported)
from .gathered import _SPACE_TO_DEPTH, _CONV_FN, _as_conv, _index_map, _apply_map, MAX_FORM_BYTES, _DERIVED_BUFFERS, _rebake_after_load, _traced, _like_conv_output, _batched, _finish, _check_form_size, _GatheredConv  # noqa: F401  (re-exported)
from .phaseconv import PhaseConv, fold, polyphase, PatchLinear  # noqa: F401  (re-exported)
from .subpixel_modules import SubpixelConvTranspose, subpixel, transposed  # noqa: F401  (re-exported)

__all__ = [
    "SpaceToDepth",
    "DepthToSpace",
    "FocusSlice",
    "PhaseConv",
    "PatchLinear",
    "SubpixelConvTranspose",
    "to_space",
    "to_depth",
    "fold",
    "polyphase",
    "subpixel",
    "transposed",
    "merge",
    "icnr_",
]

# ---------------------------------------------------------------------------- seed equivalence
def to_space(conv: nn.Module, block: int | Sequence[int], order: str = "crd") -> nn.Module:
    """The conv that acts on ``depth_to_space(x, block, order)`` and returns ``conv(x)``.

    Kernel ``rK``, stride ``rS``, padding ``rP`` (dilation written out), channels
    ``C/r²`` — the seed question, answered: a 3×3 conv on 256×H×W *is* a
    48×48 conv with stride 16 on 1×16H×16W.

    >>> conv = torch.nn.Conv2d(256, 1, 3, padding=1)
    >>> big = to_space(conv, 16)
    >>> big
    Conv2d(1, 1, kernel_size=(48, 48), stride=(16, 16), padding=(16, 16))
    >>> x = torch.randn(1, 256, 8, 8)
    >>> import pixelfold
    >>> torch.allclose(big(pixelfold.depth_to_space(x, 16)), conv(x), atol=1e-4)
    True
    """
    conv = _as_conv(conv, "to_space")
    spec = ConvSpec.from_module(conv)
    w, new = T.to_space_weight(conv.weight.detach(), spec, block, order)
    # asymmetric padding (padding='same' with an even kernel) comes back as nn.Sequential(ZeroPadNd, conv)
    return padded_conv(new, w, None if conv.bias is None else conv.bias.detach(), like=conv)


def to_depth(conv: nn.Module, block: int | Sequence[int], order: str = "crd") -> nn.Module:
    """The conv that acts on ``space_to_depth(x, block, order)`` and returns ``conv(x)``.

    Needs stride and padding divisible by the block (use :func:`fold`
    otherwise); the kernel is zero-padded up to a multiple of the block.

    >>> conv = torch.nn.Conv2d(1, 1, 48, stride=16, padding=16)
    >>> to_depth(conv, 16)
    Conv2d(256, 1, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    """
    conv = _as_conv(conv, "to_depth")
    spec = ConvSpec.from_module(conv)
    w, new = T.to_depth_weight(conv.weight.detach(), spec, block, order)
    return build_module(new, w, None if conv.bias is None else conv.bias.detach(), like=conv)


def merge(module: nn.Module, conv: nn.Module | None = None) -> nn.Module:
    """One conv on the original input, from a space-to-depth step followed by a conv.

    ``module`` is ``nn.Sequential(step, conv)``, a Focus-style module (its
    ``forward`` is ``self.conv(space_to_depth(x))``: YOLOv5's ``Focus``, YOLOX's,
    SPD-Conv's), or the step itself with ``conv`` given separately. The step is
    recognised by what it does, not by its class: :mod:`pixelfold.probe` runs a
    deep copy on index-valued inputs and derives the block and the channel
    order it applies (pixelfold's :class:`SpaceToDepth` in any order,
    :class:`FocusSlice`, ``nn.PixelUnshuffle``, timm's ``SpaceToDepth`` as in
    TResNet, any slice order), or refuses with the reason. A grouped conv
    merges too: the result has as many groups as its channel order allows
    (``groups=1`` when the order mixes the groups, with zeros between them).
    A conv wrapper after the step (YOLOv5's ``Conv``, timm's ``ConvNormAct``:
    conv → norm → act, reached only through the conv) comes back as that
    wrapper with its conv merged. Asymmetric padding (``padding='same'`` with
    an even kernel) comes back as ``nn.Sequential(ZeroPadNd, conv)``.

    >>> focus = torch.nn.Sequential(FocusSlice(), torch.nn.Conv2d(12, 32, 3, padding=1))
    >>> merge(focus)                         # what YOLOv5 replaced Focus with
    Conv2d(3, 32, kernel_size=(6, 6), stride=(2, 2), padding=(2, 2))
    >>> merge(nn.PixelUnshuffle(2), nn.Conv2d(12, 6, 3, groups=3))      # the groups survive in crd order
    Conv2d(3, 6, kernel_size=(6, 6), stride=(2, 2), groups=3)
    """
    return _merge_by_probe(module, conv)


# ---------------------------------------------------------------------------- init
@torch.no_grad()
def icnr_(
    weight: torch.Tensor,
    block: int | Sequence[int],
    order: str = "crd",
    init: Callable[[torch.Tensor], torch.Tensor] = nn.init.kaiming_normal_,
) -> torch.Tensor:
    """ICNR init (Aitken et al. 2017) of a conv weight that feeds ``depth_to_space(block, order)``.

    Each output channel's ``prod(block)`` sub-kernels start identical, so the
    sub-pixel conv starts as nearest-neighbour upsampling of a conv: no
    checkerboard. The grouping follows ``order`` (``repeat_interleave`` for
    ``crd``, which ``nn.PixelShuffle`` uses; ``repeat`` for ``dcr``).

    >>> conv = torch.nn.Conv2d(8, 3 * 4, 3, padding=1)
    >>> _ = icnr_(conv.weight, 2)
    >>> torch.equal(conv.weight[0], conv.weight[3]), torch.equal(conv.weight[0], conv.weight[4])
    (True, False)
    """
    n = weight.dim() - 2
    b = check_block(block, n)
    R = math.prod(b)
    if weight.shape[0] % R:
        raise FoldError(f"weight has {weight.shape[0]} output channels, not divisible by prod(block) = {R}; "
                        "pass the block of the depth_to_space that follows the conv")
    sub = torch.empty(weight.shape[0] // R, *weight.shape[1:], dtype=weight.dtype, device=weight.device)
    init(sub)
    full = sub.repeat_interleave(R, 0)  # crd grouping
    if order != "crd":
        full = full.index_select(0, phase_permutation(weight.shape[0] // R, b, order).to(full.device))
    weight.copy_(full)
    return weight
