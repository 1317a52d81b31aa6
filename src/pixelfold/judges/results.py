"""What a judge says about a compiled model: per-operator placement and cycle estimates (JSON round-trip).

>>> j = Judgement("ethos-u55-128", "vela", "5.2.0",
...               [OpPlacement(0, "ethos-u", True, None, 1200), OpPlacement(1, "SPACE_TO_DEPTH", False,
...                "Unsupported opType", None)], npu_cycles=1200, total_cycles=1300)
>>> j.cpu_ops
['SPACE_TO_DEPTH']
>>> Judgement.from_json(j.to_json()) == j
True
>>> j.all_on_npu
False
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OpPlacement", "Judgement"]


@dataclass
class OpPlacement:
    """One operator of the compiled graph and where the compiler put it.

    ``index`` is the operator's position in the compiler's own listing, ``op``
    its type in the compiler's vocabulary (TFLite builtin names for Vela, e.g.
    ``"CONV_2D"``; RKNN's op types, e.g. ``"ConvTranspose"``), ``reason`` the
    compiler's words for a CPU fallback (``None`` on the NPU or when it gave
    none), ``cycles`` its estimate for this op when it reports one per op, and
    ``detail`` anything else it said (shapes, data type, MACs, ...);
    ``detail["io"]`` marks the graph's input/output placeholders (RKNN lists
    them as CPU ops), which :attr:`Judgement.cpu_ops` leaves out.
    """

    index: int
    op: str
    on_npu: bool
    reason: str | None = None
    cycles: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OpPlacement":
        return cls(int(d["index"]), str(d["op"]), bool(d["on_npu"]), d.get("reason"), d.get("cycles"),
                   dict(d.get("detail") or {}))


@dataclass
class Judgement:
    """A vendor compiler's verdict on one model for one target.

    ``ops`` lists every operator of the compiled graph (for Vela: the
    ``ethos-u`` custom op(s) that hold the NPU part, plus every operator left
    for the CPU, with the reasons ``--show-cpu-operations`` gave for the
    operators of the *input* graph in ``detail["cpu_reasons"]``).
    ``crashed`` is True when the compiler (or the conversion before it) failed;
    ``message`` then holds its own words. ``artifacts`` maps names to files
    the judge kept (the compiled model, logs, CSVs) when a workdir was given.
    """

    target: str
    compiler: str
    compiler_version: str
    ops: list[OpPlacement] = field(default_factory=list)
    npu_cycles: int | None = None
    total_cycles: int | None = None
    cpu_ops: list[str] | None = None
    crashed: bool = False
    message: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cpu_ops is None:
            self.cpu_ops = [p.op for p in self.ops if not p.on_npu and not p.detail.get("io")]

    @property
    def all_on_npu(self) -> bool:
        """True when the compiler ran and left no operator for the CPU."""
        return not self.crashed and not self.cpu_ops

    @property
    def npu_ops(self) -> list[str]:
        return [p.op for p in self.ops if p.on_npu]

    @property
    def cpu_reasons(self) -> dict[str, list[str]]:
        """The compiler's reason(s) per CPU op type (only those it gave)."""
        out: dict[str, list[str]] = {}
        for p in self.ops:
            if not p.on_npu and p.reason and not p.detail.get("io"):
                reasons = out.setdefault(p.op, [])
                if p.reason not in reasons:
                    reasons.append(p.reason)
        return out

    def summary(self) -> str:
        """One line: placement counts, cycles, or the crash message.

        >>> Judgement("rk3588", "rknn", "2.5.0", crashed=True, message="E build: boom").summary()
        'rk3588: CRASHED: E build: boom'
        """
        if self.crashed:
            return f"{self.target}: CRASHED: {self.message}"
        cpu = ", ".join(self.cpu_ops or []) or "none"
        cycles = "" if self.total_cycles is None else f", {self.total_cycles} cycles"
        return f"{self.target}: {len(self.npu_ops)} NPU / {len(self.cpu_ops or [])} CPU ops (CPU: {cpu}){cycles}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ops"] = [p.to_dict() for p in self.ops]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Judgement":
        return cls(
            target=str(d["target"]),
            compiler=str(d["compiler"]),
            compiler_version=str(d.get("compiler_version", "")),
            ops=[OpPlacement.from_dict(p) for p in d.get("ops", [])],
            npu_cycles=d.get("npu_cycles"),
            total_cycles=d.get("total_cycles"),
            cpu_ops=list(d["cpu_ops"]) if d.get("cpu_ops") is not None else None,
            crashed=bool(d.get("crashed", False)),
            message=str(d.get("message", "")),
            artifacts=dict(d.get("artifacts") or {}),
            extra=dict(d.get("extra") or {}),
        )

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Judgement":
        return cls.from_dict(json.loads(text))
