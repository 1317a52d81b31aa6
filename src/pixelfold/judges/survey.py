"""The NPU survey: every zoo model and every exact form, judged by the vendor compilers (``make npu-survey``).

``python -m pixelfold.judges.survey --out benchmarks/results`` writes
``npu_forms.json`` (every judgement) and ``npu_forms.md`` (the tables), and
``SUPPORTED_OPS_vela.md`` (``vela --supported-ops-report``). ``--part zoo``,
``--part layers`` or ``--part rearrange`` runs one part (results of the other
parts already in the JSON are kept); ``--targets`` restricts the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .core import DEFAULT_LOWERING, TARGETS, env_python, judge_batch
from .results import Judgement

__all__ = ["layer_cases", "rearrange_cases", "zoo_cases", "run", "render_markdown", "main"]

Case = tuple[str, Callable[[], nn.Module], tuple[int, ...], dict[str, Any]]


def _seeded(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return fn().eval()

    return build


def layer_cases() -> list[Case]:
    """Single layers and their exact pixelfold forms: (name, build, input shape, info)."""
    import pixelfold
    from ..zoo import Focus

    cases: list[Case] = []

    def add(group: str, form: str, fn: Callable[[], nn.Module], shape: tuple[int, ...]) -> None:
        cases.append((f"{group} | {form}", _seeded(fn), shape, {"group": group, "form": form}))

    deconvs = [("ConvTranspose2d 16→16 k4 s4", dict(kernel_size=4, stride=4)),
               ("ConvTranspose2d 16→16 k3 s3", dict(kernel_size=3, stride=3)),
               ("ConvTranspose2d 16→16 k4 s2 p1", dict(kernel_size=4, stride=2, padding=1)),
               ("ConvTranspose2d 16→16 k2 s2", dict(kernel_size=2, stride=2))]
    for group, kw in deconvs:
        mk = lambda kw=kw: nn.ConvTranspose2d(16, 16, **kw)  # noqa: E731
        add(group, "original", mk, (1, 16, 16, 16))
        for order in ("crd", "dcr"):
            add(group, f"subpixel shared {order}", lambda mk=mk, o=order: pixelfold.subpixel(mk(), "shared", o),
                (1, 16, 16, 16))
        add(group, "subpixel phases", lambda mk=mk: pixelfold.subpixel(mk(), "phases"), (1, 16, 16, 16))
    add("DCGAN ConvTranspose2d 32→64 k4 s1 p0 (1×1 in)", "original",
        lambda: nn.ConvTranspose2d(32, 64, 4, 1, 0, bias=False), (1, 32, 1, 1))
    convs = [("Conv2d 16→16 k7 s4 p3", 16, 16, dict(kernel_size=7, stride=4, padding=3), 4, (1, 16, 64, 64)),
             ("Conv2d 3→32 k8 s8", 3, 32, dict(kernel_size=8, stride=8), 8, (1, 3, 64, 64)),
             ("Conv2d 16→32 k3 s2 p1", 16, 32, dict(kernel_size=3, stride=2, padding=1), 2, (1, 16, 32, 32))]
    for group, c_in, c_out, kw, block, shape in convs:
        mk = lambda c_in=c_in, c_out=c_out, kw=kw: nn.Conv2d(c_in, c_out, **kw)  # noqa: E731
        add(group, "original", mk, shape)
        for order in ("crd", "dcr"):
            add(group, f"fold({block}) {order}", lambda mk=mk, b=block, o=order: pixelfold.fold(mk(), b, o), shape)
    add("Focus(3→32, k3) + BN + SiLU", "original (slice + cat)", lambda: Focus(3, 32, 3), (1, 3, 64, 64))
    add("Focus(3→32, k3) + BN + SiLU", "merge (one Conv 6×6/2)", lambda: pixelfold.merge(Focus(3, 32, 3)), (1, 3, 64, 64))
    return cases


class _Rearrange(nn.Module):
    """1×1 conv → rearrangement → 1×1 conv (a rearrangement between two NPU ops, as in a real graph)."""

    def __init__(self, kind: str, block: int, order: str, c: int = 8) -> None:
        super().__init__()
        r = block * block
        self.kind, self.block, self.order = kind, block, order
        self.pre = nn.Conv2d(c, c if kind == "s2d" else c * r, 1)
        self.post = nn.Conv2d(c * r if kind == "s2d" else c, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import pixelfold

        y = self.pre(x)
        y = (pixelfold.space_to_depth if self.kind == "s2d" else pixelfold.depth_to_space)(y, self.block, self.order)
        return self.post(y)


def rearrange_cases() -> list[Case]:
    """conv → space_to_depth / depth_to_space (block 2/3/4, crd/dcr, focus for s2d 2) → conv, 8 channels."""
    cases: list[Case] = []
    for kind in ("s2d", "d2s"):
        for block in (2, 3, 4):
            orders = ("crd", "dcr", "focus") if (kind, block) == ("s2d", 2) else ("crd", "dcr")
            for order in orders:
                side = 48 if kind == "s2d" else 48 // block
                name = f"{'space_to_depth' if kind == 's2d' else 'depth_to_space'} b{block} {order}"
                cases.append((name, _seeded(lambda k=kind, b=block, o=order: _Rearrange(k, b, o)), (1, 8, side, side),
                              {"group": name, "kind": kind, "block": block, "order": order}))
    return cases


def large_cases() -> list[Case]:
    """Rearrangements at a real size (64 channels, 256² ↔ 128²), where U55's transpose limits bite."""
    cases: list[Case] = []
    for kind, order in (("s2d", "crd"), ("s2d", "dcr"), ("d2s", "crd"), ("d2s", "dcr")):
        side = 256 if kind == "s2d" else 128
        name = f"{'space_to_depth' if kind == 's2d' else 'depth_to_space'} b2 {order}, 64 ch, {side}²"
        cases.append((name, _seeded(lambda k=kind, o=order: _Rearrange(k, 2, o, c=64)), (1, 64, side, side),
                      {"group": name, "kind": kind, "block": 2, "order": order}))
    return cases


