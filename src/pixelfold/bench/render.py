"""Targets, markdown tables, JSON and the chart of a run."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence


from .cases import GROUPS
from .model import Result
from .cases_limit import limit_targets
from .cases_sweep import sweep_targets
from .measure import paired_ratio


# ---------------------------------------------------------------------------- reporting
def targets(results: Sequence[Result]) -> list[dict[str, Any]]:
    """The performance targets, each as ``{target, block, ratio, limit, met}``.

    Rearrangements: pixelfold vs torch's op (NCHW, ≤ 1.05×) and dcr vs clone
    (channels_last, ≤ 1.5×); Focus → merged conv (channels_last, ≤ 1/1.3);
    ``tune()`` vs the original (≤ 1.03×); ResNet-50 rewrite without
    verification (< 100 ms).
    """
    by_case: dict[str, dict[tuple[str, str], Result]] = {}
    for r in results:
        if r.group == "rearrange" and r.status == "ok":
            by_case.setdefault(r.case, {})[(r.form, r.layout)] = r
    rows = []
    for case, forms in by_case.items():
        if not case.startswith("2-D"):
            continue
        what = "space_to_depth" if "space_to_depth" in case else "depth_to_space"
        block = case.split("b=")[1].split(",")[0]
        if case.endswith("NCHW"):
            torch_op = forms.get(("torch.pixel_unshuffle" if what == "space_to_depth" else "torch.pixel_shuffle",
                                  "NCHW"))
            ours = forms.get((f"pixelfold.{what} (crd)", "NCHW"))
            if torch_op and ours:
                ratio = paired_ratio(ours, torch_op)
                rows.append(dict(target=f"{what} NCHW (crd) vs torch.{torch_op.form.split('.')[-1]}", block=block,
                                 ratio=ratio, limit=1.05, met=bool(ratio <= 1.05)))
        elif case.endswith("channels_last"):
            clone = next((r for (f, lay), r in forms.items() if f.endswith("clone()") and lay == "channels_last"),
                         None)
            ours = forms.get((f"pixelfold.{what} (dcr)", "channels_last"))
            if clone and ours:
                ratio = paired_ratio(ours, clone)
                rows.append(dict(target=f"{what} channels_last (dcr) vs clone", block=block, ratio=ratio, limit=1.5,
                                 met=bool(ratio <= 1.5)))
    rows += limit_targets(list(results))
    rows += sweep_targets(list(results))
    rows += _model_targets(results)
    return rows


def _model_targets(results: Sequence[Result]) -> list[dict[str, Any]]:
    """Focus → merged conv ≥ 1.3× faster (channels_last); tune() ≤ 1.03× the original; rewrite < 100 ms."""
    rows = []
    ok = [r for r in results if r.status == "ok"]
    for r in ok:
        if r.group == "focus" and r.form.startswith("merge") and r.layout == "channels_last":
            rows.append(dict(target="Focus + conv → merged conv, channels_last (time ratio)", block="-",
                             ratio=r.ratio, limit=round(1 / 1.3, 3), met=bool(r.ratio <= 1 / 1.3)))
        elif r.group == "tune" and r.form.startswith(("tune()", "torch.compile(tune())")):
            rows.append(dict(target=f"{r.case.split(' ')[0]}: {r.form} vs original ({r.layout})", block="-",
                             ratio=r.ratio, limit=1.03, met=bool(r.ratio <= 1.03)))
        elif r.group == "rewrite" and "verify=False" in r.form:
            rows.append(dict(target="rewrite of ResNet-50, no verification", block="-",
                             ratio=r.time_ms, limit=100, met=bool(r.time_ms < 100), unit=" ms"))
    return rows


def _fmt(v: float, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.{digits}f}"


def _fmt_err(v: float) -> str:
    if v is None or math.isnan(v):
        return "–"
    return "0" if v == 0 else f"{v:.1e}"


def render_markdown(results: Sequence[Result], info: dict[str, Any]) -> str:
    """The tables, one per group, under a header stating the machine and settings."""
    dev = info.get("gpu") or info["cpu"]
    lines = [
        f"# pixelfold benchmarks — {info['device']} ({info['dtype']})" + (" — QUICK smoke run" if info.get("quick")
                                                                         else ""),
        "",
        f"- machine: {dev}; {info['cores']} cores; torch threads {info['threads']}; ATen CPU kernels "
        f"{info.get('cpu_capability')}",
        f"- torch {info['torch']}, Python {info['python']}, {info['platform']}; date {info['date']}",
        f"- malloc: MALLOC_MMAP_MAX_={info['malloc_env'].get('MALLOC_MMAP_MAX_')}, "
        f"MALLOC_TRIM_THRESHOLD_={info['malloc_env'].get('MALLOC_TRIM_THRESHOLD_')} ({info['malloc']})",
        f"- method: torch.utils.benchmark blocked_autorange (min_run_time {info['min_run_time_s']} s) per form, "
        f"{info['rounds']} interleaved rounds in one process; time = median of round medians, IQR over all timed "
        "runs, × = median of per-round ratios to the original in the same layout",
    ]
    if "gpu" in info:
        lines.append(f"- GPU: {info['gpu']}, CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')}, "
                     f"cudnn.benchmark={info.get('cudnn_benchmark')}")
    la, lb = info.get("load_before"), info.get("load_after")
    if la is not None:
        busy = " — another process may have been active; ratios (paired per round) are more reliable than times" \
            if max(la, lb or 0) > 0.5 else ""
        lines.append(f"- 1-min load average before/after: {la:.2f}/{(lb if lb is not None else math.nan):.2f}{busy}")
    lines.append(f"- wall time of the run: {info.get('elapsed_s')} s")
    lines.append("")
    rows = targets(results)
    if rows:
        lines += ["## Targets (issue 5)", "", "| target | block | measured | limit | met |", "|---|---|---|---|---|"]
        for t in rows:
            unit = t.get("unit", "×")
            lines.append(f"| {t['target']} | {t['block']} | {_fmt(t['ratio'])}{unit} | ≤ {t['limit']}{unit} | "
                         f"{'yes' if t['met'] else '**no**'} |")
        lines.append("")
    by_group = {g.key: g for g in GROUPS}
    seen: list[str] = []
    for r in results:
        if r.group not in seen:
            seen.append(r.group)
    for key in seen:
        g = by_group.get(key)
        rs = [r for r in results if r.group == key]
        lines += [f"## {g.title if g else key}", ""]
        if g:
            lines += [g.about, ""]
        multi = len({r.layout for r in rs}) > 1
        head = "| case | form | layout | time ms | IQR ms | × original |" + (" × first |" if multi else "") + \
            " max abs err | note |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        last_case = None
        for r in rs:
            case = r.case if r.case != last_case else ""
            last_case = r.case
            note = r.note if r.status == "ok" else f"**{r.status}**: {r.note}"
            row = f"| {case} | {r.form} | {r.layout} | {_fmt(r.time_ms)} | {_fmt(r.iqr_ms)} | {_fmt(r.ratio)} |"
            if multi:
                row += f" {_fmt(r.ratio_first)} |"
            row += f" {_fmt_err(r.max_err)} | {note.replace('|', '/')} |"
            lines.append(row)
        lines.append("")
        case_notes = dict.fromkeys((r.case, r.case_note) for r in rs if r.case_note)
        if case_notes:
            lines += [f"- *{case}*: {note}" for case, note in case_notes] + [""]
    for key, why in info.get("skipped", {}).items():
        if key not in seen:
            g = by_group.get(key)
            lines += [f"## {g.title if g else key}", "", f"Skipped: {why}", ""]
    return "\n".join(lines)


_RATIO_MEANING = {
    "rearrange": "time / clone of the same tensor",
    "limit": "time / clone of the same tensor",
    "transforms": "construction time / one batch-1 forward of the original",
    "rewrite": "rewrite time / one batch-1 forward of the original",
}


def _plot(results: Sequence[Result], info: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base_ids = {id(_first_of_layout(results, r)) for r in results}
    rows = [r for r in results if r.status == "ok" and not math.isnan(r.ratio) and id(r) not in base_ids]
    if not rows:
        return
    groups = list(dict.fromkeys(r.group for r in rows))
    titles = {g.key: g.title for g in GROUPS}
    counts = [sum(r.group == g for r in rows) for g in groups]
    height = 0.17 * len(rows) + 0.75 * len(groups) + 1.2
    fig, axes = plt.subplots(len(groups), 1, figsize=(12, height),
                             gridspec_kw={"height_ratios": [c + 1.5 for c in counts]}, squeeze=False)
    lo = min(r.ratio for r in rows)
    hi = max(r.ratio for r in rows)
    cmap = plt.get_cmap("tab10")
    layouts = sorted({r.layout for r in rows})
    colour = {lay: cmap(i % 10) for i, lay in enumerate(layouts)}
    for ax, g in zip(axes[:, 0], groups):
        rs = [r for r in rows if r.group == g]
        ys = list(range(len(rs)))[::-1]
        ax.barh(ys, [r.ratio for r in rs], color=[colour[r.layout] for r in rs], height=0.75)
        ax.set_yticks(ys)
        ax.set_yticklabels([_label(r) for r in rs], fontsize=6.5)
        ax.set_xscale("log")
        ax.set_xlim(min(lo, 0.5) / 1.3, max(hi, 2.0) * 1.5)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_ylim(-0.75, len(rs) - 0.25)
        meaning = _RATIO_MEANING.get(g, "time / original in the same layout")
        ax.set_title(f"{titles.get(g, g)} — {meaning}", fontsize=8, loc="left")
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
        for y, r in zip(ys, rs):
            ax.text(r.ratio, y, f" {r.ratio:.2f}", va="center", fontsize=6)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[lay]) for lay in layouts]
    axes[-1, 0].set_xlabel("ratio (log scale); < 1: the rewrite is faster", fontsize=8)
    dev = info.get("gpu") or info["cpu"]
    fig.suptitle(f"pixelfold bench — {dev}, {info['device']} {info['dtype']}, {info['threads']} threads, "
                 f"torch {info['torch']}, {info['date']}", fontsize=9, y=1 - 0.08 / height)
    fig.legend(handles, layouts, fontsize=7, loc="upper center", ncol=len(layouts), frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.3 / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _first_of_layout(results: Sequence[Result], r: Result) -> Result:
    """The baseline of ``r``'s ratio: the first ok form of its case in its layout."""
    for x in results:
        if x.case == r.case and x.layout == r.layout and x.status == "ok":
            return x
    return r


def _label(r: Result) -> str:
    case = r.case
    if ":" in case:
        case = case.split(":")[0]
    elif " at " in case:
        case = case.split(" at ")[0]
    case = case if len(case) <= 44 else case[:43] + "…"
    form = r.form if len(r.form) <= 46 else r.form[:45] + "…"
    return f"{case} · {form}"


def write_results(results: Sequence[Result], info: dict[str, Any], out: str | os.PathLike[str],
                  tag: str = "cpu") -> dict[str, Path]:
    """Write ``<tag>.md``, ``<tag>.json`` and ``<tag>.png`` under ``out``; returns their paths."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"md": d / f"{tag}.md", "json": d / f"{tag}.json", "png": d / f"{tag}.png"}
    paths["md"].write_text(render_markdown(results, info) + "\n")
    payload = {"meta": info, "targets": targets(results), "results": [asdict(r) for r in results]}
    paths["json"].write_text(json.dumps(payload, indent=1, default=float, allow_nan=True) + "\n")
    try:
        _plot(results, info, paths["png"])
    except ImportError:
        paths.pop("png")
    return paths
