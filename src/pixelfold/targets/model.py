"""A target is a constraint set, written as data: which operators (and with which attributes) run on the NPU.

Each :class:`Constraint` applies to some operator kinds (see :class:`pixelfold.forms.Op`); ``when`` selects
the operators it is about, ``require`` says what they must satisfy, ``supported = false`` says they do not
run at all; ``message`` is the rule in the target's own words and ``source`` where it comes from (a vendor
document, or what the vendor's compiler said on this project's machine).

Condition values (``when`` and ``require`` use the same syntax):

=======================  ==========================================================================
``3``, ``true``, ``"dcr"``  equal
``[1, 2, 4]``            one of
``">3"``, ``"<=31"``     compared (also ``>=``, ``<``)
``"1..31"``              in the range (inclusive)
``"odd"``, ``"even"``    parity; ``"%8"``: a multiple of 8
=======================  ==========================================================================

An attribute holding one value per dim (``kernel``, ``stride``, ``dilation``, ``block``, ``padding``)
matches a ``when`` condition if *any* dim does and a ``require`` condition if *every* dim does; ``kernel_h``
/ ``kernel_w`` (and ``stride_h``, ``stride_w``, ``block_h``, ``block_w``) name one dim of a 2-D op,
``kernel_area`` the product.

>>> t = Target.from_dict({"name": "toy", "constraints": [
...     {"ops": ["conv"], "when": {"stride": ">3"}, "require": {"dilation": 1, "padding_valid": True},
...      "message": "Stride>3 is only supported IF (dilation = 1 AND padding = VALID)", "source": "doc"}]})
>>> from pixelfold.forms import Op
>>> from pixelfold.spec import ConvSpec
>>> [v.message for v in t.violations(Op("conv", spec=ConvSpec.make(3, 8, 7, stride=4, padding=3)))]
['Stride>3 is only supported IF (dilation = 1 AND padding = VALID)']
>>> t.violations(Op("conv", spec=ConvSpec.make(3, 8, 7, stride=4)))
[]
"""

from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import FoldError

__all__ = ["Constraint", "Violation", "Target", "condition_holds"]

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
        "!=": operator.ne}
_COMPARE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+)\s*$")
_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")
_MULTIPLE = re.compile(r"^\s*%\s*(\d+)\s*$")
_PER_DIM = ("kernel", "stride", "dilation", "block", "padding", "output_padding", "strides")
_DERIVED = {"_h": 0, "_w": 1}


def _scalar_holds(value: Any, cond: Any) -> bool:
    if isinstance(cond, bool) or not isinstance(cond, (str, list, tuple)):
        return value == cond
    if isinstance(cond, (list, tuple)):
        return any(_scalar_holds(value, c) for c in cond)
    text = cond.strip()
    if isinstance(value, str):
        return value == text
    if text == "any":
        return True
    if text in ("odd", "even"):
        return isinstance(value, int) and (value % 2 == 1) == (text == "odd")
    m = _COMPARE.match(text)
    if m:
        return isinstance(value, (int, float)) and _OPS[m.group(1)](value, int(m.group(2)))
    m = _RANGE.match(text)
    if m:
        return isinstance(value, (int, float)) and int(m.group(1)) <= value <= int(m.group(2))
    m = _MULTIPLE.match(text)
    if m:
        return isinstance(value, int) and value % int(m.group(1)) == 0
    raise FoldError(f"condition {cond!r} is not a value, a list, a comparison ('>3'), a range ('1..31'), "
                    "'odd', 'even' or a multiple ('%8')")


def _lookup(attrs: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """``(present, value)`` of an attribute, with the derived names (``kernel_h``, ``kernel_area``...)."""
    if key in attrs:
        return True, attrs[key]
    base, _, suffix = key.rpartition("_")
    if base in attrs and f"_{suffix}" in _DERIVED:
        values = attrs[base]
        i = _DERIVED[f"_{suffix}"]
        if isinstance(values, tuple) and len(values) == 2 and i < len(values):
            return True, values[i]
        if isinstance(values, tuple) and len(values) == 1 and suffix == "w":  # 1-D ops: width is the one dim
            return True, values[0]
        return False, None
    if suffix == "area" and base in attrs:
        return True, math.prod(attrs[base])
    return False, None


def condition_holds(attrs: Mapping[str, Any], key: str, cond: Any, every: bool) -> bool:
    """Does the op with ``attrs`` satisfy ``key: cond`` (per-dim attributes: every dim, or any dim)?

    An attribute the op does not have never satisfies a ``when`` condition and always satisfies a
    ``require`` one (a rule about kernels says nothing about a reshape).

    >>> condition_holds({"stride": (4, 4)}, "stride", ">3", every=False)
    True
    >>> condition_holds({"kernel": (3, 8)}, "kernel", "odd", every=True), condition_holds({}, "rank", "<=4", True)
    (False, True)
    """
    present, value = _lookup(attrs, key)
    if not present:
        return every
    if isinstance(value, tuple):
        if isinstance(cond, (list, tuple)) and cond and isinstance(cond[0], (list, tuple)):
            return tuple(value) in {tuple(c) for c in cond}  # a list of whole tuples, e.g. [[1, 1], [2, 2]]
        checks = [_scalar_holds(v, cond) for v in value] or [True]
        return all(checks) if every else any(checks)
    return _scalar_holds(value, cond)


@dataclass(frozen=True)
class Constraint:
    """One rule of a target: ops it is about, ``when`` it applies, what it ``require``s, or ``supported=False``."""

    ops: tuple[str, ...]
    message: str
    source: str = ""
    when: Mapping[str, Any] = field(default_factory=dict)
    require: Mapping[str, Any] = field(default_factory=dict)
    supported: bool = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "constraint") -> "Constraint":
        unknown = set(data) - {"ops", "op", "message", "source", "when", "require", "supported"}
        if unknown:
            raise FoldError(f"{where}: unknown keys {sorted(unknown)}; a constraint has ops, when, require, "
                            "supported, message, source")
        ops = data.get("ops", data.get("op"))
        if isinstance(ops, str):
            ops = [ops]
        if not ops or not all(isinstance(o, str) for o in ops):
            raise FoldError(f"{where}: 'ops' must name the operator kinds it applies to (e.g. ['conv'])")
        if "message" not in data:
            raise FoldError(f"{where}: every constraint needs a 'message' (the rule in the target's words)")
        for part in ("when", "require"):
            if not isinstance(data.get(part, {}), Mapping):
                raise FoldError(f"{where}: '{part}' must be a table of attribute: condition")
        c = cls(tuple(ops), str(data["message"]), str(data.get("source", "")), dict(data.get("when", {})),
                dict(data.get("require", {})), bool(data.get("supported", True)))
        for part in (c.when, c.require):  # fail on bad syntax now, not at the first op
            for cond in part.values():
                for item in cond if isinstance(cond, list) else [cond]:
                    if isinstance(item, str) and not item.strip().isidentifier():
                        _scalar_holds(0, item)  # raises FoldError for what is neither a literal nor a test
        return c

    def applies(self, attrs: Mapping[str, Any]) -> bool:
        return attrs.get("kind") in self.ops and all(condition_holds(attrs, k, v, every=False)
                                                     for k, v in self.when.items())

    def violated_by(self, attrs: Mapping[str, Any]) -> bool:
        if not self.applies(attrs):
            return False
        if not self.supported:
            return True
        return not all(condition_holds(attrs, k, v, every=True) for k, v in self.require.items())


