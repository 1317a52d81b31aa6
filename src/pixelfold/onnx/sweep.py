"""``python -m pixelfold.onnx.sweep --out benchmarks/results``: rewrite torchvision ONNX exports, write a table.

Each model is exported with torch's TorchScript exporter (opset 17, 1x3x32x32), rewritten by
:func:`pixelfold.onnx.api.rewrite_onnx` and compared end to end in onnxruntime; then the same export is
quantized by ``onnxruntime.quantization.quantize_static`` (QDQ, per channel, int8 weights and activations,
3 standard-normal calibration batches), rewritten and compared in LSBs of the output scale with ORT graph
optimisations on (QLinearConv) and off.
"""

from __future__ import annotations

import argparse
import collections
import io
import time
from pathlib import Path

MODELS = ("mobilenet_v3_small", "resnet18", "squeezenet1_0", "shufflenet_v2_x0_5", "mnasnet0_5",
          "squeezenet1_1", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "regnet_x_400mf",
          "regnet_y_400mf")
HEAD = ("| model | rewrites applied (float) | not rewritten | max abs error float (end to end) | int8 QDQ rewrites "
        "| int8 integer accumulators max abs Δ | int8 LSB end to end, ORT opt. on / off | int8 LSB at the folded convs "
        "(propagated differences included), ORT opt. off | QLinearConv (ORT) before → after | time float / int8 | reasons |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|")


def export(name: str, size: int = 32):
    """torchvision ``name`` (random weights, seed 0) as an ONNX model (opset 17, 1x3xsize x size)."""
    import warnings

    import onnx
    import torch
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.randn(1, 3, size, size), f, opset_version=17, dynamo=False)
    return onnx.load_from_string(f.getvalue())


def _reasons(rep) -> set[str]:
    return {e.reason.split(";")[0].split(" (")[0] for e in rep.skipped + rep.failed}


def sweep_one(name: str, size: int = 32, int8: bool = True, activation: str = "int8", batches: int = 10) -> str:
    """One Markdown table row for torchvision model ``name``."""
    from pixelfold.onnx import qdq_verify as qv
    from pixelfold.onnx.api import rewrite_onnx

    model = export(name, size)
    t0 = time.perf_counter()
    _, rep = rewrite_onnx(model)
    dt = time.perf_counter() - t0
    err = "-" if rep.end_to_end_error is None else f"{rep.end_to_end_error:.2g}"
    reasons = _reasons(rep)
    q_cells = ["not run", "- | - | -", "-", "-"]
    if int8:
        q = qv.quantize(model, per_channel=True, activation=activation)
        t0 = time.perf_counter()
        qnew, qrep = rewrite_onnx(q)
        qdt = time.perf_counter() - t0
        e = qv.measure(q, qnew, [c.path for c in qrep.changed], seed=7, batches=batches)
        fused = [collections.Counter(n.op_type for n in qv.fused_ops(m))["QLinearConv"] for m in (q, qnew)]
        q_cells = [f"fold ×{len(qrep.changed)}, {len(qrep.skipped)} skipped, {len(qrep.failed)} failed",
                   f"{e['integer']:g} | {e['on']:g} / {e['off']:g} | {e['local_off']:g}", f"{fused[0]} → {fused[1]}",
                   f"{qdt:.1f} s"]
        reasons |= _reasons(qrep)
    return (f"| {name} | fold ×{len(rep.changed)} | {len(rep.skipped)} skipped, {len(rep.failed)} failed | "
            f"{err} | {q_cells[0]} | {q_cells[1]} | {q_cells[2]} | {dt:.1f} s / {q_cells[3]} | "
            f"{'; '.join(sorted(reasons)) or '-'} |")


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and write ``onnx_sweep.md`` into ``--out``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--no-int8", action="store_true", help="skip the quantized (QDQ) half")
    p.add_argument("--activation", default="int8", choices=("int8", "uint8"), help="QDQ activation type")
    args = p.parse_args(argv)
    rows = []
    for m in args.models.split(","):
        rows.append(sweep_one(m, int8=not args.no_int8, activation=args.activation))
        print(rows[-1], flush=True)
    text = ("# pixelfold.onnx sweep (torchvision exports, 1x3x32x32, opset 17, onnxruntime CPU)\n\n"
            f"int8: `quantize_static` QDQ, per channel, int8 weights, {args.activation} activations (asymmetric), 3 random "
            "calibration batches; LSB = max |Δ| / output scale over 10 further random inputs "
            "(the per-rewrite check uses 2).\n\n" + HEAD + "\n")
    text += "\n".join(rows) + "\n"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = "onnx_sweep.md" if args.activation == "int8" else f"onnx_sweep_{args.activation}.md"
    (Path(args.out) / name).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