def zoo_cases() -> list[Case]:
    from ..zoo import ZOO

    return [(f"zoo {name}", z.build, z.input_shape, {"group": name, "description": z.description})
            for name, z in ZOO.items()]


def _inputs(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def _record(name: str, info: dict[str, Any], lowering: str, j: Judgement) -> dict[str, Any]:
    return _compact({"case": name, **info, "lowering": lowering, "target": j.target, "judgement": j.to_dict()})


def _compact(record: dict[str, Any]) -> dict[str, Any]:
    """Keep the committed JSON small: no per-op input shapes, no raw per-layer rows, no local paths."""
    j = record["judgement"]
    for op in j.get("ops", []):
        op.get("detail", {}).pop("inputs", None)
    j.get("extra", {}).pop("layers", None)
    j.get("extra", {}).pop("raw", None)
    j["artifacts"] = {}
    check = j.get("extra", {}).get("tflite_check")
    if check:
        check.pop("path", None)
    return record


def run(part: str, targets: list[str], lowerings: list[str], workdir: Path | None = None,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Judge one part's cases for ``targets`` under each lowering; returns flat records."""
    cases = {"zoo": zoo_cases, "layers": layer_cases, "rearrange": rearrange_cases, "large": large_cases}[part]()
    records: list[dict[str, Any]] = []
    for low in lowerings:
        t0 = time.time()
        built = [(name, build(), _inputs(shape)) for name, build, shape, _ in cases]
        got = judge_batch(built, targets, lowering=low, workdir=workdir)
        infos = {name: info for name, _, _, info in cases}
        for name, by_target in got.items():
            for j in by_target.values():
                records.append(_record(name, {**infos[name], "part": part}, low, j))
        log(f"{part} / lowering {low}: {len(cases)} cases × {len(targets)} targets in {time.time() - t0:.0f} s")
    return records


def supported_ops_report(out: Path) -> Path | None:
    """``vela --supported-ops-report`` (writes SUPPORTED_OPS.md into the cwd) → ``out/SUPPORTED_OPS_vela.md``."""
    python = env_python("vela")
    vela = python.with_name("vela")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(vela), "--supported-ops-report"], cwd=tmp, capture_output=True, text=True, check=True)
        src = Path(tmp) / "SUPPORTED_OPS.md"
        if not src.exists():
            return None
        dst = out / "SUPPORTED_OPS_vela.md"
        dst.write_text(src.read_text())
        return dst


