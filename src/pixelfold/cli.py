"""The ``pixelfold`` command line: ``pixelfold <command> [options]`` (also ``python -m pixelfold``).

Commands are registered in :data:`COMMANDS` with :func:`register`: a name,
a one-line help, a function that adds the command's arguments to its
``argparse`` sub-parser, and a function that runs it and returns the exit
status. ``run`` functions should import heavy modules (torch, matplotlib)
lazily so that ``--help`` stays fast. A :class:`~pixelfold.FoldError` raised
by a command is printed to stderr as ``pixelfold <cmd>: error: <message>``
(no traceback) and exits with status 2; bad arguments are refused the same
way before any work starts (argparse types such as :func:`positive_int`,
and :func:`check_output_file` for every file a command will write). Any
other exception is a bug: ``pixelfold <cmd>: internal error: <Type>: <msg>``,
exit status 3, and ``pixelfold --debug <cmd> ...`` shows its traceback.

>>> sorted(COMMANDS)
['bench', 'check', 'explain', 'rewrite', 'tune']
>>> main(["explain", "--channels", "12", "--block", "4", "--no-time"])  # message on stderr
2
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["Command", "COMMANDS", "register", "register_module", "build_parser", "main", "int_list", "padding_arg",
           "positive_int", "positive_float", "seed_arg", "check_output_file", "check_output_dir", "check_distinct",
           "plot_formats"]


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, how it adds arguments, and how it runs (returning the exit status)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    epilog: str | None = None


#: name -> Command; add one with :func:`register`.
COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int], description: str | None = None,
             epilog: str | None = None) -> None:
    """Add (or replace) the subcommand ``name``."""
    COMMANDS[name] = Command(help, add_arguments, run, description, epilog)


def register_module(name: str, help: str, module: str, add_arguments: str = "add_arguments",
                    run: str = "run_from_args", description: str | None = None) -> None:
    """Add a subcommand implemented by functions of a module, imported only when the command is used.

    ``module`` is a dotted name (``"pixelfold.bench"``); ``add_arguments(parser)`` and ``run(args) -> int``
    are looked up in it. ``pixelfold --help`` does not import it.

    >>> register_module("demo-lazy", "a lazily imported command", "pixelfold.no_such_module")
    >>> "demo-lazy" in COMMANDS
    True
    >>> del COMMANDS["demo-lazy"]
    """
    def _load() -> Any:
        return importlib.import_module(module)

    register(name, help, lambda p: getattr(_load(), add_arguments)(p), lambda a: getattr(_load(), run)(a),
             description)


# ---------------------------------------------------------------------------- argument types
def int_list(text: str) -> int | tuple[int, ...]:
    """``"16"`` -> ``16``, ``"2,4"`` -> ``(2, 4)`` (an argparse type).

    >>> int_list("16"), int_list("2,4"), int_list(" 3 x 5 ")
    (16, (2, 4), (3, 5))
    """
    parts = [p for p in text.replace("x", ",").replace("×", ",").split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or a comma list of ints, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected an int or a comma list of ints, got {text!r}")
    return values[0] if len(values) == 1 else values


def padding_arg(text: str) -> int | tuple[int, ...] | str:
    """Like :func:`int_list`, or ``"same"`` / ``"valid"``."""
    if text.strip().lower() in ("same", "valid"):
        return text.strip().lower()
    return int_list(text)


def positive_int(text: str) -> int:
    """An int ≥ 1 (an argparse type: ``--rounds``, ``--threads``, ``--batch``).

    >>> positive_int("4")
    4
    >>> positive_int("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected an integer ≥ 1, got '0'
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (an argparse type: ``--min-run-time``).

    >>> positive_float("0.05")
    0.05
    >>> positive_float("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a number > 0 (seconds), got 'nan'
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0 (seconds), got {text!r}")
    return value


def seed_arg(text: str) -> int:
    """A random seed torch accepts: an int from 0 to 2**64 - 1."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**64 - 1, got {text!r}")
    return value


# ---------------------------------------------------------------------------- output paths, checked before the work
def _nothing_ran(option: str, path: str, problem: str) -> "FoldError":
    from .errors import FoldError

    return FoldError(f"{option} {path}: {problem} (nothing was run; choose another path)")


def _check_writable_dir(directory: Path, option: str, path: str, create: bool) -> None:
    if not directory.exists():
        if not create:
            raise _nothing_ran(option, path, f"directory {str(directory)!r} does not exist")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _nothing_ran(option, path, f"cannot create directory {str(directory)!r}: "
                               f"{err.strerror or err}") from None
    if not directory.is_dir():
        raise _nothing_ran(option, path, f"{str(directory)!r} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".pixelfold-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise _nothing_ran(option, path, f"cannot write to directory {str(directory)!r}: "
                           f"{err.strerror or err}") from None


def check_output_file(path: str | os.PathLike[str], option: str, create_parent: bool = False) -> Path:
    """Refuse, before any work, a file a command could not write: a directory, a missing or read-only folder.

    ``create_parent``: create missing folders (as ``--plot`` does) instead of refusing.

    >>> check_output_file("/", "--json")
    Traceback (most recent call last):
    ...
    pixelfold.errors.FoldError: --json /: is a directory, not a file (nothing was run; choose another path)
    """
    p = Path(path)
    shown = str(path)
    if not shown or p.is_dir():
        raise _nothing_ran(option, shown, "is a directory, not a file")
    _check_writable_dir(p.parent, option, shown, create_parent)
    if p.exists():
        try:
            with open(p, "ab"):
                pass
        except OSError as err:
            raise _nothing_ran(option, shown, f"cannot write to it: {err.strerror or err}") from None
    return p


def check_output_dir(path: str | os.PathLike[str], option: str) -> Path:
    """Like :func:`check_output_file` for a folder that a command writes files into (created if missing)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise _nothing_ran(option, str(path), "is a file, not a directory")
    _check_writable_dir(p, option, str(path), create=True)
    return p


def check_distinct(**paths: str | os.PathLike[str] | None) -> None:
    """Refuse two output options naming the same file (``check_distinct(plan=..., json=...)``)."""
    seen: dict[str, str] = {}
    for option, path in paths.items():
        if not path:
            continue
        key = os.path.realpath(path)
        flag = "--" + option.replace("_", "-")
        if key in seen:
            from .errors import FoldError

            raise FoldError(f"{seen[key]} and {flag} name the same file ({path}); give each its own path")
        seen[key] = flag


def plot_formats() -> list[str]:
    """The file extensions matplotlib can save a figure as (``png``, ``svg``, ``pdf``, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


# ---------------------------------------------------------------------------- explain
_EXPLAIN_DESCRIPTION = """\
Answer the seed question for any shapes: is a K×K conv (stride S) on a C×H×W map the same as an rK×rK conv
with stride rS on depth_to_space(x, r), a C/r²×rH×rW map? Prints both forms side by side (shapes, parameters,
MACs), checks them on random data, times them, and shows what is NOT the same: the big kernel at stride 1,
and its exact dense form, pixelfold.polyphase. With no options: 256×64×64, 3×3, padding 1, block 16."""

_EXPLAIN_EPILOG = """\
examples:
  pixelfold explain                                   # the seed: 256×64×64, 3×3 → 1×1024×1024, 48×48/16
  pixelfold explain --channels 64 --block 2,4 --no-time
  pixelfold explain --dims 1 --channels 32 --block 8 --kernel 5 --padding 2
  pixelfold explain --json > seed.json
  pixelfold explain --plot out/seed.png

For stable timings on Linux, run with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 (no page faults)."""


def _explain_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the depth-form conv (nn.ConvNd arguments)")
    g.add_argument("--channels", type=int, default=256, metavar="C", help="input channels (default: 256)")
    g.add_argument("--out-channels", type=int, default=1, metavar="O", help="output channels (default: 1)")
    g.add_argument("--kernel", type=int_list, default=3, metavar="K", help="kernel size, int or list (default: 3)")
    g.add_argument("--stride", type=int_list, default=1, metavar="S", help="stride (default: 1)")
    g.add_argument("--padding", type=padding_arg, default=1, metavar="P",
                   help="padding: int, list, 'same' or 'valid' (default: 1)")
    g.add_argument("--dilation", type=int_list, default=1, metavar="D", help="dilation (default: 1)")
    g.add_argument("--groups", type=int, default=1, metavar="G", help="groups (default: 1)")
    g = p.add_argument_group("the rearrangement and the data")
    g.add_argument("--block", type=int_list, default=None, metavar="R",
                   help="block of depth_to_space: int, or a list per dim such as 2,4 (default: the largest b "
                        "with b^dims dividing the channels per group, e.g. 16 for 256 channels in 2-D)")
    g.add_argument("--size", type=int_list, default=None, metavar="N",
                   help="spatial size of the depth-form map, int or list (default: 64; 16 in 3-D)")
    g.add_argument("--dims", type=int, default=2, choices=(1, 2, 3), help="spatial dims (default: 2)")
    g.add_argument("--order", default="crd", choices=("crd", "dcr"),
                   help="channel order of depth_to_space: crd = PyTorch pixel_shuffle, dcr = TF/ONNX "
                        "(default: crd)")
    g.add_argument("--batch", type=int, default=1, metavar="N", help="batch size (default: 1)")
    g.add_argument("--dtype", default="float32", choices=("float32", "float64", "bfloat16"),
                   help="dtype for the second check and for timing; the first check is float64 (default: float32)")
    g.add_argument("--seed", type=seed_arg, default=0, help="random seed for weights and data (default: 0)")
    g = p.add_argument_group("output")
    g.add_argument("--no-time", dest="time", action="store_false", help="skip timing")
    g.add_argument("--min-run-time", type=float, default=0.2, metavar="SEC",
                   help="seconds of timing per form (default: 0.2)")
    g.add_argument("--json", action="store_true", help="print everything as JSON instead of text")
    g.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw a figure of the equivalence (weights and maps) to FILE.png, .svg, .pdf, ... "
                        "(needs matplotlib; missing folders are created)")


def _check_plot_path(path: str) -> None:
    from .errors import FoldError

    if importlib.util.find_spec("matplotlib") is None:
        raise FoldError("--plot needs matplotlib (pip install 'pixelfold[plot]')")
    formats = plot_formats()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        found = f"'.{suffix}'" if suffix else "no extension"
        raise FoldError(f"--plot {path}: the file name has {found}; matplotlib writes "
                        f"{', '.join('.' + f for f in formats)}: end the name in one of them, e.g. .png "
                        "(nothing was run)")
    check_output_file(path, "--plot", create_parent=True)


def _explain_run(args: argparse.Namespace) -> int:
    if args.plot:
        _check_plot_path(args.plot)
    from . import explain

    progress = explain.StderrProgress()
    try:
        report = explain.seed_report(
            channels=args.channels, out_channels=args.out_channels, kernel=args.kernel, stride=args.stride,
            padding=args.padding, dilation=args.dilation, groups=args.groups, block=args.block, size=args.size,
            dims=args.dims, order=args.order, dtype=args.dtype, batch=args.batch, time=args.time,
            min_run_time=args.min_run_time, seed=args.seed, progress=progress,
        )
        plot_path = None
        if args.plot:
            progress("drawing the figure")
            from . import plot

            plot_path = str(plot.seed_figure(report, args.plot))
    finally:
        progress.done()
    if args.json:
        data = report.to_dict()
        data["plot"] = plot_path
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(explain.format_report(report))
        if plot_path:
            print(f"\nfigure: {plot_path}")
    return 0


register("explain", "the seed question for any shapes: depth form vs space form, checked and timed",
         _explain_arguments, _explain_run, _EXPLAIN_DESCRIPTION, _EXPLAIN_EPILOG)


# ---------------------------------------------------------------------------- model tools (imported when run)
register_module("rewrite", "rewrite a timm/torchvision model by a profile (no_stride, ...), verified, with a report",
                "pixelfold.commands", "rewrite_arguments", "rewrite_run",
                "Rewrite every layer a profile selects (no_stride, no_transposed, max_kernel=N, min_channels=N), "
                "verify each change on the model's real inputs and end to end, and print the report.")
register_module("tune", "time every exact form of each layer on this machine, keep the fastest, write a plan",
                "pixelfold.commands", "tune_arguments", "tune_run",
                "Time every exact form of each eligible layer (fold, patch_linear, subpixel, merge) on this "
                "machine, keep the fastest verified one, and write the choices as a JSON plan.")
register_module("check", "compile a model for an NPU target with the vendor's compiler: per-op NPU/CPU, cycles",
                "pixelfold.commands_check", "check_arguments", "check_run",
                "Compile MODEL for an NPU target with its vendor's compiler (Vela for Ethos-U, rknn-toolkit2 for "
                "Rockchip; build them with make npu-env) and print where each operator runs, the compiler's reasons "
                "for CPU fallbacks and its cycle estimate; --rewrite also rewrites the model for the target and "
                "judges the result.")
register_module("bench", "run the benchmark suite (every exact form side by side) and write tables and a chart",
                "pixelfold.bench")


# ---------------------------------------------------------------------------- main
class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered command.

    With ``command``, only that command's arguments are added (the others keep their help line), so
    a command's module is not imported unless it runs.
    """
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="pixelfold",
        description="Exact rewrites of convolutions between their spatial and their channel layouts.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"pixelfold {__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        sp = sub.add_parser(name, help=cmd.help, description=cmd.description or cmd.help,
                            epilog=cmd.epilog, formatter_class=_Formatter)
        if command is None or command == name:
            cmd.add_arguments(sp)
            sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return parser


_DEBUG_HELP = "show the Python traceback of an unexpected error instead of a one-line message"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0 success, 1 the command's own "not ok" (e.g. a rewrite whose report is not ok), 2 bad input (argparse
    errors raise ``SystemExit(2)``; a :class:`~pixelfold.FoldError` is printed as one line), 3 an internal
    error (one line and a hint; ``--debug`` shows the traceback), 130 interrupted.
    """
    from .errors import FoldError

    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    name = chosen if chosen in COMMANDS else None
    cmd = f"pixelfold {name}" if name else "pixelfold"
    args: argparse.Namespace | None = None
    try:
        parser = build_parser(name)
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        return int(COMMANDS[args.command].run(args) or 0)
    except FoldError as err:
        if getattr(args, "debug", False):
            raise
        print(f"{cmd}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `pixelfold explain | head`: silence the flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(f"{cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - no traceback reaches the user unless asked for
        if getattr(args, "debug", "--debug" in argv):
            raise
        debug_cmd = cmd.replace("pixelfold", "pixelfold --debug", 1)
        print(f"{cmd}: internal error: {type(err).__name__}: {err}\n"
              f"{cmd}: this is a bug (in pixelfold, or in the model's code); rerun with --debug for the "
              f"traceback ({debug_cmd} ...) and report it", file=sys.stderr)
        return 3
