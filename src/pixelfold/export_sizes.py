"""Which input sizes an ONNX export with dynamic shapes is checked at (used by :func:`pixelfold.export.to_onnx`).

A graph exported with dynamic dims can be right at the example size and wrong at others (size arithmetic
lowered differently, Python branches baked in), so :func:`to_onnx` checks it at the example and at
:func:`variants` of it: every dynamic dim moved together by a few multiples of its step (2 for ``2*h``),
within the declared ``min``/``max``.

>>> h = torch.export.Dim("h", min=2, max=64)
>>> [tuple(t.shape) for t, in variants((torch.zeros(1, 3, 8, 8),), {"dynamic_shapes": ({2: 2 * h, 3: h},)})]
[(1, 3, 10, 9), (1, 3, 14, 11), (1, 3, 6, 7)]
>>> variants((torch.zeros(1, 3, 8, 8),), {})
[]
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["dynamic_dims", "variants"]

#: multiples of each dynamic dim's step the check moves it by
STEPS = (1, 3, -1)


def _dim_rule(spec: Any) -> tuple[int, int, int]:
    """(step, min, max) of a size a dynamic dim may take."""
    step, lo, hi = 1, 1, 2**31
    fn = getattr(spec, "fn", None)
    root = getattr(spec, "root", None)
    if fn is not None and root is not None:
        try:
            step = max(1, int(fn(1) - fn(0)))
            lo = int(fn(getattr(root, "min", 1) or 1))
            hi = int(fn(min(getattr(root, "max", 2**31) or 2**31, 2**31)))
        except Exception:  # an unusual derivation: keep the defaults
            pass
    else:
        lo = int(getattr(spec, "min", 1) or 1)
        hi = int(min(getattr(spec, "max", 2**31) or 2**31, 2**31))
    return step, max(lo, 1), hi


def dynamic_dims(n_inputs: int, export_kwargs: dict[str, Any],
                 input_names: Sequence[str] | None = None) -> list[dict[int, tuple[int, int, int]]]:
    """Per tensor input, ``{dim: (step, min, max)}`` for the dims the export kwargs make dynamic."""
    out: list[dict[int, tuple[int, int, int]]] = [{} for _ in range(n_inputs)]
    shapes = export_kwargs.get("dynamic_shapes")
    if shapes is not None:
        entries = list(shapes.values()) if isinstance(shapes, dict) else list(shapes)
        for i, entry in enumerate(entries[:n_inputs]):
            if isinstance(entry, dict):
                out[i] = {int(d): _dim_rule(s) for d, s in entry.items() if s is not None}
            elif isinstance(entry, (list, tuple)):
                out[i] = {d: _dim_rule(s) for d, s in enumerate(entry) if s is not None}
    axes = export_kwargs.get("dynamic_axes")
    if axes:
        names = list(input_names or export_kwargs.get("input_names") or [])
        for i, name in enumerate(names[:n_inputs]):
            entry = axes.get(name)
            if entry is not None:
                dims = entry.keys() if isinstance(entry, dict) else entry
                out[i].update({int(d): (1, 1, 2**31) for d in dims})
    return out


def variants(args: tuple[Any, ...], export_kwargs: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Copies of ``args`` (random tensors) with every dynamic dim moved by :data:`STEPS` of its step."""
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    rules = dynamic_dims(len(tensors), export_kwargs)
    if not any(rules):
        return []
    out = []
    gen = torch.Generator().manual_seed(0)
    for k in STEPS:
        new = list(args)
        ok = True
        for slot, i in enumerate(tensors):
            t = args[i]
            shape = list(t.shape)
            for d, (step, lo, hi) in rules[slot].items():
                if d >= len(shape):
                    continue
                shape[d] += k * step
                ok = ok and lo <= shape[d] <= hi
            if t.is_floating_point():
                new[i] = torch.randn(shape, generator=gen, dtype=t.dtype).to(t.device)
            else:
                new[i] = torch.zeros(shape, dtype=t.dtype, device=t.device)
        if ok:
            out.append(tuple(new))
    return out
