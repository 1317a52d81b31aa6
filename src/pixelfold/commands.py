"""The ``pixelfold rewrite`` and ``pixelfold tune`` commands, and how they find a model by name.

MODEL is a timm model name (``resnet50``), a torchvision one (``torchvision:resnet18`` or a bare name
timm does not know), or ``package.module:factory`` (a callable returning an ``nn.Module``, or a module
instance). Models are built offline with random weights (nothing is downloaded: :func:`offline`); the
rewrites are exact for any weights.

>>> type(load_model("torch.nn:Identity")).__name__
'Identity'
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .cli import check_distinct, check_output_file, positive_int, positive_float, seed_arg
from .errors import FoldError

__all__ = ["load_model", "rewrite_arguments", "rewrite_run", "tune_arguments", "tune_run", "offline"]


@contextlib.contextmanager
def offline(name: str) -> Iterator[None]:
    """While building ``name``: an empty torch hub cache, and any weight download raises FoldError.

    The README promises that models are built with random weights and nothing is downloaded; this holds
    for factories that ask for pretrained weights by mistake (torchvision's ``weights_backbone``, say).
    """
    import torch.hub

    def refuse(url: str, *args: Any, **kwargs: Any) -> None:
        raise FoldError(f"building {name!r} tried to download {url}; pixelfold builds models offline with "
                        "random weights (the rewrites are exact for any weights): build it without pretrained "
                        "weights (e.g. weights=None, weights_backbone=None, pretrained=False)")

    import torch.utils.model_zoo

    # every name a weight download goes through (torchvision binds torch.hub's function at import)
    targets = [(torch.hub, "download_url_to_file"), (torch.hub, "load_state_dict_from_url"),
               (torch.utils.model_zoo, "load_url")]
    if "torchvision.models._api" in sys.modules:
        targets.append((sys.modules["torchvision.models._api"], "load_state_dict_from_url"))
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr in targets if hasattr(obj, attr)]
    saved_env, saved_dir = os.environ.get("TORCH_HOME"), getattr(torch.hub, "_hub_dir", None)
    with tempfile.TemporaryDirectory(prefix="pixelfold-no-hub-") as empty:
        os.environ["TORCH_HOME"] = empty
        torch.hub.set_dir(os.path.join(empty, "hub"))
        for obj, attr, _ in saved:
            setattr(obj, attr, refuse)
        try:
            yield
        finally:
            for obj, attr, fn in saved:
                setattr(obj, attr, fn)
            torch.hub._hub_dir = saved_dir  # type: ignore[attr-defined]
            if saved_env is None:
                os.environ.pop("TORCH_HOME", None)
            else:
                os.environ["TORCH_HOME"] = saved_env


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _from_factory(name: str) -> Any:
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise FoldError(f"cannot load {name!r}: give MODEL as package.module:factory")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise FoldError(f"cannot load {name!r}: {err}; give MODEL as package.module:factory (importable from "
                        "here: check the spelling and PYTHONPATH)") from None
    except Exception as err:  # noqa: BLE001 - the user's module failed while importing
        raise FoldError(f"cannot load {name!r}: importing {module_name} raised {type(err).__name__}: {err}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FoldError(f"cannot load {name!r}: module {module_name!r} has no attribute {attr!r}; give MODEL "
                            "as package.module:factory") from None
    if isinstance(obj, nn.Module):
        return obj  # a model instance, not a factory
    if not callable(obj):
        raise FoldError(f"cannot load {name!r}: {attr} is {_a(type(obj).__name__)}, not a function or class that "
                        "returns an nn.Module; give MODEL as package.module:factory")
    return _call(name, "the factory", obj)


def _call(name: str, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return fn(**kwargs)
    except FoldError as err:
        if "tried to download" in str(err):
            raise
        raise FoldError(f"cannot build {name!r}: {what} raised FoldError: {err}") from None
    except Exception as err:  # noqa: BLE001 - the factory's own failure, reported as such
        raise FoldError(f"cannot build {name!r}: {what} raised {type(err).__name__}: {err}") from None


def _torchvision_kwargs(builder: Callable[..., Any]) -> dict[str, Any]:
    """``weights=None`` and every other ``weights_*`` parameter None (``weights_backbone`` downloads)."""
    params = inspect.signature(builder).parameters
    return {p: None for p in params if p == "weights" or p.startswith("weights_")}


def load_model(name: str) -> nn.Module:
    """Build a model from a timm / torchvision name or a ``module:factory`` path (random weights, eval mode).

    Nothing is downloaded: see :func:`offline`.
    """
    with offline(name):
        model = _load(name)
    if not isinstance(model, nn.Module):
        raise FoldError(f"{name!r} gave {_a(type(model).__name__)}, not an nn.Module")
    return model.eval()


def _load(name: str) -> Any:
    if name.startswith("zoo:"):
        from . import zoo

        if name[4:] not in zoo.ZOO:
            raise FoldError(f"no zoo model is called {name[4:]!r}; the zoo has {', '.join(zoo.ZOO)}")
        return zoo.build(name[4:])
    if ":" in name and not name.startswith(("torchvision:", "timm:")):
        return _from_factory(name)
    source, _, bare = name.rpartition(":")
    if source in ("", "timm"):
        try:
            import timm
        except ImportError:
            if source == "timm":
                raise FoldError("timm is not installed: pip install timm") from None
        else:
            if timm.is_model(bare):
                return _call(name, "timm.create_model", timm.create_model, model_name=bare, pretrained=False)
    if source in ("", "torchvision"):
        try:
            import torchvision
        except ImportError:
            if source == "torchvision":
                raise FoldError("torchvision is not installed: pip install torchvision") from None
        else:
            if bare in torchvision.models.list_models():
                builder = torchvision.models.get_model_builder(bare)
                return _call(name, f"torchvision.models.{bare}", builder, **_torchvision_kwargs(builder))
    raise FoldError(f"no timm or torchvision model is called {bare!r}; give MODEL as a timm name, "
                    "torchvision:NAME, or package.module:factory")


def _shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` → ``(1, 3, 224, 224)``: N, C and 1-3 spatial sizes, all ≥ 1."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").replace("×", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,3,224,224, got {text!r}") from None
    if not 3 <= len(shape) <= 5:
        raise argparse.ArgumentTypeError(f"expected (N, C, *spatial) with 1-3 spatial dims, got {text!r}")
    if shape[0] < 1:
        raise argparse.ArgumentTypeError(f"a batch of {shape[0]} gives nothing to verify: expected N ≥ 1, "
                                         f"got {text!r}")
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected every size ≥ 1, got {text!r}")
    return shape


def _common_model(p: argparse.ArgumentParser, files: bool = False) -> None:
    """MODEL, --input-shape, --seed, --quiet (what every model command takes)."""
    what = "timm name, torchvision:NAME, zoo:NAME (pixelfold.zoo), or package.module:factory"
    p.add_argument("model", metavar="MODEL", help=what + (" (or an .onnx / .tflite file)" if files else ""))
    p.add_argument("--input-shape", type=_shape, default=None, metavar="N,C,H,W",
                   help="example input shape (default: 1,3,224,224; a zoo:NAME model's own)")
    p.add_argument("--seed", type=seed_arg, default=0, help="random seed for weights and input (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no per-layer progress on stderr")


def _common(p: argparse.ArgumentParser) -> None:
    _common_model(p)
    p.add_argument("--out", metavar="FILE.pt", help="save the resulting model (torch.save of the module)")
    p.add_argument("--onnx", metavar="FILE.onnx", help="also export the result to ONNX (checked in onnxruntime)")
    p.add_argument("--json", metavar="FILE.json", help="write the report as JSON")


def rewrite_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``pixelfold rewrite``."""
    _common(p)
    p.add_argument("--profile", default=None, metavar="NAME",
                   help="no_stride, no_transposed, patch_linear, max_kernel=N, min_channels=N, joined with + "
                        "(default: no_stride)")
    _target_argument(p, "rewrite exactly what this NPU target's compiler rejects (instead of a --profile)")


def _target_argument(p: argparse.ArgumentParser, help: str) -> None:
    from . import targets

    p.add_argument("--target", default=None, metavar="NAME",
                   help=f"{help}: {', '.join(targets.names())}, or a .toml/.json target file")


def _target(args: argparse.Namespace) -> Any:
    """The --target's Target (checked before any work), or None."""
    if not getattr(args, "target", None):
        return None
    from . import targets

    return targets.get(args.target)


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse unwritable or clashing output paths, and a missing ONNX toolchain, before any work."""
    outputs = {"out": args.out, "onnx": args.onnx, "json": args.json, "plan": getattr(args, "plan", None)}
    for option, path in outputs.items():
        if path:
            check_output_file(path, f"--{option}")
    check_distinct(**outputs)
    if args.onnx:
        missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise FoldError(f"--onnx needs {', '.join(missing)} (pip install 'pixelfold[export]'); nothing was run")


def _prepare(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(args.seed)
    if not args.quiet:
        print(f"building {args.model} (random weights) ...", file=sys.stderr, flush=True)
    model = load_model(args.model)
    if args.input_shape is None:
        from . import zoo

        bare = args.model[4:] if args.model.startswith("zoo:") else None
        args.input_shape = zoo.ZOO[bare].input_shape if bare in zoo.ZOO else (1, 3, 224, 224)
    shape = "×".join(map(str, args.input_shape))
    try:
        x = torch.randn(*args.input_shape)
    except RuntimeError as err:
        raise FoldError(f"cannot make an input of shape {shape}: {err}; give a smaller --input-shape") from None
    try:
        with torch.no_grad():
            model(x)
    except Exception as err:  # noqa: BLE001 - the model refuses this input: say so before the work
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise FoldError(f"{args.model} does not run on an input of shape {shape} ({type(err).__name__}: "
                        f"{first}); give --input-shape N,C,H,W as the model expects it") from None
    return model, x


def _write(option: str, path: str, action: Callable[[], Any]) -> None:
    try:
        action()
    except OSError as err:
        raise FoldError(f"{option} {path}: cannot write: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 - e.g. a model torch.save cannot pickle
        raise FoldError(f"{option} {path}: {type(err).__name__}: {err}") from None


def _finish(args: argparse.Namespace, model: nn.Module, x: torch.Tensor, report_json: str) -> None:
    if args.json:
        _write("--json", args.json, lambda: Path(args.json).write_text(report_json))
        print(f"report: {args.json}")
    if args.out:
        _write("--out", args.out, lambda: torch.save(model, args.out))
        print(f"model: {args.out} (load with torch.load(path, weights_only=False))")
    if args.onnx:
        from .export import to_onnx

        to_onnx(model, x, args.onnx)
        print(f"onnx: {args.onnx} (matches PyTorch in onnxruntime)")


def rewrite_run(args: argparse.Namespace) -> int:
    """``pixelfold rewrite MODEL --profile no_stride``: rewrite, verify, print the report."""
    from .rewrite import Profile, rewrite

    if str(args.model).endswith(".onnx"):  # ONNX graph in, ONNX graph out (pixelfold.onnx, issue 11)
        from .onnx.cli import run as onnx_run

        return onnx_run(args)
    _check_outputs(args)
    target = _target(args)
    if target is not None and args.profile:
        raise FoldError("give --profile or --target, not both (a target is its own profile); nothing was run")
    # a bad profile or target is refused before the model is built
    profile = Profile.target(target) if target is not None else Profile.parse(args.profile or "no_stride")
    model, x = _prepare(args)
    new, report = rewrite(model, profile, example_inputs=x, progress=not args.quiet)
    print(report)
    _finish(args, new, x, report.to_json())
    return 0 if report.ok else 1


def tune_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``pixelfold tune``."""
    _common(p)
    p.add_argument("--plan", metavar="FILE.json", default="plan.json", help="where to write the plan "
                   "(default: plan.json)")
    p.add_argument("--channels-last", action="store_true", help="also try the whole model in channels_last")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved timing rounds per layer (default: 5)")
    p.add_argument("--min-run-time", type=positive_float, default=0.05, metavar="SEC",
                   help="seconds per measurement (default: 0.05)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    _target_argument(p, "tune for this NPU target by its compiler's cycle estimates instead of this machine's time")


def tune_run(args: argparse.Namespace) -> int:
    """``pixelfold tune MODEL --plan plan.json``: time every exact form per layer, keep the fastest."""
    from .tune import tune

    _check_outputs(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, x = _prepare(args)
    formats = ("contiguous", "channels_last") if args.channels_last else ("contiguous",)
    target = _target(args)
    tuned, plan = tune(model, x, memory_formats=formats, rounds=args.rounds, min_run_time=args.min_run_time,
                       progress=not args.quiet, target=target)
    print(plan)
    _write("--plan", args.plan, lambda: plan.save(args.plan))
    print(f"plan: {args.plan} (reapply with pixelfold.apply_plan(model, {args.plan!r}))")
    _finish(args, tuned, x, plan.to_json())
    return 0
