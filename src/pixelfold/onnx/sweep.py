"""``python -m pixelfold.onnx.sweep --out benchmarks/results``: rewrite torchvision ONNX exports, write a table.

Each model is exported with torch's TorchScript exporter (opset 17, 1x3x32x32), rewritten by
:func:`pixelfold.onnx.api.rewrite_onnx` and compared end to end in onnxruntime.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

MODELS = ("mobilenet_v3_small", "resnet18", "squeezenet1_0", "shufflenet_v2_x0_5", "mnasnet0_5")


def sweep_one(name: str, size: int = 32) -> str:
    """One Markdown table row for torchvision model ``name``."""
    import onnx
    import torch
    import torchvision

    from pixelfold.onnx.api import rewrite_onnx

    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    f = io.BytesIO()
    torch.onnx.export(net, torch.randn(1, 3, size, size), f, opset_version=17, dynamo=False)
    model = onnx.load_from_string(f.getvalue())
    t0 = time.perf_counter()
    _, rep = rewrite_onnx(model)
    dt = time.perf_counter() - t0
    err = "-" if rep.end_to_end_error is None else f"{rep.end_to_end_error:.2g}"
    reasons = sorted({e.reason.split(";")[0].split(" (")[0] for e in rep.skipped + rep.failed})
    return (f"| {name} | fold ×{len(rep.changed)} | {len(rep.skipped)} skipped, {len(rep.failed)} failed | "
            f"{err} | n/a (QDQ not done) | {dt:.1f} s | {'; '.join(reasons) or '-'} |")


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and write ``onnx_sweep.md`` into ``--out``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--models", default=",".join(MODELS))
    args = p.parse_args(argv)
    rows = [sweep_one(m) for m in args.models.split(",")]
    head = ("| model | rewrites applied | not rewritten | max abs error float (end to end) | int8 LSB | time | "
            "reasons |\n|---|---|---|---|---|---|---|")
    text = "# pixelfold.onnx sweep (torchvision exports, 1x3x32x32, opset 17, onnxruntime CPU)\n\n" + head + "\n"
    text += "\n".join(rows) + "\n"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "onnx_sweep.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
