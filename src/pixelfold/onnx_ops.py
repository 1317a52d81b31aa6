"""ONNX's native rearrangement ops for pixelfold's: custom torch ops, the dynamo translation table, TorchScript symbolics, and the context that reroutes pixelfold's calls to them."""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .errors import FoldError
from .rearrange import depth_to_space as _depth_to_space
from .rearrange import space_to_depth as _space_to_depth

MIN_OPSET = 13
#: Lowest opset the dynamo exporter emits natively in torch 2.14.
DYNAMO_MIN_OPSET = 18

_SWAP_LOCK = threading.RLock()


# ---------------------------------------------------------------------------- custom ops
def _square_block(block: int | Sequence[int], x: torch.Tensor) -> int | None:
    """The side ``r >= 2`` of a square 2-D block, or None if ONNX has no native op for it."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    if isinstance(block, bool):
        return None
    if isinstance(block, int):
        b: tuple[Any, ...] = (block, block)
    else:
        try:
            b = tuple(block)
        except TypeError:
            return None
    if len(b) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in b) or b[0] != b[1]:
        return None
    return b[0] if b[0] >= 2 else None


@functools.cache
def _custom_ops() -> tuple[Any, Any]:
    """Register (once) ``pixelfold::space_to_depth`` and ``pixelfold::depth_to_space``.

    Their semantics are exactly ONNX's: 2-D, square block; ``SpaceToDepth`` in
    ``dcr`` order, ``DepthToSpace`` with ``mode`` ``"DCR"`` or ``"CRD"``. The
    eager and fake kernels are pixelfold's own rearrangement (plus a copy,
    since a custom op may not return a view of its input).
    """
    ns = torch.ops.pixelfold
    try:  # already registered (e.g. after importlib.reload)
        return ns.space_to_depth.default, ns.depth_to_space.default
    except (AttributeError, RuntimeError):
        pass

    @torch.library.custom_op("pixelfold::space_to_depth", mutates_args=())
    def s2d(x: torch.Tensor, block: int) -> torch.Tensor:
        return _space_to_depth(x, block, "dcr").clone()

    @s2d.register_fake
    def _(x: torch.Tensor, block: int) -> torch.Tensor:
        return _space_to_depth(x, block, "dcr").clone()

    @torch.library.custom_op("pixelfold::space_to_depth_crd", mutates_args=())
    def s2d_crd(x: torch.Tensor, block: int) -> torch.Tensor:
        return _space_to_depth(x, block, "crd").clone()

    @s2d_crd.register_fake
    def _(x: torch.Tensor, block: int) -> torch.Tensor:
        return _space_to_depth(x, block, "crd").clone()

    @torch.library.custom_op("pixelfold::depth_to_space", mutates_args=())
    def d2s(x: torch.Tensor, block: int, mode: str) -> torch.Tensor:
        if mode not in ("DCR", "CRD"):
            raise FoldError(f"DepthToSpace mode must be 'DCR' or 'CRD', got {mode!r}")
        return _depth_to_space(x, block, mode.lower()).clone()

    @d2s.register_fake
    def _(x: torch.Tensor, block: int, mode: str) -> torch.Tensor:
        return _depth_to_space(x, block, mode.lower()).clone()

    def s2d_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _depth_to_space(grad, ctx.block, "dcr"), None

    def s2d_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.block = inputs[1]

    def d2s_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _space_to_depth(grad, ctx.block, ctx.mode.lower()), None, None

    def d2s_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.block, ctx.mode = inputs[1], inputs[2]

    def s2d_crd_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _depth_to_space(grad, ctx.block, "crd"), None

    s2d.register_autograd(s2d_backward, setup_context=s2d_setup)
    s2d_crd.register_autograd(s2d_crd_backward, setup_context=s2d_setup)
    d2s.register_autograd(d2s_backward, setup_context=d2s_setup)
    return ns.space_to_depth.default, ns.depth_to_space.default


#: Lowest opset whose ``SpaceToDepth`` has ``mode`` (``"CRD"`` = ``pixel_unshuffle``).
S2D_MODE_OPSET = 28
_NATIVE_OPSET: list[int | None] = [None]  # the opset onnx_native_ops routes for (set while it is active)


def _native_space_to_depth(x: torch.Tensor, block: int | Sequence[int], order: str = "crd") -> torch.Tensor:
    r = _square_block(block, x)
    if r is not None and order == "crd" and (_NATIVE_OPSET[0] or 0) >= S2D_MODE_OPSET:
        return torch.ops.pixelfold.space_to_depth_crd(x, r)
    if r is None or order != "dcr":
        return _space_to_depth(x, block, order)
    return torch.ops.pixelfold.space_to_depth(x, r)


def _native_depth_to_space(x: torch.Tensor, block: int | Sequence[int], order: str = "crd") -> torch.Tensor:
    r = _square_block(block, x)
    if r is None or order not in ("dcr", "crd"):
        return _depth_to_space(x, block, order)
    return torch.ops.pixelfold.depth_to_space(x, r, order.upper())


@contextlib.contextmanager
def onnx_native_ops(opset: int | None = None) -> Iterator[None]:
    """Within the block, pixelfold's rearrangements that ONNX has a native op for use custom ops.

    ``space_to_depth(x, r, "dcr")`` and ``depth_to_space(x, r, "dcr" | "crd")``
    on 2-D inputs with a square block ``r >= 2`` become
    ``torch.ops.pixelfold.space_to_depth`` / ``depth_to_space``, which
    :func:`onnx_translation_table` (dynamo exporter) or the registered
    TorchScript symbolics turn into ``SpaceToDepth`` / ``DepthToSpace``. With
    ``opset >= 28`` (``SpaceToDepth`` has ``mode`` there) ``crd`` space-to-depth becomes
    ``SpaceToDepth(mode="CRD")`` too (dynamo exporter). All
    other calls run unchanged. The values computed are identical either way.

    It rebinds the names in the loaded ``pixelfold`` modules (``pixelfold``,
    ``pixelfold.rearrange``, ``pixelfold.layers``, ...); code that imported the
    functions under its own names is not rerouted (it still exports correctly,
    as Reshape/Transpose). Use it around your own ``torch.onnx.export`` call::

        with onnx_native_ops():
            torch.onnx.export(model, args, "m.onnx", custom_translation_table=onnx_translation_table())

    >>> x = torch.randn(1, 3, 4, 4)
    >>> import pixelfold
    >>> with onnx_native_ops():
    ...     y = pixelfold.space_to_depth(x, 2, "dcr")
    >>> torch.equal(y, pixelfold.space_to_depth(x, 2, "dcr"))
    True
    """
    _custom_ops()
    _register_torchscript_symbolics()
    swaps = ((_space_to_depth, _native_space_to_depth), (_depth_to_space, _native_depth_to_space))
    with _SWAP_LOCK:
        patched: list[tuple[Any, str, Any]] = []
        previous = _NATIVE_OPSET[0]
        _NATIVE_OPSET[0] = opset
        try:
            for name, module in list(sys.modules.items()):
                if module is None or not (name == "pixelfold" or name.startswith("pixelfold.")):
                    continue
                for attr in ("space_to_depth", "depth_to_space"):
                    current = getattr(module, attr, None)
                    for original, native in swaps:
                        if current is original:
                            patched.append((module, attr, original))
                            setattr(module, attr, native)
            yield
        finally:
            _NATIVE_OPSET[0] = previous
            for module, attr, original in reversed(patched):
                setattr(module, attr, original)


def onnx_translation_table(opset: int = DYNAMO_MIN_OPSET) -> dict[Callable[..., Any], Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: the custom ops → native ONNX ops.

    >>> sorted(str(k) for k in onnx_translation_table())
    ['pixelfold.depth_to_space.default', 'pixelfold.space_to_depth.default']
    """
    s2d_op, d2s_op = _custom_ops()
    from onnxscript import values

    op = values.Opset("", opset)

    def space_to_depth(x: Any, block: int) -> Any:
        return op.SpaceToDepth(x, blocksize=block)

    def depth_to_space(x: Any, block: int, mode: str) -> Any:
        return op.DepthToSpace(x, blocksize=block, mode=mode)

    table = {s2d_op: space_to_depth, d2s_op: depth_to_space}
    if opset >= S2D_MODE_OPSET:
        def space_to_depth_crd(x: Any, block: int) -> Any:
            return op.SpaceToDepth(x, blocksize=block, mode="CRD")

        table[torch.ops.pixelfold.space_to_depth_crd.default] = space_to_depth_crd
    return table


@functools.cache
def _register_torchscript_symbolics() -> None:
    from torch.onnx import symbolic_helper

    def space_to_depth(g: Any, x: Any, block: Any) -> Any:
        return g.op("SpaceToDepth", x, blocksize_i=symbolic_helper._get_const(block, "i", "block"))

    def depth_to_space(g: Any, x: Any, block: Any, mode: Any) -> Any:
        return g.op(
            "DepthToSpace",
            x,
            blocksize_i=symbolic_helper._get_const(block, "i", "block"),
            mode_s=symbolic_helper._get_const(mode, "s", "mode"),
        )

    torch.onnx.register_custom_op_symbolic("pixelfold::space_to_depth", space_to_depth, 11)
    torch.onnx.register_custom_op_symbolic("pixelfold::depth_to_space", depth_to_space, 11)