# ---------------------------------------------------------------------------- markdown
def _cell(j: dict[str, Any]) -> str:
    if j["crashed"]:
        return "**crash**"
    ops = [o for o in j["ops"] if not o["detail"].get("io")]
    cpu = [o["op"] for o in ops if not o["on_npu"]]
    cyc = j.get("npu_cycles")
    cyc_s = "" if cyc is None else f" {cyc / 1000:.1f}k"
    if not cpu:
        return f"NPU{cyc_s}"
    return f"CPU: {', '.join(sorted(set(cpu)))}{cyc_s}"


def render_markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    targets = [t for t in TARGETS if any(r["target"] == t for r in records)]
    lines = [
        "# NPU placement of pixelfold's forms — measured with the vendor compilers",
        "",
        f"Generated by `python -m pixelfold.judges.survey` ({meta.get('date', '')}; Vela {meta.get('vela', '?')}, "
        f"rknn-toolkit2 {meta.get('rknn', '?')}; int8, calibrated on 8 seeded normal samples). "
        "Each cell: `NPU` (every op on the NPU) or `CPU: <ops left for the CPU>`, then the compiler's NPU cycle "
        "estimate in thousands (Vela: `cycles_npu` of the summary CSV, default system config of each accelerator; "
        "RKNN: the sum of the layer table's NPU cycles — CPU ops have none). `crash`: the compiler (or the "
        "conversion before it) failed; its message is below. Full per-op data in `npu_forms.json`.",
        "",
        "Lowering = how pixelfold's rearrangements were written during export (`pixelfold.judges.lowering`): "
        "`reshape6` pixelfold's default (rank-6 transpose), `rank4` NHWC-formulated rank ≤ 4, `rank4_nchw` "
        "NCHW-formulated rank ≤ 4, `native` the exporter's own op (ONNX SpaceToDepth/DepthToSpace; TFLite via "
        "pixel_shuffle for crd). `auto` = the per-target default: " + ", ".join(f"{t}: {s}" for t, s in DEFAULT_LOWERING.items()) + ".",
        "",
    ]
    for part, title in (("zoo", "Zoo models as they are"), ("layers", "Single layers: original vs pixelfold's exact forms"),
                        ("rearrange", "Rearrangements alone (1×1 conv → rearrangement → 1×1 conv, 8 ch)"),
                        ("large", "Rearrangements at a real size (1×1 conv → rearrangement → 1×1 conv, 64 ch)")):
        rows = [r for r in records if r.get("part") == part]
        if not rows:
            continue
        lines += [f"## {title}", ""]
        lines.append("| case | lowering | " + " | ".join(targets) + " |")
        lines.append("|---|---|" + "---|" * len(targets))
        keys: list[tuple[str, str]] = []
        for r in rows:
            k = (r["case"], r["lowering"])
            if k not in keys:
                keys.append(k)
        first = {}
        for case, _ in keys:
            first.setdefault(case, len(first))
        style_rank = {s: i for i, s in enumerate(("auto", "reshape6", "rank4", "rank4_nchw", "native"))}
        keys.sort(key=lambda k: (first[k[0]], style_rank.get(k[1], 9)))
        for case, low in keys:
            cells = []
            for t in targets:
                hit = [r for r in rows if r["case"] == case and r["lowering"] == low and r["target"] == t]
                cells.append(_cell(hit[0]["judgement"]) if hit else "–")
            label = case.removeprefix("zoo ").replace(" | ", " → ")
            lines.append(f"| {label} | {low} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## What the compilers said (verbatim, deduplicated)", ""]
    said: dict[tuple[str, str, str], list[str]] = {}
    for r in records:
        j = r["judgement"]
        comp = j["compiler"]
        if j["crashed"]:
            said.setdefault((comp, "crash", j["message"].splitlines()[0][:400] if j["message"] else ""), []).append(
                f"{r['case']} [{r['lowering']}] @ {r['target']}")
            continue
        for o in j["ops"]:
            if not o["on_npu"] and not o["detail"].get("io"):
                reason = (o.get("reason") or "(no reason given)")
                constraint = o["detail"].get("constraint")
                text = f"{o['op']}: {reason}" + (f" — {constraint}" if constraint else "")
                said.setdefault((comp, "cpu", text), []).append(f"{r['case']} [{r['lowering']}] @ {r['target']}")
    for (comp, kind, text), where in sorted(said.items()):
        uniq = sorted(set(where))
        more = f" … (+{len(uniq) - 6} more)" if len(uniq) > 6 else ""
        lines.append(f"- **{comp} {kind}** `{text}` — {'; '.join(uniq[:6])}{more}")
    lines.append("")
    return "\n".join(lines)