@dataclass(frozen=True)
class Violation:
    """An operator a target does not run, and the constraint (in the target's words) that says so."""

    op: Any
    constraint: Constraint

    @property
    def message(self) -> str:
        return self.constraint.message

    def __str__(self) -> str:
        src = f" [{self.constraint.source}]" if self.constraint.source else ""
        return f"{self.op}: {self.constraint.message}{src}"


@dataclass
class Target:
    """A named NPU (or runtime): its constraints, how pixelfold emits rearrangements for it, its judge.

    ``lowering`` is how pixelfold writes *its own* rearrangements for the target; ``torch_lowering`` is what
    the target's converter makes of torch's ``nn.PixelShuffle``/``nn.PixelUnshuffle`` (``native``: one
    DepthToSpace/SpaceToDepth, as torch.onnx exports them; ``litert``: Reshape → one rank-4 Transpose →
    Reshape, as litert-torch decomposes them for TFLite): :data:`pixelfold.forms.TORCH_LOWERINGS`.
    """

    name: str
    constraints: list[Constraint] = field(default_factory=list)
    description: str = ""
    sources: list[str] = field(default_factory=list)
    lowering: str = "native"
    judge: str | None = None
    judge_options: dict[str, Any] = field(default_factory=dict)
    judged: bool = False
    notes: list[str] = field(default_factory=list)
    torch_lowering: str = "native"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "target") -> "Target":
        known = {"name", "description", "sources", "lowering", "torch_lowering", "judge", "judge_options", "judged",
                 "notes", "constraints"}
        unknown = set(data) - known
        if unknown:
            raise FoldError(f"{where}: unknown keys {sorted(unknown)}; a target has {sorted(known)}")
        if not isinstance(data.get("name"), str) or not data["name"]:
            raise FoldError(f"{where}: a target needs a 'name'")
        from ..forms import LOWERINGS, TORCH_LOWERINGS

        for key, allowed in (("lowering", LOWERINGS), ("torch_lowering", TORCH_LOWERINGS)):
            if data.get(key, "native") not in allowed:
                raise FoldError(f"{where}: {key} {data.get(key)!r} is not one of {allowed}")
        raw = data.get("constraints", [])
        if not isinstance(raw, list):
            raise FoldError(f"{where}: 'constraints' must be a list of tables")
        constraints = [Constraint.from_dict(c, f"{where} constraint {i + 1}") for i, c in enumerate(raw)]
        return cls(data["name"], constraints, str(data.get("description", "")), list(data.get("sources", [])),
                   data.get("lowering", "native"), data.get("judge"), dict(data.get("judge_options", {})),
                   bool(data.get("judged", False)), list(data.get("notes", [])),
                   data.get("torch_lowering", "native"))

    @classmethod
    def load(cls, path: str | Path) -> "Target":
        """Read a target from a ``.toml`` or ``.json`` file (the format of the built-in ones)."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as err:
            raise FoldError(f"cannot read target file {p}: {err.strerror or err}") from None
        try:
            if p.suffix == ".json":
                data = json.loads(text)
            else:
                import tomllib

                data = tomllib.loads(text)
        except (ValueError, RecursionError) as err:
            raise FoldError(f"target file {p} is not valid {p.suffix.lstrip('.') or 'TOML'}: {err}") from None
        if not isinstance(data, dict):
            raise FoldError(f"target file {p} must hold a table (name, constraints, ...)")
        return cls.from_dict(data, where=str(p))

    def violations(self, op: Any) -> list[Violation]:
        """Every constraint ``op`` (a :class:`pixelfold.forms.Op`) breaks on this target."""
        attrs = op.attrs()
        return [Violation(op, c) for c in self.constraints if c.violated_by(attrs)]

    def rejects(self, ops: Iterable[Any]) -> list[Violation]:
        """The violations of a list of ops (empty: the target runs them all)."""
        return [v for op in ops for v in self.violations(op)]

    def __str__(self) -> str:
        return f"{self.name}: {self.description}" if self.description else self.name
