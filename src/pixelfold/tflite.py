"""Export to TFLite (float or int8) without TensorFlow: litert-torch + ai-edge-quantizer, checked against PyTorch.

An optional extra, installed in ``.venv-vela`` by ``make npu-env``
(``litert-torch==0.10.0``, ``ai-edge-quantizer``); elsewhere :func:`to_tflite`
raises :class:`~pixelfold.FoldError` naming it. The int8 model uses
ai-edge-quantizer's ``static_wi8_ai8`` recipe (int8 weights and activations,
calibrated): litert-torch's own PT2E quantizer leaves ``ConvTranspose`` in
float32, which Vela then rejects (``unsupported DataType Float32``).

Checks (``check=True``): the float model must match PyTorch within
``max|Δ| <= float_rtol · max|output|`` (default 1e-5); the int8 model is run
on the same inputs and its error is *measured* and returned
(:attr:`TFLiteExport.int8_error`, relative to ``max|output|``, and
:attr:`TFLiteExport.int8_error_lsb`, in units of the output's quantisation
step); it raises only past ``int8_rtol`` (default 0.25 of ``max|output|``),
which catches a wrong graph (a transposed layout, a mis-wired phase), not
quantisation noise.

Known converter limits (litert-torch 0.10): ``ConvTranspose2d(k3, s2, p1,
output_padding=1)`` fails with ``failed to legalize operation
'mhlo.convolution'`` (its :func:`pixelfold.subpixel` form converts).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .errors import FoldError
from .trees import flatten_outputs

__all__ = ["TFLiteExport", "Int8FileRefused", "to_tflite", "available", "run_tflite"]

_EXTRA = (
    "to_tflite needs litert-torch and ai-edge-quantizer, which pixelfold keeps out of its own environment: "
    "run `make npu-env` and use .venv-vela/bin/python (PYTHONPATH=src), or "
    "pip install litert-torch==0.10.0 ai-edge-quantizer"
)


def available() -> bool:
    """True where litert-torch and ai-edge-quantizer are importable (the Vela venv)."""
    return all(importlib.util.find_spec(m) is not None for m in ("litert_torch", "ai_edge_quantizer"))


@dataclass
class TFLiteExport:
    """What :func:`to_tflite` wrote and how close it is to PyTorch (``os.fspath`` gives the path)."""

    path: Path
    quantize: str | None
    float_error: float | None = None
    int8_error: float | None = None
    int8_error_lsb: float | None = None
    float_path: Path | None = None
    input_names: list[str] = field(default_factory=list)
    nhwc_io: bool = True

    def __fspath__(self) -> str:
        return str(self.path)


class Int8FileRefused(FoldError):
    """The TFLite interpreter refuses the int8 file ai-edge-quantizer wrote (a quantizer defect, e.g. per-channel
    TRANSPOSE_CONV scales along the wrong axis). ``export`` holds what was written and checked (the float model);
    a compiler may still take the file (Vela does), so the NPU judge goes on and reports the int8 check as missing.
    """

    def __init__(self, message: str, export: "TFLiteExport") -> None:
        super().__init__(message)
        self.export = export


def _to_nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.movedim(1, -1).contiguous() if t.dim() >= 3 else t.contiguous()


def _rel_error(got: Any, ref: torch.Tensor) -> tuple[float, float]:
    import numpy as np

    ref64 = ref.detach().double().numpy()
    diff = float(np.abs(np.asarray(got, dtype=np.float64) - ref64).max(initial=0.0))
    scale = float(np.abs(ref64).max(initial=0.0))
    return diff, scale


def run_tflite(path: str | os.PathLike[str], inputs: Sequence[Any]) -> list[Any]:
    """Run a ``.tflite`` (its default signature) on numpy-convertible inputs, float in, float out.

    int8 inputs/outputs are (de)quantised with the tensors' own scale and zero point.
    """
    import numpy as np
    from ai_edge_litert import interpreter as tfl

    interp = tfl.Interpreter(model_path=str(path))
    runner = interp.get_signature_runner()
    details = runner.get_input_details()
    names = sorted(details, key=lambda n: details[n]["index"]) if len(details) > 1 else list(details)
    feed = {}
    for name, value in zip(names, inputs):
        d = details[name]
        arr = np.asarray(value, dtype=np.float32)
        if d["dtype"] in (np.int8, np.uint8, np.int16):
            scale, zero = d["quantization"]
            info = np.iinfo(d["dtype"])
            arr = np.clip(np.round(arr / scale) + zero, info.min, info.max).astype(d["dtype"])
        feed[name] = arr
    out = runner(**feed)
    odetails = runner.get_output_details()
    results = []
    for name in sorted(out, key=lambda n: odetails[n]["index"]):
        arr, d = out[name], odetails[name]
        if d["dtype"] in (np.int8, np.uint8, np.int16):
            scale, zero = d["quantization"]
            arr = (arr.astype(np.float32) - zero) * scale
        results.append(arr)
    return results


def _output_scale(path: Path) -> float | None:
    from ai_edge_litert import interpreter as tfl

    runner = tfl.Interpreter(model_path=str(path)).get_signature_runner()
    scales = [d["quantization"][0] for d in runner.get_output_details().values()]
    return float(max(scales)) if scales and max(scales) > 0 else None


@contextlib.contextmanager
def _quiet() -> Any:
    """litert-torch and the quantizer print progress bars and reports; keep them off stdout."""
    import contextlib as cl
    import io

    with cl.redirect_stdout(io.StringIO()):
        yield


def to_tflite(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[Any, ...],
    path: str | os.PathLike[str],
    quantize: str | None = None,
    calibration: Iterable[torch.Tensor | tuple[Any, ...]] | None = None,
    nhwc_io: bool = True,
    *,
    check: bool = True,
    float_rtol: float = 1e-5,
    int8_rtol: float = 0.25,
    lowering: str | None = None,
    freeze: bool = True,
) -> TFLiteExport:
    """Convert ``model`` to a ``.tflite`` at ``path`` (float32, or int8 with ``quantize="int8"``) and check it.

    Args:
        model: any ``nn.Module`` (pixelfold modules export frozen, in ``eval()`` mode; restored afterwards).
        example_inputs: a tensor or tuple of tensors, NCHW as the model takes them.
        path: the ``.tflite`` to write (the float model goes beside it as ``*_float.tflite`` when quantising).
        quantize: ``None`` (float32) or ``"int8"`` (ai-edge-quantizer ``static_wi8_ai8``).
        calibration: input samples for int8 calibration (tensors or tuples, NCHW); default: the example
            plus 7 seeded standard-normal samples of the same shapes.
        nhwc_io: wrap the model in ``litert_torch.to_channel_last_io`` so that every input and output of
            rank >= 3 is channels-last in the file (what NPUs take); the check transposes for you.
        lowering: a :mod:`pixelfold.judges.lowering` style for pixelfold's rearrangements during
            conversion (``"rank4"`` for Ethos-U); ``None`` keeps pixelfold's default form.

    Raises:
        FoldError: litert-torch or ai-edge-quantizer missing, a conversion failure (with the converter's
            own message), or an output mismatch.
    """
    if not available():
        raise FoldError(_EXTRA)
    if quantize not in (None, "int8"):
        raise FoldError(f"quantize must be None (float32) or 'int8', got {quantize!r}")
    if not isinstance(model, nn.Module):
        raise FoldError(f"to_tflite converts an nn.Module, got {type(model).__name__}")
    import litert_torch

    from .export import _frozen

    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    args = tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    float_path = path if quantize is None else path.with_name(path.stem + "_float.tflite")
    with _eval_mode(model), contextlib.ExitStack() as stack:
        if freeze:
            stack.enter_context(_frozen(model))
        if lowering is not None:
            from .judges.lowering import lowered_rearrangements

            stack.enter_context(lowered_rearrangements(lowering, exporter="tflite"))
        with torch.no_grad():
            expected = flatten_outputs(model(*args))
        in_idx = [k for k, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dim() >= 3] if nhwc_io else []
        out_idx = [k for k, t in enumerate(expected) if t.dim() >= 3] if nhwc_io else []
        wrapped: nn.Module = model
        conv_args = args
        if nhwc_io and (in_idx or out_idx):
            wrapped = litert_torch.to_channel_last_io(model, args=in_idx, outputs=out_idx)
            conv_args = tuple(_to_nhwc(a) if k in in_idx else a for k, a in enumerate(args))
        try:
            with _quiet():
                edge = litert_torch.convert(wrapped, conv_args)
                edge.export(str(float_path))
        except FoldError:
            raise
        except Exception as err:  # the converter's own words, shortened
            message = " ".join(str(err).split())
            if len(message) > 1500:
                message = message[:1500] + " ..."
            raise FoldError(f"litert-torch could not convert the model: {type(err).__name__}: {message}") from err
    feed = [a.detach().numpy() if isinstance(a, torch.Tensor) else a for a in conv_args]
    refs = [(_to_nhwc(t) if k in out_idx else t).double() for k, t in enumerate(expected)]
    result = TFLiteExport(path, quantize, float_path=float_path if quantize else None, nhwc_io=nhwc_io)
    if check:
        got = run_tflite(float_path, feed)
        if len(got) != len(refs):
            raise FoldError(f"the TFLite model returns {len(got)} outputs, PyTorch {len(refs)}")
        worst = 0.0
        for k, (g, r) in enumerate(zip(got, refs)):
            if tuple(g.shape) != tuple(r.shape):
                raise FoldError(f"TFLite output {k} has shape {tuple(g.shape)}, PyTorch {tuple(r.shape)}")
            diff, scale = _rel_error(g, r)
            if diff > float_rtol * scale:
                raise FoldError(f"float TFLite output {k} differs from PyTorch: max abs error {diff:.3g} > "
                                f"rtol {float_rtol:g} × max |output| {scale:.3g}")
            worst = max(worst, diff / scale if scale else diff)
        result.float_error = worst
    if quantize == "int8":
        _quantize_int8(float_path, path, conv_args, calibration, in_idx)
        if check:
            try:
                got = run_tflite(path, feed)
            except Exception as err:
                msg = " ".join(str(err).split())[:400]
                raise Int8FileRefused(
                    f"the TFLite interpreter refuses the int8 file ai-edge-quantizer wrote ({path}): {msg}; the float "
                    f"TFLite matches PyTorch (max rel. error {result.float_error}); quantise with another tool, or "
                    "pass check=False to keep the file unchecked", result) from err
            lsb = _output_scale(path)
            worst = worst_lsb = 0.0
            for k, (g, r) in enumerate(zip(got, refs)):
                diff, scale = _rel_error(g, r)
                rel = diff / scale if scale else diff
                if rel > int8_rtol:
                    raise FoldError(f"int8 TFLite output {k} is far from PyTorch: max abs error {diff:.3g} > "
                                    f"{int8_rtol:g} × max |output| {scale:.3g}; the quantised graph computes "
                                    "something else (check the calibration inputs)")
                worst = max(worst, rel)
                if lsb:
                    worst_lsb = max(worst_lsb, diff / lsb)
            result.int8_error, result.int8_error_lsb = worst, (worst_lsb if lsb else None)
    return result


def _quantize_int8(float_path: Path, path: Path, conv_args: tuple[Any, ...], calibration: Any, in_idx: list[int]) -> None:
    import numpy as np
    from ai_edge_litert import interpreter as tfl
    from ai_edge_quantizer import quantizer, recipe

    interp = tfl.Interpreter(model_path=str(float_path))
    signatures = interp.get_signature_list()
    key = next(iter(signatures))
    runner = interp.get_signature_runner(key)
    details = runner.get_input_details()
    names = sorted(details, key=lambda n: details[n]["index"])
    if calibration is None:
        gen = torch.Generator().manual_seed(0)
        samples = [conv_args] + [
            tuple(torch.randn(a.shape, generator=gen) if isinstance(a, torch.Tensor) else a for a in conv_args)
            for _ in range(7)
        ]
    else:
        samples = []
        for s in calibration:
            s = s if isinstance(s, tuple) else (s,)
            samples.append(tuple(_to_nhwc(a) if k in in_idx else a for k, a in enumerate(s)))
        if not samples:
            raise FoldError("calibration is empty: give at least one input sample for int8 quantisation")
    data = [{n: np.asarray(a.detach().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float32)
             for n, a in zip(names, s)} for s in samples]
    try:
        with _quiet():
            qt = quantizer.Quantizer(str(float_path))
            qt.load_quantization_recipe(recipe.static_wi8_ai8())
            result = qt.quantize(qt.calibrate({key: data}))
            result.export_model(str(path), overwrite=True)
    except Exception as err:
        raise FoldError(f"ai-edge-quantizer (static_wi8_ai8) failed: {type(err).__name__}: {err}") from err


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Any:
    """``eval()`` for the conversion, restored afterwards; a ``torch.export`` program's module (which
    refuses ``eval()``) is already an inference graph and is left as it is."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
    except (NotImplementedError, RuntimeError):
        pass
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
