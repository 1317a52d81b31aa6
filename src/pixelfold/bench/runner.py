"""Running the suite: environment (malloc, machine), group selection, ``run`` and the command line."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import FoldError
from .cases import GROUPS
from .model import DTYPES, MALLOC_ENV, Context, Group, Result, SkipCase
from .measure import _measure_case
from .render import targets, write_results


# ---------------------------------------------------------------------------- environment
def apply_mallopt() -> str:
    """Set glibc's malloc like ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` in this process.

    Large buffers then come from the heap and are reused instead of being
    mmapped (and page-faulted) afresh on every call. Returns what was done.
    """
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return "set in the environment"
    if not sys.platform.startswith("linux"):
        return "not set (not Linux)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        ok = False
    return "applied in-process with mallopt (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)" if ok else "NOT set"


def machine_info(device: torch.device, dtype: torch.dtype, threads: int, malloc: str | None = None) -> dict[str, Any]:
    """What the header of the results states."""
    from ..tune import cpu_name

    env = {k: os.environ.get(k) for k in MALLOC_ENV}
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "malloc_env": env,
        "malloc": malloc or ("set in the environment" if all(env[k] == v for k, v in MALLOC_ENV.items())
                             else "not set"),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": _cpu_capability(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return info


def _cpu_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:
        return "unknown"


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


# ---------------------------------------------------------------------------- running
def _select(cases: Sequence[str] | None, quick: bool) -> list[Group]:
    if not cases:
        return [g for g in GROUPS if g.quick or not quick]
    picked = []
    for g in GROUPS:
        if any(c == g.key for c in cases):
            picked.append(g)
    unknown = [c for c in cases if c not in {g.key for g in GROUPS}]
    if unknown:
        raise ValueError(f"unknown case group(s) {unknown}; choose from {[g.key for g in GROUPS]}")
    return picked


def run(
    cases: Sequence[str] | None = None,
    quick: bool = False,
    threads: int | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    rounds: int | None = None,
    min_run_time: float | None = None,
    batch: int | None = None,
    tag: str | None = None,
    verbose: bool = False,
    malloc: str | None = None,
    compile: bool = True,
) -> list[Result]:
    """Run the suite (or the groups named in ``cases``) and return one :class:`Result` per form.

    ``quick``: a few tiny cases (a smoke test). ``threads``: torch threads
    (default: all cores). ``out``: a directory to write ``<tag>.md``,
    ``<tag>.json`` and ``<tag>.png`` to (``tag`` defaults to the device type,
    plus the dtype when it is not float32). ``device="cuda"`` times with
    accelerator synchronisation and ``cudnn.benchmark`` on. ``compile``: the
    ``tune`` group also times ``torch.compile``'d models.
    """
    dev = torch.device(device)
    dt = DTYPES[dtype] if isinstance(dtype, str) else dtype
    threads = threads or os.cpu_count() or 1
    rounds = rounds or (2 if quick else 7)
    min_run_time = min_run_time if min_run_time is not None else (0.02 if quick else 0.15)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if verbose else (lambda s: None)
    prev_threads = torch.get_num_threads()
    prev_bench = torch.backends.cudnn.benchmark
    torch.set_num_threads(threads)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ctx = Context(dev, dt, quick, batch, compile)
    info = machine_info(dev, dt, threads, malloc)
    info.update(quick=quick, rounds=rounds, min_run_time_s=min_run_time, load_before=_loadavg())
    results: list[Result] = []
    skipped: dict[str, str] = {}
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        for group in _select(cases, quick):
            log(f"[{group.key}]")
            try:
                with torch.no_grad():
                    built = group.build(ctx)
            except SkipCase as e:
                skipped[group.key] = str(e)
                log(f"  skipped: {e}")
                continue
            except Exception as e:  # noqa: BLE001 - one broken group must not stop the suite
                skipped[group.key] = f"error while building: {type(e).__name__}: {e}"
                results.append(Result(group.key, "(building the cases)", "-", "-", status="error",
                                      note=skipped[group.key]))
                log(f"  ERROR {skipped[group.key]}")
                continue
            for case in built:
                t0 = time.perf_counter()
                res = _measure_case(case, ctx, threads, rounds, min_run_time, log)
                results.extend(res)
                log(f"  {case.name}  ({time.perf_counter() - t0:.1f} s)")
                for r in res:
                    log(f"    {r.form:<60} {r.layout:<16} {r.time_ms:9.3f} ms  ×{r.ratio:6.3f}  err {r.max_err:.2e}")
            del built
    finally:
        torch.set_num_threads(prev_threads)
        torch.backends.cudnn.benchmark = prev_bench
    info.update(load_after=_loadavg(), elapsed_s=round(time.perf_counter() - start, 1), skipped=skipped)
    if out is not None:
        write_results(results, info, out, tag or _default_tag(dev, dt))
    run.last_info = info  # type: ignore[attr-defined]
    return results


def _default_tag(device: torch.device, dtype: torch.dtype) -> str:
    tag = device.type
    if dtype != torch.float32:
        tag += "-" + {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype).replace("torch.", ""))
    return tag


# ---------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``pixelfold bench`` (for the CLI to reuse)."""
    from ..cli import positive_float, positive_int

    parser.add_argument("--quick", action="store_true", help="a few tiny cases: a smoke test (< 30 s)")
    parser.add_argument("--cases", nargs="+", metavar="GROUP", choices=[g.key for g in GROUPS],
                        help=f"groups to run (default: all): {' '.join(g.key for g in GROUPS)}")
    parser.add_argument("--out", default=None,
                        help="directory for <tag>.md/.json/.png (default: benchmarks/results, or out/bench with "
                             "--quick)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="float32 (default), bfloat16, ...")
    parser.add_argument("--rounds", type=positive_int, default=None, help="interleaved rounds (default 7; quick 2)")
    parser.add_argument("--min-run-time", type=positive_float, default=None,
                        help="seconds per blocked_autorange measurement (default 0.15; quick 0.02)")
    parser.add_argument("--batch", type=positive_int, default=None, help="override every case's batch size")
    parser.add_argument("--tag", default=None, help="file name stem (default: device type, plus dtype if not fp32)")
    parser.add_argument("--no-mallopt", action="store_true",
                        help="do not set glibc malloc options in-process when the MALLOC_* env vars are missing")
    parser.add_argument("--no-compile", action="store_true",
                        help="tune group: skip the torch.compile forms (compiling takes ~30 s per model on CPU)")
    parser.add_argument("--list", action="store_true", help="list the case groups and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return parser


def _check_args(args: argparse.Namespace, out: str) -> torch.device:
    """Refuse a bad device, tag or output folder before anything is measured; returns the device."""
    from ..cli import check_output_dir

    try:
        dev = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise FoldError(f"--device {args.device!r} is not a device; use cpu or cuda[:N]") from None
    if dev.type not in ("cpu", "cuda"):
        raise FoldError(f"--device {args.device!r}: the benchmarks run on cpu or cuda[:N], not {dev.type}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FoldError("--device cuda but torch.cuda.is_available() is False")
    if args.tag is not None and (not args.tag.strip() or os.sep in args.tag or "/" in args.tag or "\0" in args.tag
                                 or args.tag in (".", "..")):
        raise FoldError(f"--tag {args.tag!r} is not a file name stem (no '/'; the files go to --out)")
    check_output_dir(out, "--out")
    return dev


def run_from_args(args: argparse.Namespace) -> int:
    """Run with parsed :func:`add_arguments` options; returns the exit status."""
    if args.list:
        for g in GROUPS:
            print(f"{g.key:<11} {'(quick) ' if g.quick else '        '}{g.title}")
        return 0
    out = args.out or ("out/bench" if args.quick else "benchmarks/results")
    _check_args(args, out)
    malloc = None if args.no_mallopt else apply_mallopt()
    results = run(args.cases, quick=args.quick, threads=args.threads, out=out, device=args.device,
                  dtype=args.dtype, rounds=args.rounds, min_run_time=args.min_run_time, batch=args.batch,
                  tag=args.tag, verbose=not args.quiet, malloc=malloc, compile=not args.no_compile)
    info = run.last_info  # type: ignore[attr-defined]
    tag = args.tag or _default_tag(torch.device(args.device), DTYPES[args.dtype])
    print(f"wrote {Path(out) / tag}.md/.json/.png ({len(results)} forms, {info['elapsed_s']} s)")
    for t in targets(results):
        unit = t.get("unit", "×")
        print(f"  target {t['target']} b={t['block']}: {t['ratio']:.3f}{unit} (≤ {t['limit']}{unit}) "
              f"{'met' if t['met'] else 'MISSED'}")
    errors = [r for r in results if r.status == "error"]
    for r in errors:
        print(f"  ERROR {r.case} / {r.form}: {r.note}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``pixelfold bench`` / ``python -m pixelfold.bench``."""
    parser = argparse.ArgumentParser(prog="pixelfold bench", description=__doc__.split("\n\n")[0])
    try:
        return run_from_args(add_arguments(parser).parse_args(argv))
    except FoldError as err:
        print(f"pixelfold bench: error: {err}", file=sys.stderr)
        return 2


