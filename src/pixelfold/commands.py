"""The ``pixelfold rewrite`` and ``pixelfold tune`` commands, and how they find a model by name.

MODEL is a timm model name (``resnet50``), a torchvision one (``torchvision:resnet18`` or a bare name
timm does not know), or ``package.module:factory`` (a callable returning an ``nn.Module``). Models are
built offline with random weights: the rewrites are exact for any weights.

>>> type(load_model("torch.nn:Identity")).__name__
'Identity'
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch
from torch import nn

from .errors import FoldError

__all__ = ["load_model", "rewrite_arguments", "rewrite_run", "tune_arguments", "tune_run"]


def load_model(name: str) -> nn.Module:
    """Build a model from a timm / torchvision name or a ``module:factory`` path (random weights, eval mode)."""
    if ":" in name and not name.startswith(("torchvision:", "timm:")):
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise FoldError(f"cannot load {name!r}: {err}; give MODEL as package.module:factory") from None
        model = factory()
    else:
        source, _, bare = name.rpartition(":")
        model = None
        if source in ("", "timm"):
            try:
                import timm

                if timm.is_model(bare):
                    model = timm.create_model(bare, pretrained=False)
            except ImportError:
                if source == "timm":
                    raise FoldError("timm is not installed: pip install timm") from None
        if model is None and source in ("", "torchvision"):
            try:
                import torchvision

                if bare in torchvision.models.list_models():
                    model = torchvision.models.get_model(bare, weights=None)
            except ImportError:
                if source == "torchvision":
                    raise FoldError("torchvision is not installed: pip install torchvision") from None
        if model is None:
            raise FoldError(f"no timm or torchvision model is called {bare!r}; give MODEL as a timm name, "
                            "torchvision:NAME, or package.module:factory")
    if not isinstance(model, nn.Module):
        raise FoldError(f"{name!r} gave a {type(model).__name__}, not an nn.Module")
    return model.eval()


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,3,224,224, got {text!r}") from None
    if len(shape) < 3:
        raise argparse.ArgumentTypeError(f"expected (N, C, *spatial) with 1-3 spatial dims, got {text!r}")
    return shape


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="timm name, torchvision:NAME, or package.module:factory")
    p.add_argument("--input-shape", type=_shape, default=(1, 3, 224, 224), metavar="N,C,H,W",
                   help="example input shape (default: 1,3,224,224)")
    p.add_argument("--seed", type=int, default=0, help="random seed for weights and input (default: 0)")
    p.add_argument("--out", metavar="FILE.pt", help="save the resulting model (torch.save of the module)")
    p.add_argument("--onnx", metavar="FILE.onnx", help="also export the result to ONNX (checked in onnxruntime)")
    p.add_argument("--json", metavar="FILE.json", help="write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no per-layer progress on stderr")


def rewrite_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``pixelfold rewrite``."""
    _common(p)
    p.add_argument("--profile", default="no_stride", metavar="NAME",
                   help="no_stride, no_transposed, max_kernel=N, min_channels=N, joined with + "
                        "(default: no_stride)")


def _prepare(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(args.seed)
    if not args.quiet:
        print(f"building {args.model} (random weights) ...", file=sys.stderr, flush=True)
    model = load_model(args.model)
    return model, torch.randn(*args.input_shape)


def _finish(args: argparse.Namespace, model: nn.Module, x: torch.Tensor, report_json: str) -> None:
    if args.json:
        Path(args.json).write_text(report_json)
        print(f"report: {args.json}")
    if args.out:
        torch.save(model, args.out)
        print(f"model: {args.out} (load with torch.load(path, weights_only=False))")
    if args.onnx:
        from .export import to_onnx

        to_onnx(model, x, args.onnx)
        print(f"onnx: {args.onnx} (matches PyTorch in onnxruntime)")


def rewrite_run(args: argparse.Namespace) -> int:
    """``pixelfold rewrite MODEL --profile no_stride``: rewrite, verify, print the report."""
    from .rewrite import rewrite

    model, x = _prepare(args)
    new, report = rewrite(model, args.profile, example_inputs=x, progress=not args.quiet)
    print(report)
    _finish(args, new, x, report.to_json())
    return 0 if report.ok else 1


def tune_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``pixelfold tune``."""
    _common(p)
    p.add_argument("--plan", metavar="FILE.json", default="plan.json", help="where to write the plan "
                   "(default: plan.json)")
    p.add_argument("--channels-last", action="store_true", help="also try the whole model in channels_last")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per layer (default: 5)")
    p.add_argument("--min-run-time", type=float, default=0.05, metavar="SEC",
                   help="seconds per measurement (default: 0.05)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def tune_run(args: argparse.Namespace) -> int:
    """``pixelfold tune MODEL --plan plan.json``: time every exact form per layer, keep the fastest."""
    from .tune import tune

    if args.threads:
        torch.set_num_threads(args.threads)
    model, x = _prepare(args)
    formats = ("contiguous", "channels_last") if args.channels_last else ("contiguous",)
    tuned, plan = tune(model, x, memory_formats=formats, rounds=args.rounds, min_run_time=args.min_run_time,
                       progress=not args.quiet)
    print(plan)
    plan.save(args.plan)
    print(f"plan: {args.plan} (reapply with pixelfold.apply_plan(model, {args.plan!r}))")
    _finish(args, tuned, x, plan.to_json())
    return 0
