"""The report of a rewrite: one :class:`LayerChange` per layer or pair, rendered as a table or JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .layerinfo import (
    STATUSES,
)

__all__ = ["LayerChange", "RewriteReport"]


# ---------------------------------------------------------------------------- the report
@dataclass
class LayerChange:
    """One line of a :class:`RewriteReport`: what happened to one layer (or adjacent pair)."""

    path: str
    type: str
    before: str
    after: str = ""
    transform: str = ""
    status: str = "kept"
    reason: str = ""
    max_error: float | None = None
    tolerance: float | None = None
    mac_ratio: float | None = None
    checked_on: str = ""
    time_before: float | None = None
    time_after: float | None = None
    note: str = ""


def _json_float(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class RewriteReport:
    """What :func:`rewrite` did: one :class:`LayerChange` per conv-like layer, and the end-to-end check.

    ``str(report)`` is a fixed-width table (changed, failed and skipped
    layers with reasons; kept layers are counted), ``to_json()`` the same as
    JSON.

    >>> import torch
    >>> from pixelfold import rewrite
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.Conv2d(8, 8, 3))
    >>> new, report = rewrite(net, "no_stride")
    >>> [(e.path, e.status, e.transform) for e in report.entries]
    [('0', 'changed', 'fold'), ('1', 'kept', '')]
    >>> len(report.changed), len(report.skipped), len(report.failed)
    (1, 0, 0)
    """

    rules: str = ""
    entries: list[LayerChange] = field(default_factory=list)
    end_to_end_error: float | None = None
    end_to_end_tolerance: float | None = None
    end_to_end_scale: float | None = None
    verified_on: str = ""
    elapsed_s: float = 0.0
    end_to_end_checked_on: str = ""

    def _with(self, status: str) -> list[LayerChange]:
        return [e for e in self.entries if e.status == status]

    @property
    def changed(self) -> list[LayerChange]:
        """Layers that were rewritten and passed verification."""
        return self._with("changed")

    @property
    def failed(self) -> list[LayerChange]:
        """Layers whose rewrite did not verify (or raised): left as they were."""
        return self._with("failed")

    @property
    def skipped(self) -> list[LayerChange]:
        """Layers the rules wanted to change but that cannot be rewritten exactly (reason given)."""
        return self._with("skipped")

    @property
    def kept(self) -> list[LayerChange]:
        """Conv-like layers no rule selected."""
        return self._with("kept")

    @property
    def ok(self) -> bool:
        """True when nothing failed and the end-to-end check (if any) passed."""
        if self.failed:
            return False
        if self.end_to_end_error is None or self.end_to_end_tolerance is None:
            return True
        return self.end_to_end_error <= self.end_to_end_tolerance

    def summary(self) -> str:
        """One line: counts and the end-to-end error."""
        head = (f"pixelfold rewrite [{self.rules}]: {len(self.changed)} changed, {len(self.failed)} failed, "
                f"{len(self.skipped)} skipped, {len(self.kept)} kept")
        if self.end_to_end_error is None:
            why = "verify=False" if self.verified_on.startswith("nothing") else "no example_inputs"
            e2e = f"end to end: not checked ({why})"
        elif not self.changed:
            e2e = "end to end: model unchanged"
        else:
            on = f" on {self.end_to_end_checked_on}" if self.end_to_end_checked_on else ""
            e2e = (f"end to end{on}: max |Δ| {self.end_to_end_error:.3g} (tolerance {self.end_to_end_tolerance:.3g}, "
                   f"max |output| {self.end_to_end_scale:.3g})")
        return f"{head}; layers checked on {self.verified_on or '-'}; {e2e}; {self.elapsed_s * 1e3:.0f} ms"

    def __str__(self) -> str:
        rows = [e for e in self.entries if e.status != "kept"]
        lines = [self.summary()]
        if rows:
            cols = [
                ("status", lambda e: e.status, 7),
                ("path", lambda e: e.path, 34),
                ("type", lambda e: e.type, 24),
                ("transform", lambda e: e.transform, 16),
                ("before", lambda e: e.before, 44),
                ("after", lambda e: e.after, 52),
                ("MACs", lambda e: "" if e.mac_ratio is None else f"×{e.mac_ratio:.2f}", 6),
                ("max err", lambda e: "" if e.max_error is None else f"{e.max_error:.1e}", 8),
            ]
            widths = [min(cap, max(len(h), *(len(get(e)) for e in rows))) for h, get, cap in cols]
            fmt_row = lambda cells: "  ".join(_cut(c, w).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
            lines.append(fmt_row([h for h, _, _ in cols]))
            lines.append(fmt_row(["-" * w for w in widths]))
            for e in rows:
                lines.append(fmt_row([get(e) for _, get, _ in cols]))
        noted = [e for e in rows if e.note]
        if noted:
            lines.append("")
            lines.append("notes:")
            for e in noted:
                lines.append(f"  {e.status:<7}  {e.path}: {e.note}")
        unchanged = [e for e in rows if e.status in ("failed", "skipped")]
        if unchanged:
            lines.append("")
            lines.append("wanted by the rules but not changed:")
            for e in unchanged:
                lines.append(f"  {e.status:<7}  {e.path}: {e.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (what :meth:`to_json` writes)."""
        return {
            "rules": self.rules,
            "counts": {s: len(self._with(s)) for s in STATUSES},
            "end_to_end_error": _json_float(self.end_to_end_error),
            "end_to_end_tolerance": _json_float(self.end_to_end_tolerance),
            "end_to_end_scale": _json_float(self.end_to_end_scale),
            "verified_on": self.verified_on,
            "end_to_end_checked_on": self.end_to_end_checked_on,
            "elapsed_s": self.elapsed_s,
            "entries": [{k: _json_float(v) for k, v in asdict(e).items()} for e in self.entries],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as a JSON string (non-finite errors written as strings).

        >>> import json, torch
        >>> from pixelfold import rewrite
        >>> _, report = rewrite(torch.nn.Conv1d(2, 2, 4, stride=2), "no_stride")
        >>> json.loads(report.to_json())["counts"]
        {'changed': 1, 'failed': 0, 'skipped': 0, 'kept': 0}
        """
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)
