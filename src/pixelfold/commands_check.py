"""``pixelfold check MODEL --target T``: what the target's own compiler says about a model (and its rewrite).

MODEL is a timm/torchvision name or ``module:factory`` (as for ``pixelfold rewrite``), or a file the compiler
reads directly: a ``.tflite`` for Vela (Ethos-U), an ``.onnx`` for rknn-toolkit2 (Rockchip). The judge
environments come from ``make npu-env``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import positive_int
from .commands import _common_model, _prepare, _target
from .errors import FoldError

__all__ = ["check_arguments", "check_run"]


def check_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``pixelfold check``."""
    from . import targets

    _common_model(p, files=True)
    judged = [t for t in targets.names() if targets.get(t).judged]
    p.add_argument("--target", required=True, metavar="NAME", help=f"a judged target: {', '.join(judged)}")
    p.add_argument("--rewrite", action="store_true",
                   help="also rewrite the model for the target (pixelfold.rewrite) and judge the result")
    p.add_argument("--float", dest="quantize", action="store_const", const=None, default="int8",
                   help="compile the float model (default: int8, what the NPUs run)")
    p.add_argument("--calibration", type=positive_int, default=8, metavar="N",
                   help="random calibration samples for int8 (default: 8)")


def _show(title: str, j: object) -> None:
    print(f"{title}: {j.summary()}")  # type: ignore[attr-defined]
    for op, reasons in j.cpu_reasons.items():  # type: ignore[attr-defined]
        print(f"  CPU {op}: {reasons[0]}")
    if j.crashed:  # type: ignore[attr-defined]
        print(f"  the compiler said: {j.message.strip().splitlines()[-1] if j.message.strip() else ''}")  # type: ignore


def _check_onnx_rewrite(path: Path, target: str, args: argparse.Namespace) -> int:
    """``--rewrite`` on an ``.onnx`` file: rewrite it for the target (:mod:`pixelfold.onnx.solve`), judge the result.

    The rewritten graph is written next to nothing the user named: a temporary file, judged and removed.
    """
    import tempfile

    from .judges import judge_file
    from .onnx.solve import rewrite_onnx_file_for_target

    with tempfile.TemporaryDirectory(prefix="pixelfold-check-") as tmp:
        out = Path(tmp) / f"{path.stem}.{target}.onnx"
        report = rewrite_onnx_file_for_target(str(path), str(out), target)
        print(report)
        after = judge_file(out, target, quantize=args.quantize)
        _show(f"rewritten for {target}", after)
    sys.stdout.flush()
    return 0 if after.all_on_npu and report.ok else 1


def check_run(args: argparse.Namespace) -> int:
    """Judge MODEL for --target (and its rewrite with --rewrite); exit 0 when everything runs on the NPU."""
    from .judges import judge, judge_file

    target = _target(args)
    if not target.judged:
        raise FoldError(f"{target.name} is a data-only target: no compiler judges it here; judged targets are "
                        "ethos-u55-128, ethos-u65-256, ethos-u85-256, rk3588, rk3568, rk3576, rv1106")
    path = Path(args.model)
    if path.suffix in (".onnx", ".tflite"):
        if args.rewrite and path.suffix == ".tflite":
            raise FoldError("--rewrite takes a PyTorch model or an .onnx file, not a .tflite")
        if not path.is_file():
            raise FoldError(f"no file {path}")
        j = judge_file(path, target.name, quantize=args.quantize)
        _show(f"{path.name} on {target.name}", j)
        if not args.rewrite:
            return 0 if j.all_on_npu else 1
        return _check_onnx_rewrite(path, target.name, args)
    model, x = _prepare(args)
    j = judge(model, x, target.name, quantize=args.quantize)
    _show(f"{args.model} on {target.name}", j)
    ok = j.all_on_npu
    if args.rewrite:
        from .rewrite import rewrite

        new, report = rewrite(model, target, example_inputs=x, progress=not args.quiet)
        print(report)
        after = judge(new.eval(), x, target.name, quantize=args.quantize)
        _show(f"rewritten for {target.name}", after)
        ok = after.all_on_npu
    sys.stdout.flush()
    return 0 if ok else 1