_BEGIN, _END = "<!-- findings: written by hand, kept by the survey -->", "<!-- /findings -->"


def _keep_findings(old: str, new: str) -> str:
    """Carry the hand-written findings block of the previous ``npu_forms.md`` into the regenerated one."""
    if _BEGIN in old and _END in old:
        block = old[old.index(_BEGIN):old.index(_END) + len(_END)]
        head, _, rest = new.partition("\n\n")
        return f"{head}\n\n{block}\n\n{rest}"
    return new


def _versions() -> dict[str, str]:
    out = {"date": time.strftime("%Y-%m-%d"), "host": platform.machine()}
    for comp, mod in (("vela", "ethosu.vela"), ("rknn", "rknn-toolkit2")):
        try:
            py = env_python(comp)
        except Exception:
            continue
        code = ("import ethosu.vela as v; print(v.__version__)" if comp == "vela" else
                "from importlib.metadata import version; print(version('rknn-toolkit2'))")
        res = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
        out[comp] = res.stdout.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pixelfold.judges.survey", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--part", choices=["zoo", "layers", "rearrange", "large", "all"], default="all")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--lowerings", default=None, help="comma list; default: auto (zoo, layers), all styles (rearrange)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--merge", nargs="*", default=None,
                   help="merge the npu_forms.json of these directories (runs split across processes) and re-render")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = [t for t in args.targets.split(",") if t]
    json_path = out / "npu_forms.json"
    data = json.loads(json_path.read_text()) if json_path.exists() else {"meta": {}, "records": []}
    parts = ["zoo", "layers", "rearrange", "large"] if args.part == "all" else [args.part]
    if args.merge is not None:
        for d in args.merge:
            other = json.loads((Path(d) / "npu_forms.json").read_text())
            keys = {(r["case"], r["lowering"], r["target"]) for r in other["records"]}
            data["records"] = [r for r in data["records"] if (r["case"], r["lowering"], r["target"]) not in keys]
            data["records"] += [_compact(r) for r in other["records"]]
            data["meta"] = {**other.get("meta", {}), **data.get("meta", {})}
        order = {"zoo": 0, "layers": 1, "rearrange": 2, "large": 3}
        data["records"].sort(key=lambda r: order.get(r.get("part", ""), 9))  # stable: case order kept inside a part
        data["records"] = [_compact(r) for r in data["records"]]
        json_path.write_text(json.dumps(data, separators=(",", ":")))
        md_path = out / "npu_forms.md"
        old = md_path.read_text() if md_path.exists() else ""
        md_path.write_text(_keep_findings(old, render_markdown(data["records"], data["meta"])))
        return 0
    for part in parts:
        lows = (args.lowerings.split(",") if args.lowerings else
                (["reshape6", "rank4", "rank4_nchw", "native"] if part in ("rearrange", "large") else ["auto"]))
        recs = run(part, targets, lows, Path(args.workdir) / part if args.workdir else None)
        done = {(r["case"], r["lowering"], r["target"]) for r in recs}
        data["records"] = [r for r in data["records"] if (r["case"], r["lowering"], r["target"]) not in done] + recs
        data["meta"] = {**data.get("meta", {}), **_versions()}
        json_path.write_text(json.dumps(data, separators=(",", ":")))
        md_path = out / "npu_forms.md"
        old = md_path.read_text() if md_path.exists() else ""
        md_path.write_text(_keep_findings(old, render_markdown(data["records"], data["meta"])))
    try:
        supported_ops_report(out)
    except Exception as err:  # the report is a by-product; say so and go on
        print(f"vela --supported-ops-report failed: {err}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
