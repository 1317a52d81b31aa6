"""What must stop pixelfold from building a form from a module's attributes.

A pixelfold form is built from what a conv *says* it computes: its class, its
attributes and its ``weight``/``bias``. That is only the function it computes
when nothing else runs in its ``forward``. These checks name every way we know
that something else does, with the way out. The layer constructors
(:func:`pixelfold.fold`, ...) raise :class:`~pixelfold.FoldError` with the
text; :func:`pixelfold.rewrite` reports it as the reason a layer was skipped.

>>> import torch
>>> conv = torch.nn.Conv2d(3, 4, 3)
>>> hook_problem(conv) is None
True
>>> _ = conv.register_forward_hook(lambda m, i, o: o * 2)
>>> print(hook_problem(conv))
Conv2d has forward hooks that a replacement would not run; remove them (handle.remove()) and register them on the result instead
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["type_name", "hook_problem", "conv_problem", "readable_problem"]


def type_name(cls: type) -> str:
    """``Conv2d`` for torch.nn classes, ``pixelfold.PhaseConv``, ``timm.layers.Conv2dSame`` for others.

    >>> type_name(nn.Conv2d), type_name(dict)
    ('Conv2d', 'dict')
    """
    mod = cls.__module__ or ""
    if mod.startswith("torch.nn"):
        return cls.__qualname__
    if mod.startswith("pixelfold"):
        return f"pixelfold.{cls.__qualname__}"
    parts = mod.split(".")
    return ".".join(parts[:2] + [cls.__qualname__]) if mod and mod != "builtins" else cls.__qualname__


def _hook_kinds(module: nn.Module) -> dict[str, list[Any]]:
    return {
        "forward pre-hooks": [*module._forward_pre_hooks.values()],
        "forward hooks": [*module._forward_hooks.values()],
        "backward hooks": [*module._backward_hooks.values(), *getattr(module, "_backward_pre_hooks", {}).values()],
    }


def hook_problem(module: nn.Module) -> str | None:
    """Why hooks on ``module`` forbid a rewrite from its attributes (``None`` if it has none).

    Old-style ``torch.nn.utils.weight_norm`` / ``spectral_norm`` are hooks that recompute the weight
    in forward (its ``.weight`` is stale until then); other forward and full backward hooks would not
    run on a replacement.
    """
    name = type_name(type(module))
    kinds = _hook_kinds(module)
    for hook in kinds["forward pre-hooks"]:
        cls = type(hook).__name__
        if cls == "WeightNorm":
            return (f"{name} has torch.nn.utils.weight_norm (a hook that recomputes weight from weight_g and "
                    "weight_v in forward, so .weight is stale): pixelfold would build from a stale weight and "
                    "drop weight_g/weight_v; call torch.nn.utils.remove_weight_norm(module) first (it bakes the "
                    "weight), and re-apply weight_norm to the result's weight if you still train with it")
        if cls == "SpectralNorm":
            return (f"{name} has torch.nn.utils.spectral_norm (a hook that divides weight by its largest singular "
                    "value in forward, so .weight is stale before that): pixelfold would build from a stale weight; "
                    "call torch.nn.utils.remove_spectral_norm(module) first (it bakes the normalised weight)")
    present = [k for k, v in kinds.items() if v]
    if getattr(module, "_forward_hooks_with_kwargs", None) or getattr(module, "_forward_pre_hooks_with_kwargs", None):
        present = present or ["forward hooks"]
    if present:
        return (f"{name} has {' and '.join(present)} that a replacement would not run; remove them "
                "(handle.remove()) and register them on the result instead")
    return None


def conv_problem(module: nn.Module, what: str, transposed: bool = False) -> str | None:
    """Why ``module`` is not a plain ``nn.ConvNd`` (``nn.ConvTransposeNd`` with ``transposed``) whose attributes say
    what it computes (``None`` if it is)."""
    name = type_name(type(module))
    cls = type(module)
    plain: tuple[type, ...] = ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d) if transposed
                               else (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    kind = "nn.ConvTranspose1d/2d/3d" if transposed else "nn.Conv1d/2d/3d"
    if not isinstance(module, plain):
        return f"{what} takes an {kind}, got {name}"
    if cls.__name__.startswith("Parametrized"):
        return (f"{what}: {name} computes its weight with a parametrization (torch.nn.utils.parametrize) in "
                "forward: pixelfold would build from one evaluation of it and drop the parametrization; remove it "
                "first (torch.nn.utils.parametrize.remove_parametrizations(module, 'weight'))")
    if cls not in plain:
        return (f"{what}: {name} subclasses {kind.split('/')[0][:-2]} and may change its forward (e.g. timm's Conv2dSame pads in "
                "forward, StdConv2d standardises its weight); pixelfold does not rewrite it from its attributes. "
                "Convert it to a plain conv first if its forward is the standard one")
    return None


def readable_problem(module: nn.Module, what: str, transposed: bool = False) -> str | None:
    """:func:`conv_problem`, then :func:`hook_problem`, prefixed with ``what`` (``None``: safe to read)."""
    problem = conv_problem(module, what, transposed)
    if problem is None:
        hooks = hook_problem(module)
        problem = None if hooks is None else f"{what}: {hooks}"
    return problem
