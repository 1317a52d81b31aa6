"""Small helpers over nested inputs and outputs (tuples, lists, dicts of tensors): what an example means, whether it is informative, random look-alikes, errors between outputs."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
from torch import nn


# ---------------------------------------------------------------------------- small tree helpers
def as_args(example_inputs: Any) -> tuple[Any, ...]:
    """What ``example_inputs`` means, everywhere in pixelfold: a tuple is the positional arguments, anything
    else (a tensor, a list, a dict) is the one argument.

    That is PyTorch's own convention (``torch.export.export(model, args)``, ``torch.onnx.export``,
    ``torch.jit.trace``): ``(x, mask)`` calls ``model(x, mask)``, ``[x, y]`` calls ``model([x, y])``.

    >>> len(as_args(torch.zeros(1))), len(as_args((torch.zeros(1), torch.zeros(2)))), len(as_args([1, 2]))
    (1, 2, 1)
    """
    if isinstance(example_inputs, tuple) and not hasattr(example_inputs, "_fields"):
        return example_inputs
    return (example_inputs,)


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    return []


def informative(obj: Any) -> bool:
    """Could a comparison on these inputs tell two different functions apart?

    No when every tensor is empty, constant (all zeros included) or absent: a wrong layer with the
    right bias, a dropped branch or a swapped channel order all pass on them.

    >>> informative(torch.zeros(2, 3)), informative(torch.zeros(0, 3)), informative((torch.ones(3), torch.randn(3)))
    (False, False, True)
    """
    for t in _tensors(obj):
        if t.numel() == 0 or t.dtype == torch.bool:
            continue
        flat = t.detach().reshape(-1)
        if flat.numel() == 1 and bool(flat[0] != 0):
            return True
        if bool((flat != flat[0]).any()):
            return True
    return False


def randomized(obj: Any, generator: torch.Generator, spatial_extra: int = 0) -> Any:
    """``obj`` with every floating tensor replaced by standard-normal data of the same shape, dtype and layout.

    An empty batch becomes a batch of 2. With ``spatial_extra``, tensors of rank ≥ 3 (``N, C, *spatial``) grow
    by that much in every spatial dim (to check a form at a size it was not built on). Integer and bool
    tensors (ids, masks) are kept.

    >>> g = torch.Generator().manual_seed(0)
    >>> tuple(randomized(torch.zeros(0, 3, 4, 4), g, spatial_extra=1).shape)
    (2, 3, 5, 5)
    """
    if isinstance(obj, torch.Tensor):
        if not obj.is_floating_point():
            return obj
        shape = list(obj.shape)
        if shape and shape[0] == 0:
            shape[0] = 2
        if spatial_extra and len(shape) >= 3:
            shape = shape[:2] + [v + spatial_extra for v in shape[2:]]
        t = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype=obj.dtype, device=obj.device)
        if obj.dim() in (4, 5) and not obj.is_contiguous() and obj.is_contiguous(
                memory_format=torch.channels_last if obj.dim() == 4 else torch.channels_last_3d):
            t = t.contiguous(memory_format=torch.channels_last if obj.dim() == 4 else torch.channels_last_3d)
        return t
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(randomized(v, generator, spatial_extra) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(randomized(v, generator, spatial_extra) for v in obj)
    if isinstance(obj, dict):
        return {k: randomized(v, generator, spatial_extra) for k, v in obj.items()}
    return obj


def _shape_text(obj: Any) -> str:
    shapes = ["×".join(str(v) for v in t.shape) for t in _tensors(obj)]
    return ", ".join(shapes) or "no tensors"


def cast_floats(obj: Any, dtype: torch.dtype | None = None, clone: bool = False) -> Any:
    """Map every floating-point tensor in a nested tuple/list/dict to ``dtype`` (and/or clone it).

    Integer and bool tensors (token ids, masks) are kept as they are.

    >>> out = cast_floats((torch.zeros(2), torch.zeros(2, dtype=torch.long)), torch.float64)
    >>> [t.dtype for t in out]
    [torch.float64, torch.int64]
    """
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.clone() if clone and t is obj.detach() else t
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(cast_floats(v, dtype, clone) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(cast_floats(v, dtype, clone) for v in obj)
    if isinstance(obj, dict):
        return {k: cast_floats(v, dtype, clone) for k, v in obj.items()}
    return obj


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """All tensors in a (nested) model output, in a fixed order.

    Handles tensors, tuples, lists, namedtuples, dicts (torchvision's
    segmentation models return ``OrderedDict``) and objects with ``to_tuple()``.

    >>> [t.shape for t in flatten_outputs({"out": torch.zeros(2), "aux": (torch.zeros(3),)})]
    [torch.Size([2]), torch.Size([3])]
    """
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in flatten_outputs(v)]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if hasattr(out, "to_tuple"):
        return flatten_outputs(out.to_tuple())
    return []


def output_error(reference: Any, candidate: Any) -> tuple[float, float]:
    """``(max |candidate - reference|, max |reference|)`` over all output tensors.

    The error is ``inf`` when the outputs differ in structure, shape, or hold
    NaN where the reference does not (a mismatch never passes a check).

    >>> a = torch.tensor([1.0, -3.0])
    >>> output_error(a, a + 0.5)
    (0.5, 3.0)
    >>> output_error(a, torch.zeros(3))[0]
    inf
    """
    ref, cand = flatten_outputs(reference), flatten_outputs(candidate)
    if len(ref) != len(cand):
        return math.inf, math.nan
    err, scale = 0.0, 0.0
    for r, c in zip(ref, cand):
        if r.shape != c.shape:
            return math.inf, math.nan
        if r.numel() == 0:
            continue
        if not r.is_floating_point():
            if not torch.equal(r, c.to(r.dtype)):
                return math.inf, math.nan
            continue
        r64, c64 = r.detach().double(), c.detach().double()
        if bool(torch.isnan(c64).ne(torch.isnan(r64)).any()):
            return math.inf, math.nan
        finite = torch.isfinite(r64)
        if bool((~finite).any()):
            if not torch.equal(r64[~finite].nan_to_num(), c64[~finite].nan_to_num()):
                return math.inf, math.nan
            r64, c64 = r64[finite], c64[finite]
            if r64.numel() == 0:
                continue
        err = max(err, float((c64 - r64).abs().max()))
        scale = max(scale, float(r64.abs().max()))
    return err, scale


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` (and every submodule) in eval mode; restore each one's flag on exit.

    >>> m = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.BatchNorm1d(2))
    >>> m[0].train(False) and None
    >>> with eval_mode(m):
    ...     m.training, m[1].training
    (False, False)
    >>> m.training, m[0].training, m[1].training
    (True, False, True)
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag
