"""Export pixelfold modules to ONNX, with native ``SpaceToDepth`` / ``DepthToSpace`` nodes, and check them.

:func:`to_onnx` exports any model that holds pixelfold modules (``fold``,
``polyphase``, ``subpixel``, ``SpaceToDepth``, ``DepthToSpace``,
``FocusSlice``, and the plain convs ``to_space`` / ``to_depth`` / ``merge`` /
``transposed`` return), runs the file in onnxruntime on the example inputs and
raises :class:`~pixelfold.FoldError` if it does not match PyTorch, so an
export never silently changes what the model computes.

Native rearrangement ops
------------------------
ONNX has two rearrangement ops, both 2-D with square blocks only:

- ``SpaceToDepth`` — ``dcr`` order only up to opset 27 (no ``mode`` attribute, so
  PyTorch's ``pixel_unshuffle``, which is ``crd``, is *not* it); from opset 28
  ``mode="CRD"`` too, which :func:`to_onnx` uses at ``opset >= 28``;
- ``DepthToSpace`` — ``mode="DCR"`` (the default) or ``mode="CRD"``
  (= ``pixel_shuffle``).

During :func:`to_onnx` (``native_rearrange=True``) the context manager
:func:`onnx_native_ops` routes every pixelfold rearrangement that one of these
ops expresses through the custom ops ``pixelfold::space_to_depth`` /
``pixelfold::depth_to_space``, which the exporter translates to the native
node (an onnxscript ``custom_translation_table`` for the dynamo exporter, a
symbolic for the TorchScript one). Everything else — ``crd`` or ``focus``
space-to-depth, rectangular blocks, 1-D and 3-D — stays
``Reshape → Transpose → Reshape``, which is exact, just not one node.
For a native ``SpaceToDepth`` build the fold with ``order="dcr"``: pixelfold
permutes the next conv's weights instead of the data.

=====================  ==================================  ==========================================
module (2-D)           ``order="dcr"``                     ``order="crd"`` (the default)
=====================  ==================================  ==========================================
``fold``               Pad, SpaceToDepth, Conv             Pad, Reshape, Transpose, Reshape, Conv
``polyphase``          SpaceToDepth, Conv, DepthToSpace    Reshape, Transpose, Reshape, Conv, DepthToSpace
``subpixel`` (shared)  Conv, DepthToSpace                  Conv, DepthToSpace
=====================  ==================================  ==========================================

(plus a Slice where the output is cropped; ``DepthToSpace`` in the mode of the order).
The exported graph is the inference graph: the model runs in ``eval()`` mode
and unfrozen pixelfold convs are exported as if ``freeze()``-d (one Conv with
the transformed weight, no runtime gather); both are restored afterwards.

Exporters (torch 2.14)
----------------------
The ``torch.export``-based ("dynamo") exporter is the default, used for
``opset >= 18`` (its lowest native opset: asked for less, it exports at 18 and
its down-conversion fails on ``Pad``, so :func:`to_onnx` raises rather than
hand back an opset-18 file). For ``13 <= opset < 18`` the deprecated
TorchScript exporter is used, with the same native ops; its graphs also carry
shape arithmetic (Shape/Gather/Concat) that the dynamo exporter folds away.
Shapes are static unless you pass ``dynamic_shapes=`` (dynamo) or ``dynamic_axes=``
(TorchScript) through ``**export_kwargs``; the file is then checked at the example and at
other sizes (:mod:`pixelfold.export_sizes`), and refused if no other size could be checked.
The file is written to a temporary path and moved over ``path`` only once it passed.

Example:
    >>> import tempfile, torch, pixelfold
    >>> from pixelfold.export import to_onnx, count_ops
    >>> stem = pixelfold.fold(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), 2, order="dcr")
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = to_onnx(stem, torch.randn(1, 3, 16, 16), f"{tmp}/stem.onnx")  # checked in onnxruntime
    ...     count_ops(path)
    {'Conv': 1, 'Pad': 1, 'SpaceToDepth': 1}
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import FoldError

from .onnx_ops import MIN_OPSET, DYNAMO_MIN_OPSET, _SWAP_LOCK, _square_block, _custom_ops, S2D_MODE_OPSET, _NATIVE_OPSET, _native_space_to_depth, _native_depth_to_space, onnx_native_ops, onnx_translation_table, _register_torchscript_symbolics  # noqa: F401  (re-exported)

__all__ = ["MIN_OPSET", "check_onnx", "count_ops", "onnx_native_ops", "onnx_translation_table", "to_onnx"]

#: Lowest ONNX opset :func:`to_onnx` targets (``DepthToSpace`` has had ``mode`` since 11, ``Pad`` inputs since 11).
# ---------------------------------------------------------------------------- model state helpers
@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


_FROZEN_BUFFERS = ("frozen_weight", "frozen_bias")


def _freezable(m: nn.Module) -> bool:
    """A pixelfold conv module (``fold``/``polyphase``/``subpixel``/...) that is not frozen."""
    return (
        type(m).__module__.startswith("pixelfold.")
        and callable(getattr(m, "freeze", None))
        and callable(getattr(m, "unfreeze", None))
        and getattr(m, "frozen", None) is False
    )


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Temporarily ``freeze()`` every unfrozen pixelfold conv module (restored afterwards)."""
    changed: list[tuple[nn.Module, dict[str, Any]]] = []
    try:
        for m in model.modules():
            if _freezable(m):
                saved = {k: m._buffers[k] for k in _FROZEN_BUFFERS if k in m._buffers}
                changed.append((m, saved))
                m.freeze()  # type: ignore[operator]
        yield
    finally:
        for m, saved in reversed(changed):
            m.unfreeze()  # type: ignore[operator]
            for k in _FROZEN_BUFFERS:
                if k in saved:
                    setattr(m, k, saved[k])
                elif k in m._buffers:
                    delattr(m, k)


# ---------------------------------------------------------------------------- checking
def _flatten(obj: Any) -> list[Any]:
    if isinstance(obj, (list, tuple)):
        return [leaf for item in obj for leaf in _flatten(item)]
    if isinstance(obj, dict):
        return [leaf for value in obj.values() for leaf in _flatten(value)]
    return [obj]


def _contiguous(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.contiguous()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_contiguous(item) for item in obj)
    if isinstance(obj, dict):
        return {key: _contiguous(value) for key, value in obj.items()}
    return obj


def _numpy(t: torch.Tensor) -> Any:
    import numpy as np

    if t.dtype == torch.bfloat16:
        raise FoldError("numpy (and so the onnxruntime check) has no bfloat16; export with check=False")
    return np.ascontiguousarray(t.detach().cpu().numpy())


def check_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[Any, ...],
    path: str | os.PathLike[str],
    rtol: float = 1e-5,
    atol: float = 0.0,
) -> float:
    """Run ``path`` in onnxruntime (CPU) and compare with ``model(*example_inputs)`` in PyTorch.

    Each output must satisfy ``max|onnx - torch| <= atol + rtol * max|torch|``
    (NaNs and infinities must sit at the same places). Returns the largest
    error relative to its output's largest magnitude; raises
    :class:`~pixelfold.FoldError` on any mismatch of count, shape or values.
    The model runs as it is (call ``eval()`` first for an inference graph).

    >>> import tempfile
    >>> conv = torch.nn.Conv1d(2, 2, 3)
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = to_onnx(conv, torch.randn(1, 2, 8), f"{tmp.name}/c.onnx", opset=17, check=False)  # TorchScript
    >>> check_onnx(conv, torch.randn(1, 2, 8), path) < 1e-5
    True
    >>> with torch.no_grad():
    ...     _ = conv.weight.mul_(2)
    >>> check_onnx(conv, torch.randn(1, 2, 8), path)
    Traceback (most recent call last):
    ...
    pixelfold.errors.FoldError: ONNX output 0 differs from PyTorch: ...
    >>> tmp.cleanup()
    """
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError as err:
        raise FoldError("checking an ONNX export needs onnxruntime (pip install onnxruntime)") from err
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    inputs = [t for t in _flatten(args) if isinstance(t, torch.Tensor)]
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise FoldError(f"onnxruntime cannot load {path}: {err}") from err
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise FoldError(
            f"the ONNX graph has {len(names)} inputs but the example has {len(inputs)} tensors; "
            "cannot match them up (export with check=False and compare yourself)"
        )
    with torch.no_grad():
        expected = _flatten(model(*args))
    if not all(isinstance(t, torch.Tensor) for t in expected):
        raise FoldError("check_onnx compares tensor outputs only; the model returned non-tensors")
    feed = {name: _numpy(t) for name, t in zip(names, inputs)}
    try:
        got = session.run(None, feed)
    except Exception as err:
        raise FoldError(f"onnxruntime fails to run {path}: {err}") from err
    if len(got) != len(expected):
        raise FoldError(f"ONNX graph returns {len(got)} outputs, PyTorch {len(expected)}")
    worst = 0.0
    for k, (y, ref_t) in enumerate(zip(got, expected)):
        ref = _numpy(ref_t)
        if tuple(y.shape) != tuple(ref.shape):
            raise FoldError(f"ONNX output {k} has shape {tuple(y.shape)}, PyTorch {tuple(ref.shape)}")
        if ref.dtype.kind not in "fc":
            if not np.array_equal(y, ref):
                raise FoldError(f"ONNX output {k} ({ref.dtype}) differs from PyTorch")
            continue
        y64, ref64 = y.astype(np.float64), ref.astype(np.float64)
        special = ~np.isfinite(ref64) | ~np.isfinite(y64)
        if special.any() and not np.array_equal(y64[special], ref64[special], equal_nan=True):
            raise FoldError(f"ONNX output {k} has NaN/inf where PyTorch does not (or the other way)")
        diff = float(np.abs(y64 - ref64)[~special].max(initial=0.0))
        scale = float(np.abs(ref64)[~special].max(initial=0.0))
        if diff > atol + rtol * scale:
            raise FoldError(
                f"ONNX output {k} differs from PyTorch: max abs error {diff:.3g} > atol {atol:g} + rtol {rtol:g} × "
                f"max |output| {scale:.3g}"
            )
        worst = max(worst, diff / scale if scale else diff)
    return worst


