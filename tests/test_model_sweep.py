"""Sweep of real timm/torchvision architectures through `pixelfold.rewrite` (slow: `make sweep`).

Every model is rewritten under the ``no_stride`` and ``no_transposed`` profiles (and ``Rule("merge")``
where it has a space-to-depth stem) with verification on a real input; the test asserts that nothing
failed, that no strided / transposed layer is left without a reason in the report — plain convs,
conv subclasses and the layers that hide a conv in ``forward`` (:mod:`pixelfold.hidden`) alike —,
that every reason left is one of the documented, acceptable ones (:data:`ACCEPTED`), and that the
rewritten model matches the original end to end in float64. The results go to
``benchmarks/results/model_sweep.md`` when the whole sweep runs (``model_sweep.partial.md`` when only
some models were selected).
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from pixelfold import hidden as H
from pixelfold import verify as V
from pixelfold.rewrite import RewriteReport, Rule, rewrite
from pixelfold.spec import ConvSpec

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


@dataclass
class Case:
    label: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    stride_profile: str = "no_stride"
    note: str = ""
    merge: bool = False  # also Rule("merge"): a space-to-depth stem + conv → one conv


def timm_model(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False, **kwargs)

    return build


def tv_model(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        pytest.importorskip("torchvision")
        import importlib

        package, _, attr = ("torchvision.models." + name).rpartition(".")
        return getattr(importlib.import_module(package), attr)(weights=None, **kwargs)

    return build


def tv_keypoint_head() -> nn.Module:
    det = pytest.importorskip("torchvision.models.detection.keypoint_rcnn")
    return det.KeypointRCNNPredictor(512, 17)  # ConvTranspose2d(512, 17, 4, s2, p1) + bilinear upsampling


def tv_mask_head() -> nn.Module:
    det = pytest.importorskip("torchvision.models.detection.mask_rcnn")
    return det.MaskRCNNPredictor(256, 256, 91)  # ConvTranspose2d(256, 256, 2, s2) + ReLU + 1×1 conv


def img(size: int | tuple[int, int], batch: int = 1) -> tuple[int, ...]:
    h, w = (size, size) if isinstance(size, int) else size
    return (batch, 3, h, w)


CASES = [
    Case("tv resnet18", tv_model("resnet18"), img(64)),
    Case("tv mobilenet_v3_small", tv_model("mobilenet_v3_small"), img(64)),
    Case("tv fcn_resnet50", tv_model("segmentation.fcn_resnet50", weights_backbone=None, aux_loss=True), img(64),
         note="dilated backbone, dict output"),
    Case("tv deeplabv3_mobilenet_v3_large",
         tv_model("segmentation.deeplabv3_mobilenet_v3_large", weights_backbone=None),
         img(65), note="dict output"),
    Case("tv KeypointRCNNPredictor", tv_keypoint_head, (2, 512, 14, 14), note="ConvTranspose2d k4 s2 p1"),
    Case("tv MaskRCNNPredictor", tv_mask_head, (2, 256, 14, 14), note="ConvTranspose2d k2 s2"),
    Case("resnet50", timm_model("resnet50"), img(96)),
    Case("resnet50d", timm_model("resnet50d"), img(96), note="deep stem, avg-pool shortcut"),
    Case("regnety_002", timm_model("regnety_002"), img(64)),
    Case("efficientnet_b0", timm_model("efficientnet_b0"), img(97), note="odd input"),
    Case("tf_efficientnet_b0", timm_model("tf_efficientnet_b0"), img(97),
         note="Conv2dSame: skipped without the same_pad add-on"),
    Case("tf_efficientnet_b0 +same_pad", timm_model("tf_efficientnet_b0"), img(97),
         stride_profile="no_stride+same_pad", note="Conv2dSame folded with per-input padding"),
    Case("mobilenetv3_large_100", timm_model("mobilenetv3_large_100"), img(64)),
    Case("mixnet_s", timm_model("mixnet_s"), img(64), note="MixedConv2d (ModuleDict of convs)"),
    Case("ghostnet_100", timm_model("ghostnet_100"), img(64)),
    Case("convnext_atto", timm_model("convnext_atto"), img(64), note="patchify 4×4/4 stem"),
    Case("vit_tiny_patch16_224", timm_model("vit_tiny_patch16_224"), img(224), note="patchify 16×16/16"),
    Case("swin_tiny_patch4_window7_224", timm_model("swin_tiny_patch4_window7_224"), img(224)),
    Case("repvgg_a0", timm_model("repvgg_a0"), img(64)),
    Case("cspdarknet53", timm_model("cspdarknet53"), img(64)),
    Case("hrnet_w18_small", timm_model("hrnet_w18_small"), img(64)),
    Case("densenet121", timm_model("densenet121"), img(64)),
    Case("dla34", timm_model("dla34"), img(64)),
    Case("res2net50_26w_4s", timm_model("res2net50_26w_4s"), img(64)),
    Case("resnetv2_50x1_bit", timm_model("resnetv2_50x1_bit"), img(64), note="StdConv2d: folded exactly"),
    Case("nfnet_l0", timm_model("nfnet_l0"), img(64), note="ScaledStdConv2d (grouped): folded exactly"),
    Case("nf_regnet_b0", timm_model("nf_regnet_b0"), img(64), note="ScaledStdConv2d: folded exactly"),
    Case("dm_nfnet_f0 +same_pad", timm_model("dm_nfnet_f0"), img(64), stride_profile="no_stride+same_pad",
         note="ScaledStdConv2dSame (dynamic TF-'same'): folded exactly with per-input padding"),
    Case("vit_tiny_r_s16_p8_224", timm_model("vit_tiny_r_s16_p8_224", img_size=64), img(64),
         note="StdConv2dSame stem (dynamic TF-'same'): skipped without the same_pad add-on"),
    Case("vit_tiny_r_s16_p8_224 +same_pad", timm_model("vit_tiny_r_s16_p8_224", img_size=64), img(64),
         stride_profile="no_stride+same_pad", note="StdConv2dSame stem folded with per-input padding"),
    Case("tresnet_m", timm_model("tresnet_m"), img(64), merge=True,
         note="BlurPool2d: folded exactly; SpaceToDepth stem + conv merged (Rule('merge'))"),
    Case("resnetblur18", timm_model("resnetblur18"), img(64), note="BlurPool2d: folded exactly"),
    Case("inception_v3", timm_model("inception_v3"), img(299), note="odd sizes reach strided layers"),
    Case("xception41", timm_model("xception41"), img(107), note="odd input"),
]


@dataclass
class Row:
    label: str
    shape: tuple[int, ...]
    convs: int
    stride_profile: str
    note: str
    results: dict[str, RewriteReport] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)
    e2e64: dict[str, float] = field(default_factory=dict)
    merge: bool = False


ROWS: dict[str, Row] = {}
LOAD = os.getloadavg()


# Every skip the sweep may leave, and why a user would accept it (a new kind of skip fails the sweep until
# it is understood and listed here). Matched against the start and the end of the skip reason.
ACCEPTED = {
    "add 'same_pad' to the profile (e.g. 'no_stride+same_pad') to fold it with per-input padding": (
        "opt-in by design: the layer pads TF-'same' with an amount that depends on the input size, so its exact "
        "form pads per input (timm's own arithmetic); one word in the profile, `no_stride+same_pad`, folds every "
        "such layer (the table's `+same_pad` rows: 0 skipped)"),
}


def conv_spec(m: nn.Module) -> ConvSpec | None:
    """The conv a module computes: plain and subclassed nn.ConvNd, and the layers pixelfold.hidden knows."""
    if isinstance(m, nn.modules.conv._ConvNd):
        try:
            return ConvSpec.from_module(m)
        except Exception:
            return None
    return H.spec_of(m)


def conv_count(model: nn.Module) -> int:
    return sum(conv_spec(m) is not None for m in model.modules())


def unexplained(new: nn.Module, report: RewriteReport, transposed: bool) -> list[str]:
    """Layers left in ``new`` that the profile wanted gone (strided convs / transposed convs) without a reason."""
    explained = {p for e in report.skipped + report.failed for p in e.path.split("+")}
    left = []
    for n, m in new.named_modules():
        spec = conv_spec(m)
        if spec is None or n in explained:
            continue
        if (spec.transposed if transposed else (not spec.transposed and any(s > 1 for s in spec.stride))):
            left.append(n)
    return left


def why_accepted(reason: str) -> str | None:
    for key, why in ACCEPTED.items():
        if reason.endswith(key):
            return why
    return None


def fmt_err(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    return f"{v:.1e}" if math.isfinite(v) else str(v)


def write_table(rows: list[Row], complete: bool) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("model_sweep.md" if complete else "model_sweep.partial.md")
    lines = [
        "# pixelfold model sweep: whole-model rewrites, verified",
        "",
        "`make sweep` (tests/test_model_sweep.py). Random-init models (`pretrained=False`), eval mode, one input "
        "of the shape shown. Every rewrite is verified by `pixelfold.rewrite` itself (each changed layer in float64 "
        "on the inputs it receives, then the whole model in float32); *e2e fp64* is the max abs error of the "
        "rewritten model against the original, both in float64, and *scale* is max |output|. *convs* counts every "
        "conv-like layer, including those that hide a conv in `forward` (timm `StdConv2d`, `ScaledStdConv2d`, "
        "`BlurPool2d`, `Conv2dSame`, ...: `pixelfold.hidden`), which are folded exactly like plain convs. "
        "*skipped* layers are strided layers the profile wanted but could not rewrite exactly; each one is listed "
        "at the end with its reason and why a user would accept it. *merge*: `Rule('merge')` on models with a "
        "space-to-depth stem. *ms*: wall time of `rewrite(...)` including all verification, "
        f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s), 1-minute load "
        f"average {LOAD[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at the end of the sweep (other jobs on "
        "the machine slow the times down; compare them within one run only).",
        "",
        "| model | input | convs | no_stride: changed / skipped / failed | max layer err (fp64) | e2e fp32 | "
        "e2e fp64 | scale | e2e fp64 / max(1, scale) | no_stride ms | no_transposed: changed / skipped | e2e fp64 | "
        "no_transposed ms | merge: changed (e2e fp64) | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        s, t = r.results[r.stride_profile], r.results["no_transposed"]
        merged = (f"{len(r.results['merge'].changed)} ({fmt_err(r.e2e64.get('merge'))})" if r.merge else "–")
        layer_err = max((e.max_error or 0.0 for e in s.changed), default=None)
        note = r.note + (f" (profile `{r.stride_profile}`)" if r.stride_profile != "no_stride" else "")
        e64 = r.e2e64.get(r.stride_profile)
        scale = s.end_to_end_scale if s.changed else None
        rel = None if e64 is None or scale is None else e64 / max(1.0, scale)
        lines.append(
            f"| {r.label} | {'×'.join(map(str, r.shape))} | {r.convs} | {len(s.changed)} / {len(s.skipped)} / "
            f"{len(s.failed)} | {fmt_err(layer_err)} | {fmt_err(s.end_to_end_error if s.changed else None)} | "
            f"{fmt_err(e64)} | {fmt_err(scale)} | {fmt_err(rel)} | {r.ms[r.stride_profile]:.0f} | "
            f"{len(t.changed)} / {len(t.skipped)} | {fmt_err(r.e2e64.get('no_transposed'))} | "
            f"{r.ms['no_transposed']:.0f} | {merged} | {note} |"
        )
    lines += ["", f"{len(rows)} models; {sum(len(r.results[r.stride_profile].changed) for r in rows)} layers changed "
              f"under no_stride, {sum(len(r.results['no_transposed'].changed) for r in rows)} under no_transposed, "
              f"{sum(len(r.results['merge'].changed) for r in rows if r.merge)} by merge, 0 failed.", ""]
    skips = [(r.label, profile, e) for r in rows for profile, rep in r.results.items() for e in rep.skipped]
    lines += ["## Skips left, and why a user would accept each", ""]
    if not skips:
        lines += ["None.", ""]
    else:
        lines += ["| model | profile | layer | type | reason | why acceptable |", "|---|---|---|---|---|---|"]
        for label, profile, e in skips:
            lines.append(f"| {label} | {profile} | `{e.path}` | {e.type} | {e.reason} | {why_accepted(e.reason)} |")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module", autouse=True)
def table() -> object:
    yield
    rows = [ROWS[c.label] for c in CASES if c.label in ROWS]
    if rows:
        write_table(rows, complete=len(rows) == len(CASES))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.label.replace(" ", "_") for c in CASES])
def test_sweep(case: Case) -> None:
    torch.manual_seed(0)
    model = case.build().eval()
    x = torch.randn(*case.shape)
    row = Row(case.label, case.shape, conv_count(model), case.stride_profile, case.note, merge=case.merge)
    runs: list[tuple[str, object, bool | None]] = [(case.stride_profile, case.stride_profile, False),
                                                   ("no_transposed", "no_transposed", True)]
    if case.merge:
        runs.append(("merge", [Rule("merge")], None))
    for profile, rules, transposed in runs:
        t0 = time.perf_counter()
        new, report = rewrite(model, rules, example_inputs=x)
        row.ms[profile] = (time.perf_counter() - t0) * 1e3
        row.results[profile] = report
        assert not report.failed, str(report)
        assert report.ok, str(report)
        if transposed is not None:
            left = unexplained(new, report, transposed)
            assert not left, f"{profile}: layers left without a reason: {left}"
        else:
            assert report.changed, str(report)
        for e in report.skipped:
            assert why_accepted(e.reason), f"{profile}: a skip nobody has accepted yet: {e.path}: {e.reason}"
        if report.changed:
            err = V.compare_modules(model, new, x, dtype=torch.float64)
            row.e2e64[profile] = err
            scale = report.end_to_end_scale if report.end_to_end_scale and math.isfinite(report.end_to_end_scale) else 1
            assert err <= 1e-8 * max(1.0, scale), (profile, err, scale)
    ROWS[case.label] = row


def test_sweep_covers_enough_families() -> None:
    assert len(CASES) >= 20
    assert any("same_pad" in c.stride_profile for c in CASES)
    names = " ".join(c.label for c in CASES)
    for model in ("resnetv2_50x1_bit", "nfnet_l0", "tresnet_m", "tf_efficientnet_b0"):  # the hidden layers
        assert model in names
