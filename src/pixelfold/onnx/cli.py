"""``pixelfold rewrite model.onnx --profile P | --target T --out new.onnx``: the ONNX branch of the rewrite command."""

from __future__ import annotations

import argparse
from pathlib import Path

from pixelfold.errors import FoldError

#: profile -> ONNX transforms that implement it, tried in this order on each anchor node (names as in
#: :class:`pixelfold.Profile` where one exists; the rest name the op they remove)
PROFILES = {
    "no_stride": ("fold", "subpixel"),  # strided Conv -> S2D + Conv; ConvTranspose -> Conv + D2S (DCR)
    "no_transposed": ("subpixel",),  # every ConvTranspose -> Conv + DepthToSpace (DCR)
    "no_transposed_crd": ("subpixel_crd",),  # the same with DepthToSpace CRD (keeps grouped ones grouped)
    "no_depth_to_space": ("transposed", "onehot_d2s"),  # Conv + D2S -> ConvTranspose, else one-hot ConvTranspose
    "no_space_to_depth": ("merge", "onehot_s2d"),  # S2D + Conv -> one strided Conv, else one-hot Conv
    "no_rearrange": ("merge", "transposed", "onehot_s2d", "onehot_d2s"),  # NVIDIA DLA: neither op remains
    "dcr_only": ("dcr_flip",),  # DepthToSpace CRD -> DCR (NNAPI, TIM-VX run only DCR)
    "native_rearrange": ("rtr",),  # Reshape -> Transpose -> Reshape -> DepthToSpace / SpaceToDepth
    "rank4": ("lower4",),  # SpaceToDepth / DepthToSpace -> Reshape/Transpose of rank <= 4 (NCHW; Rockchip)
    "patch_matmul": ("patch_matmul",),  # patchify Conv (kernel == stride) -> Reshape/Transpose + MatMul
    "polyphase": ("polyphase2",),  # Conv -> SpaceToDepth(2s) + stride-1 Conv + DepthToSpace(2, DCR)
}


def transforms_for(profile: str | None, target: str | None = None) -> tuple[str, ...]:
    """The ONNX transforms for a ``--profile`` (a ``--target`` is its own profile: :func:`run` hands it to
    :func:`pixelfold.onnx.solve.rewrite_onnx_for_target`; giving both is refused).

    Profiles combine with ``+`` (transforms in order, each once); the nodes one transform makes are offered to the
    others (``no_transposed+rank4``: the DepthToSpace subpixel makes is lowered; see
    :func:`pixelfold.onnx.api.rewrite_onnx`).

    >>> transforms_for(None, None)
    ('fold', 'subpixel')
    >>> transforms_for("no_stride+no_depth_to_space", None)
    ('fold', 'subpixel', 'transposed', 'onehot_d2s')
    >>> transforms_for("patch_linear", None)
    Traceback (most recent call last):
    ...
    pixelfold.errors.FoldError: profile 'patch_linear' is not available for .onnx input yet; available: no_stride, no_transposed, no_transposed_crd, no_depth_to_space, no_space_to_depth, no_rearrange, dcr_only, native_rearrange, rank4, patch_matmul, polyphase
    >>> transforms_for("no_stride", "rk3588")
    Traceback (most recent call last):
    ...
    pixelfold.errors.FoldError: give --profile or --target, not both (a target is its own profile); nothing was run
    """
    if target and profile:
        raise FoldError("give --profile or --target, not both (a target is its own profile); nothing was run")
    out: list[str] = []
    for name in (profile or "no_stride").split("+"):
        name = name.strip()
        if name not in PROFILES:
            raise FoldError(f"profile {name!r} is not available for .onnx input yet; available: {', '.join(PROFILES)}")
        out.extend(t for t in PROFILES[name] if t not in out)
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    """Rewrite ``args.model`` (an .onnx file) to ``args.out`` (for ``args.target`` or ``args.profile``); print the report."""
    from pixelfold.onnx.api import rewrite_onnx_file

    target = getattr(args, "target", None)
    transforms = transforms_for(args.profile, target)
    tgt = None
    if target:
        from pixelfold import targets

        tgt = targets.get(target)  # an unknown name: FoldError listing the built-in targets, before any work
    if not args.out or not args.out.endswith(".onnx"):
        raise FoldError(f"--out must name an .onnx file for .onnx input (got {args.out!r}); nothing was run")
    if tgt is not None:
        from pixelfold.onnx.solve import rewrite_onnx_file_for_target

        report = rewrite_onnx_file_for_target(args.model, args.out, tgt)
    else:
        report = rewrite_onnx_file(args.model, args.out, transforms)
    print(report)
    if getattr(args, "json", None):
        Path(args.json).write_text(report.to_json())
    return 0 if report.ok else 1