# ---------------------------------------------------------------------------- export
_TORCHSCRIPT_NOISE = (
    (DeprecationWarning, r".*legacy TorchScript-based ONNX export"),
    (DeprecationWarning, r"The feature will be removed"),
    (UserWarning, r"Constant folding - Only steps=1"),
    (torch.jit.TracerWarning, r""),
)


def to_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[Any, ...],
    path: str | os.PathLike[str],
    opset: int = DYNAMO_MIN_OPSET,
    native_rearrange: bool = True,
    *,
    check: bool = True,
    freeze: bool = True,
    dynamo: bool | None = None,
    rtol: float = 1e-5,
    atol: float = 0.0,
    target: Any = None,
    **export_kwargs: Any,
) -> Path:
    """Export ``model`` to ONNX at ``path``, check it in onnxruntime, return the path.

    Args:
        model: any ``nn.Module``; pixelfold modules inside it export as described in
            :mod:`pixelfold.export`. Exported in ``eval()`` mode (restored afterwards).
        example_inputs: a tensor or a tuple of positional inputs (non-tensors are baked in).
            ONNX tensors have no memory format, so they are traced as ``.contiguous()``
            copies (a ``channels_last`` layout would only add Transposes); the check
            feeds PyTorch the originals.
        path: where to write the ``.onnx`` file.
        opset: ONNX opset, at least 13. ``>= 18`` uses the dynamo exporter, ``13..17``
            the TorchScript one (unless ``dynamo`` says otherwise).
        native_rearrange: emit ``SpaceToDepth`` / ``DepthToSpace`` where the channel order
            allows (2-D, square block; ``dcr`` for space-to-depth). ``False`` leaves every
            rearrangement as Reshape/Transpose/Reshape.
        check: run the file in onnxruntime on ``example_inputs`` and raise
            :class:`~pixelfold.FoldError` (deleting the file) if it does not match
            PyTorch within ``max|Δ| <= atol + rtol * max|output|``.
        freeze: export unfrozen pixelfold conv modules as if ``freeze()``-d (the
            transformed weight as an initializer, no runtime gather); restored afterwards.
        dynamo: force the exporter (``True``: ``torch.export``-based, ``False``: TorchScript).
        target: a target name or object (:func:`pixelfold.targets.get`): every pixelfold rearrangement
            is written in the target's ``lowering`` style (:mod:`pixelfold.judges.lowering`:
            ``native`` = this function's default, ``reshape6``, ``rank4``, ``rank4_nchw``).
            ``None`` (default): native ops where ``native_rearrange`` allows.
        **export_kwargs: passed to :func:`torch.onnx.export` (``input_names``,
            ``dynamic_shapes``, ``external_data=True`` for weights in ``<path>.data``, ...).

    Raises:
        FoldError: bad opset, an exporter failure, or an output mismatch.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise FoldError(f"opset must be an int >= {MIN_OPSET}, got {opset!r}")
    if not isinstance(model, nn.Module):
        raise FoldError(f"to_onnx exports an nn.Module, got {type(model).__name__}")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    use_dynamo = opset >= DYNAMO_MIN_OPSET if dynamo is None else bool(dynamo)
    if use_dynamo and opset < DYNAMO_MIN_OPSET:
        warnings.warn(
            f"the dynamo exporter emits opset {DYNAMO_MIN_OPSET} and down-converts to {opset}, which fails for "
            "some ops (Pad); to_onnx raises if the file does not have the opset asked for",
            stacklevel=2,
        )
    _require("onnx")
    if use_dynamo:
        _require("onnxscript")
    if check:
        _require("onnxruntime")
    style = _lowering_style(target)
    if style is not None and style != "native":
        native_rearrange = False  # the lowering writes every rearrangement itself
    final = Path(path)
    workdir = Path(tempfile.mkdtemp(prefix=".pixelfold-export-", dir=final.parent if final.parent.is_dir() else None))
    path = workdir / final.name  # exported and checked here; moved over ``final`` only when it passed
    try:
        with contextlib.ExitStack() as lowering:
            if style is not None and style not in ("native", "reshape6"):
                from .judges.lowering import lowered_rearrangements

                lowering.enter_context(lowered_rearrangements(style))
            _export_and_check(model, args, path, opset, use_dynamo, native_rearrange, check, freeze, rtol, atol,
                              export_kwargs)
        for p in (path, path.with_name(path.name + ".data")):
            if p.exists():
                os.replace(p, final.with_name(p.name))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return final


def _export_and_check(model: nn.Module, args: tuple[Any, ...], path: Path, opset: int, use_dynamo: bool,
                      native_rearrange: bool, check: bool, freeze: bool, rtol: float, atol: float,
                      export_kwargs: dict[str, Any]) -> None:
    """The body of :func:`to_onnx`, writing to ``path`` (a fresh temporary location)."""
    checked_kwargs = dict(export_kwargs)
    kwargs: dict[str, Any] = {"opset_version": opset, "dynamo": use_dynamo, "verbose": False}
    if use_dynamo:
        kwargs["external_data"] = False  # one self-contained file (torch still splits models over 2 GB)
    if use_dynamo and native_rearrange:  # merged with a table passed in export_kwargs (which wins)
        table = {**onnx_translation_table(opset), **(export_kwargs.pop("custom_translation_table", None) or {})}
        kwargs["custom_translation_table"] = table
    kwargs.update(export_kwargs)
    with _eval_mode(model):
        try:
            with contextlib.ExitStack() as stack:
                if freeze:
                    stack.enter_context(_frozen(model))
                if native_rearrange:
                    stack.enter_context(onnx_native_ops(opset))
                if not use_dynamo:
                    stack.enter_context(warnings.catch_warnings())
                    for category, message in _TORCHSCRIPT_NOISE:
                        warnings.filterwarnings("ignore", message=message, category=category)
                torch.onnx.export(model, _contiguous(args), str(path), **kwargs)
        except FoldError:
            raise
        except Exception as err:
            message = str(err)
            if len(message) > 2000:
                message = message[:2000] + " ... (see the chained exception)"
            raise FoldError(
                f"torch.onnx.export ({'dynamo' if use_dynamo else 'TorchScript'}, opset {opset}) failed: "
                f"{type(err).__name__}: {message}"
            ) from err
        if not path.exists():
            raise FoldError(f"torch.onnx.export wrote no file at {path}")
        got_opset = _default_opset(path)
        if got_opset != opset:
            _remove(path)
            raise FoldError(
                f"the exporter produced opset {got_opset}, not {opset}; use opset >= {DYNAMO_MIN_OPSET} with "
                "the dynamo exporter or dynamo=False for older opsets"
            )
        leaked = [op for op in count_ops(path) if op.startswith("pixelfold::")]
        if leaked:
            _remove(path)
            raise FoldError(f"internal: custom ops {leaked} were not translated to ONNX ops")
        if check:
            try:
                check_onnx(model, args, path, rtol=rtol, atol=atol)
                _check_other_sizes(model, args, path, checked_kwargs, rtol, atol)
            except FoldError as err:
                _remove(path)
                raise FoldError(f"{err} (export removed; to_onnx(..., check=False) keeps it for inspection)") from err


def _lowering_style(target: Any) -> str | None:
    """The lowering style of ``target`` (a name, or an object with ``.lowering``), ``None`` for no target."""
    if target is None:
        return None
    if isinstance(target, str):
        from . import targets

        target = targets.get(target)
    style = getattr(target, "lowering", None)
    if not isinstance(style, str):
        raise FoldError(f"target must be a target name or a pixelfold.targets target, got {type(target).__name__}")
    return style


def _check_other_sizes(model: nn.Module, args: tuple[Any, ...], path: Path, export_kwargs: dict[str, Any],
                       rtol: float, atol: float) -> None:
    """With dynamic dims, check the file at other sizes too (:mod:`pixelfold.export_sizes`); refuse if none ran."""
    from .export_sizes import variants

    others = variants(args, export_kwargs)
    if not others and not _has_dynamic(export_kwargs):
        return
    checked = 0
    for other in others:
        try:
            with torch.no_grad():
                model(*other)
        except Exception:  # a size the model itself rejects says nothing about the export
            continue
        try:
            check_onnx(model, other, path, rtol=rtol, atol=atol)
        except FoldError as err:
            shapes = [tuple(t.shape) for t in other if isinstance(t, torch.Tensor)]
            raise FoldError(f"the export with dynamic shapes is right at the example but not at input shapes "
                            f"{shapes}: {err}") from err
        checked += 1
    if checked == 0:
        raise FoldError("the export has dynamic dims but no other input size could be checked (the model rejects "
                        "every variant of the example); export with static shapes, or check=False to skip the check")


def _has_dynamic(export_kwargs: dict[str, Any]) -> bool:
    return bool(export_kwargs.get("dynamic_shapes") or export_kwargs.get("dynamic_axes"))


def _require(package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise FoldError(f"ONNX export needs {package}: pip install onnx onnxscript onnxruntime (pixelfold[export])")


def _remove(path: Path) -> None:
    """Delete an export and the external-data file the dynamo exporter may write beside it."""
    for p in (path, path.with_name(path.name + ".data")):
        p.unlink(missing_ok=True)


def _load(model: str | os.PathLike[str] | Any) -> Any:
    import onnx

    if isinstance(model, (str, os.PathLike)):
        return onnx.load(str(model), load_external_data=False)
    if isinstance(model, onnx.ModelProto):
        return model
    raise FoldError(f"expected a path or an onnx.ModelProto, got {type(model).__name__}")


def _default_opset(model: str | os.PathLike[str] | Any) -> int | None:
    for entry in _load(model).opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def count_ops(model: str | os.PathLike[str] | Any) -> dict[str, int]:
    """Histogram of node op types in an ONNX file (or ``onnx.ModelProto``), sorted by name.

    Nodes inside control-flow subgraphs are counted too. Ops outside the
    default domain are keyed ``"domain::OpType"``; calls to model-local
    functions are counted as one node each (not expanded).

    >>> import onnx
    >>> g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
    ...     [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
    ...     [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    >>> count_ops(onnx.helper.make_model(g))
    {'Relu': 1}
    """
    proto = _load(model)
    counts: dict[str, int] = {}

    def visit(graph: Any) -> None:
        for node in graph.node:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            counts[key] = counts.get(key, 0) + 1
            for attr in node.attribute:
                if attr.HasField("g"):
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(proto.graph)
    return dict(sorted(counts.items()))

