"""``pixelfold rewrite model.onnx --profile P --out new.onnx``: the ONNX branch of the rewrite command."""

from __future__ import annotations

import argparse
from pathlib import Path

from pixelfold.errors import FoldError

#: profile -> ONNX transforms that implement it (so far only the stride fold)
PROFILES = {"no_stride": ("fold",)}


def transforms_for(profile: str | None, target: str | None) -> tuple[str, ...]:
    """The ONNX transforms for a ``--profile`` (``--target`` is not supported for ONNX input yet).

    >>> transforms_for(None, None)
    ('fold',)
    >>> transforms_for("no_transposed", None)
    Traceback (most recent call last):
    ...
    pixelfold.errors.FoldError: profile 'no_transposed' is not available for .onnx input yet; available: no_stride
    """
    if target:
        raise FoldError(f"--target {target} is not available for .onnx input yet; use --profile no_stride")
    name = profile or "no_stride"
    if name not in PROFILES:
        raise FoldError(f"profile {name!r} is not available for .onnx input yet; available: {', '.join(PROFILES)}")
    return PROFILES[name]


def run(args: argparse.Namespace) -> int:
    """Rewrite ``args.model`` (an .onnx file) to ``args.out`` and print the report."""
    from pixelfold.onnx.api import rewrite_onnx_file

    transforms = transforms_for(args.profile, args.target)
    if not args.out or not args.out.endswith(".onnx"):
        raise FoldError(f"--out must name an .onnx file for .onnx input (got {args.out!r}); nothing was run")
    report = rewrite_onnx_file(args.model, args.out, transforms)
    print(report)
    if getattr(args, "json", None):
        Path(args.json).write_text(report.to_json())
    return 0 if report.ok else 1
