"""``python -m pixelfold.onnx.sweep_lift --out benchmarks/results``: the lifted QDQ patterns on the zoo's models.

Each model of :data:`pixelfold.zoo.ZOO` named in :data:`CASES` is exported with torch's TorchScript exporter
(opset 17, the zoo's input shape), quantized by ``onnxruntime.quantization.quantize_static`` (QDQ, int8 weights,
per channel unless the case says per tensor; int8 and uint8 activations; 3 standard-normal calibration batches) and
rewritten with one pattern (:func:`pixelfold.onnx.api.rewrite_onnx`: every rewrite verified on its own, fail
closed). The table gives the exact integer check of every rewritten region (:mod:`pixelfold.onnx.qdq_region`) and
the end-to-end output differences in onnxruntime over 10 further random inputs, with graph optimisations on
(QLinearConv where ORT fuses) and off (float kernels between DQ and Q), as max |Δ| and the count of outputs that
differ at all.
"""

from __future__ import annotations

import argparse
import collections
import io
import time
from pathlib import Path

#: (zoo model, pattern, per-channel weights)
CASES = (("fsrcnn_x3", "subpixel", True), ("fsrcnn_x4", "subpixel", True), ("dcgan_generator", "subpixel", True),
         ("unet_small", "subpixel", True), ("fsrcnn_x3", "subpixel_crd", True), ("espcn_x3", "dcr_flip", True),
         ("espcn_x3", "transposed", False), ("espcn_x3", "polyphase2", True), ("resnet18", "polyphase2", True),
         ("patchify_k8s8", "patch_matmul", True), ("vit_tiny_patch16", "patch_matmul", True),
         ("convnext_atto", "patch_matmul", True), ("espcn_x3", "onehot_d2s", True))
#: onnxruntime's fused integer kernels counted in the table
INTEGER_OPS = ("QLinearConv", "QGemm", "QLinearMatMul")
HEAD = ("| model | activations | pattern | rewrites | integer accumulators max abs Δ (regions checked) "
        "| ORT opt. on: max abs Δ, outputs differing | ORT opt. off: max abs Δ, outputs differing "
        "| integer kernels (QLinearConv, QGemm) before → after | time | not rewritten |\n|---|---|---|---|---|---|---|---|---|---|")


def _export(name: str):
    import warnings

    import onnx
    import torch

    from pixelfold.zoo import ZOO

    z = ZOO[name]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(z.build(), (torch.randn(*z.input_shape),), buf, opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _differences(before, after, feeds, optimise: bool) -> str:
    import numpy as np

    from pixelfold.onnx import qdq_verify as qv

    sb, sa = qv.session(before, optimise), qv.session(after, optimise)
    worst, differ, total = 0.0, 0, 0
    for f in feeds:
        d = np.abs(sb.run(None, f)[0].astype(np.float64) - sa.run(None, f)[0])
        worst, differ, total = max(worst, float(d.max())), differ + int((d > 0).sum()), total + d.size
    return f"{worst:.2g}, {differ}/{total}"


def sweep_one(name: str, pattern: str, per_channel: bool, activation: str) -> str:
    """One Markdown row."""
    import numpy as np

    from pixelfold.onnx import qdq_verify as qv
    from pixelfold.onnx import verify
    from pixelfold.onnx.api import rewrite_onnx

    q = qv.quantize(_export(name), per_channel, activation)
    t = time.perf_counter()
    new, rep = rewrite_onnx(q, (pattern,))
    dt = time.perf_counter() - t
    changed = [e.path for e in rep.changed]
    e = qv.measure(q, new, changed, seed=3, batches=3) if changed else {"integer": "-", "checked": 0}
    rng = np.random.default_rng(7)
    feeds = [verify._inputs(q, rng, 8) for _ in range(10)]
    fused = [sum(n.op_type in INTEGER_OPS for n in qv.fused_ops(m)) for m in (q, new)]
    status = collections.Counter(x.status for x in rep.entries)
    why = "; ".join(sorted({x.reason[:100] for x in rep.entries if x.status != "changed" and x.reason}))
    return (f"| {name} | {activation}{'' if per_channel else ' (per-tensor weights)'} | {pattern} | "
            f"{status['changed']} changed, {status['skipped']} skipped, {status['failed']} failed | "
            f"{e['integer']} ({e['checked']:g}) | {_differences(q, new, feeds, True)} | "
            f"{_differences(q, new, feeds, False)} | {fused[0]} → {fused[1]} | {dt:.1f} s | {why} |")


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and write ``onnx_qdq_lift.md`` into ``--out``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    rows = []
    for name, pattern, per_channel in CASES:
        for activation in ("int8", "uint8"):
            rows.append(sweep_one(name, pattern, per_channel, activation))
            print(rows[-1], flush=True)
    text = ("# Lifted QDQ patterns on the zoo's models (onnxruntime CPU, quantize_static QDQ)\n\n"
            + (__doc__ or "").split("\n\n", 1)[1] + "\n" + HEAD + "\n" + "\n".join(rows) + "\n")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "onnx_qdq_lift.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
