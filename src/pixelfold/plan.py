"""Tuning plans: the JSON file :func:`pixelfold.tune` writes and :func:`apply_plan` reapplies, read strictly.

A plan names, per layer, the exact form to use (``choice`` + ``options``),
with what was measured. Everything read from a file, from JSON text or from
a :class:`Plan` built by hand is checked against :data:`PLAN_FIELDS` /
:data:`LAYER_FIELDS` / :data:`CHOICES` before any layer is touched: every
field's type and range, the known form names and their options, the schema
version. A plan that does not pass raises :class:`~pixelfold.FoldError`
naming the file, the JSON path of the field, what was found and what was
expected -- never a ``KeyError`` or a half-applied model.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4))
>>> text = Plan([LayerPlan("0", "Conv2d", "Conv2d 3→8 k4×4 s4×4 p0×0", "fold", {"block": [2, 2]})],
...             "cpu", torch.__version__).to_json()
>>> type(apply_plan(net, text)[0]).__name__                  # JSON text, a path, or a Plan
'PhaseConv'
>>> apply_plan(net, text.replace('"fold"', '"folded"'))
Traceback (most recent call last):
...
pixelfold.errors.FoldError: plan JSON text: layers[0].choice: expected one of 'original', 'fold', 'patch_linear', 'subpixel', 'merge', 'polyphase', 'transposed', 'to_depth', 'rearrange', 'reorder', 'onehot', found 'folded' (a string); re-run pixelfold.tune to write a new plan
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch import nn

from .errors import FoldError
from .spec import ConvSpec

__all__ = ["Plan", "LayerPlan", "apply_plan", "PLAN_SCHEMA", "CHOICES", "MEMORY_FORMATS", "DEFAULT_COST"]

PLAN_SCHEMA = "pixelfold.plan/1"
MEMORY_FORMATS = ("contiguous", "channels_last")
ORDERS = ("crd", "dcr", "focus")
DEFAULT_COST = "wall time"
MAX_BLOCK = 1024
MAX_FILE_BYTES = 64 << 20  # a plan of a 1000-layer model is about 1 MB
_HINT = "; re-run pixelfold.tune to write a new plan"


# ---------------------------------------------------------------------------- the dataclasses
@dataclass
class LayerPlan:
    """The choice for one layer: its path, what it was, the form kept, the measurements and why."""

    path: str
    type: str
    spec: str
    choice: str
    options: dict[str, Any] = field(default_factory=dict)
    times_ms: dict[str, float] = field(default_factory=dict)
    max_error: dict[str, float] = field(default_factory=dict)
    reason: str = ""


@dataclass
class Plan:
    """A tuning result: per-layer choices plus the machine they were measured on (JSON-serialisable).

    ``cost`` says what ``times_ms`` measured (``"wall time"`` on ``device`` unless a tool that ranks
    forms by another cost, such as NPU compiler cycles, says otherwise).
    """

    layers: list[LayerPlan]
    device: str
    torch_version: str
    memory_format: str = "contiguous"
    model_time_ms: dict[str, float] = field(default_factory=dict)
    created: str = ""
    schema: str = PLAN_SCHEMA
    cost: str = DEFAULT_COST

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-able data."""
        return asdict(self)

    def to_json(self, indent: int = 2) -> str:
        """The plan as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON (through a temporary file, so a failed write leaves no half plan)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(self.to_json(), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> "Plan":
        """Check ``data`` (parsed JSON) against the schema and build the plan; ``source`` names it in errors."""
        return _validate(data, source)

    @classmethod
    def from_json(cls, text: str, source: str = "plan JSON text") -> "Plan":
        """Read a plan written by :meth:`to_json`; refuses other schemas and anything malformed."""
        return cls.from_dict(_parse(text, source), source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Plan":
        """Read a plan from a JSON file."""
        source = _file_source(path)
        return cls.from_json(_read(Path(path), source), source)

    def __str__(self) -> str:
        unit = "ms" if "time" in self.cost else "cost"
        rows = [("layer", "spec", "kept", f"original {unit}", "fastest form measured", unit, "ratio", "why")]
        reverted = _whole_model_reverted(self)
        for lp in self.layers:
            orig = lp.times_ms.get("original", float("nan"))
            fastest = min(lp.times_ms, key=lp.times_ms.__getitem__) if lp.times_ms else "original"
            best = lp.times_ms.get(fastest, orig)
            rows.append((lp.path, lp.spec, _label(lp.choice, lp.options), f"{orig:.3f}", fastest, f"{best:.3f}",
                         f"{best / orig:.2f}" if orig else "-", lp.reason or _derived_reason(lp, reverted)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        mt = self.model_time_ms
        if mt:
            lines.append(f"model: original {mt.get('original', float('nan')):.3f} {unit}, tuned "
                         f"{mt.get('tuned', float('nan')):.3f} {unit} on {self.device} (memory format "
                         f"{self.memory_format}, cost: {self.cost})")
        return "\n".join(lines)


def _label(name: str, options: Mapping[str, Any]) -> str:
    if not options:
        return name
    return name + "(" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) + ")"


def _whole_model_reverted(plan: Plan) -> bool:
    """True when the whole-model timing kept the original (``tune`` then resets every layer to original)."""
    mt = plan.model_time_ms
    key = f"original/{plan.memory_format}"
    return "tuned" in mt and key in mt and mt["tuned"] == mt[key] and any(k.startswith("tuned/") for k in mt)


def _derived_reason(lp: LayerPlan, reverted: bool, margin: float = 0.03) -> str:
    """Why ``lp`` kept what it kept, from its measurements (for plans written without a ``reason``)."""
    if lp.choice != "original":
        return "fastest verified form"
    unverified = sorted(k for k in lp.max_error if k not in lp.times_ms)
    timed = {k: v for k, v in lp.times_ms.items() if k != "original"}
    if not timed:
        if unverified:
            worst = min(lp.max_error[k] for k in unverified)
            return f"not verified: {', '.join(unverified)} (max error {worst:.2g})"
        return "no other form could be built"
    orig = lp.times_ms.get("original", float("nan"))
    ratio = min(timed.values()) / orig if orig else float("nan")
    if reverted and ratio < 1 - margin:
        return "whole model not faster: kept original"
    if ratio >= 1 - margin or math.isnan(ratio):
        return f"within noise margin {margin:.0%} (ratio {ratio:.2f})"
    return "not chosen (the plan records no reason)"


# ---------------------------------------------------------------------------- reading
def _file_source(path: str | os.PathLike[str]) -> str:
    name = str(path)
    return f"plan file {name if len(name) <= 200 else name[:197] + '...'!r}"


def _read(path: Path, source: str) -> str:
    """The text of a plan file, or a FoldError saying why it cannot be read."""
    try:
        if not path.exists():
            raise FoldError(f"{source} does not exist (a plan is a path to a JSON file, JSON text starting with "
                            "'{', or a pixelfold.Plan)")
        if path.is_dir():
            raise FoldError(f"{source} is a directory, expected a JSON file written by pixelfold tune")
        if not path.is_file():
            raise FoldError(f"{source} is not a regular file (a device, pipe or socket); give a JSON file")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise FoldError(f"{source} is {size:,} bytes; a plan is at most {MAX_FILE_BYTES:,}: not a plan file")
        data = path.read_bytes()
    except OSError as err:
        raise FoldError(f"cannot read {source}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise FoldError(f"{source} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}): "
                        "not a plan file") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FoldError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _parse(text: str, source: str) -> Any:
    if not isinstance(text, str):
        raise FoldError(f"{source}: expected JSON text (a str), found {type(text).__name__}")
    if not text.strip():
        raise FoldError(f"{source} is empty, expected a JSON plan written by pixelfold tune")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except FoldError as err:
        raise FoldError(f"{source}: {err}{_HINT}") from None
    except json.JSONDecodeError as err:
        raise FoldError(f"{source} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
                        f"{_HINT}") from None
    except RecursionError:
        raise FoldError(f"{source} nests too deeply to be a plan (a plan is 4 levels deep){_HINT}") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise FoldError(f"{source} is not valid JSON: {err}{_HINT}") from None


# ---------------------------------------------------------------------------- the schema
def _found(value: Any) -> str:
    """A short description of a JSON value for an error message (never recursing into it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 64:
            return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
        return f"{value} (an integer)"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return f"{value!r} (a number)"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"{shown!r} (a string)"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        keys = ", ".join(repr(k) for k in list(value)[:4]) + (", ..." if len(value) > 4 else "")
        return f"an object with keys {keys}" if value else "an empty object"
    return f"a {type(value).__name__}"


class _Checker:
    """Raises the FoldError for one field: ``<source>: <json path>: expected <what>, found <value>``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, expected: str, value: Any) -> None:
        raise FoldError(f"{self.source}: {where}: expected {expected}, found {_found(value)}{_HINT}")

    def object(self, where: str, value: Any, fields: Mapping[str, "_Field"]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where or "the top level", "a JSON object", value)
        unknown = [k for k in value if k not in fields]
        if unknown:
            raise FoldError(f"{self.source}: {where + ': ' if where else ''}unknown field {unknown[0]!r}; "
                            f"known: {', '.join(fields)}{_HINT}")
        out: dict[str, Any] = {}
        for name, spec in fields.items():
            sub = f"{where}.{name}" if where else name
            if name not in value:
                if spec.required:
                    raise FoldError(f"{self.source}: {where + ': ' if where else ''}missing field {name!r} "
                                    f"({spec.expected}){_HINT}")
                continue
            out[name] = spec.check(self, sub, value[name])
        return out


class _Field(NamedTuple):
    """One field of an object: what it holds (for 'missing field' errors), its checker, whether required."""

    expected: str
    check: Callable[[_Checker, str, Any], Any]
    required: bool = False


def _string(nonempty: bool = False, one_of: tuple[str, ...] | None = None) -> Callable[[_Checker, str, Any], str]:
    def check(c: _Checker, where: str, value: Any) -> str:
        if one_of is not None and value not in one_of:
            c.fail(where, "one of " + ", ".join(repr(v) for v in one_of), value)
        if not isinstance(value, str) or (nonempty and not value):
            c.fail(where, "a non-empty string" if nonempty else "a string", value)
        return value
    return check


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(allow_nonfinite: bool) -> Callable[[_Checker, str, Any], dict[str, float]]:
    """An object of label → number ≥ 0 (finite unless ``allow_nonfinite``: an error may be inf or NaN)."""
    expected = "a number ≥ 0 (or Infinity/NaN)" if allow_nonfinite else "a finite number ≥ 0"

    def check(c: _Checker, where: str, value: Any) -> dict[str, float]:
        if not isinstance(value, dict):
            c.fail(where, "an object of form label → number", value)
        for key, v in value.items():
            if not _is_number(v) or (isinstance(v, int) and v.bit_length() > 1000):
                c.fail(f"{where}[{key!r}]", expected, v)
            v = float(v)
            if math.isnan(v) and allow_nonfinite:
                continue
            if not (v >= 0 and (allow_nonfinite or math.isfinite(v))):
                c.fail(f"{where}[{key!r}]", expected, value[key])
        return {k: float(v) for k, v in value.items()}
    return check


def _block(c: _Checker, where: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not 1 <= len(value) <= 3:
        c.fail(where, "a list of 1 to 3 positive integers (one per spatial dim)", value)
    for i, v in enumerate(value):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_BLOCK:
            c.fail(f"{where}[{i}]", f"an integer from 1 to {MAX_BLOCK}", v)
    return list(value)


def _int_in(lo: int, hi: int) -> Callable[[_Checker, str, Any], int]:
    def check(c: _Checker, where: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            c.fail(where, f"an integer from {lo} to {hi}", value)
        return value
    return check


_ORDER = _Field("'crd', 'dcr' or 'focus'", _string(one_of=ORDERS))
_BLOCK = _Field("the block, a list of positive integers", _block, required=True)
#: form name → its options (those of ``pixelfold.forms.FORMS``, what ``build_form`` reads); extend both together.
CHOICES: dict[str, dict[str, _Field]] = {
    "original": {},
    "fold": {"block": _BLOCK, "order": _ORDER},
    "patch_linear": {"order": _ORDER},
    "subpixel": {"form": _Field("'shared' or 'phases'", _string(one_of=("shared", "phases"))), "order": _ORDER},
    "merge": {},
    "polyphase": {"block": _BLOCK._replace(required=False), "order": _ORDER},
    "transposed": {},
    "to_depth": {"block": _BLOCK, "order": _ORDER},
    "rearrange": {},
    "reorder": {"order": _ORDER._replace(required=True)},
    "onehot": {"channels": _Field("the channels", _int_in(1, 2**31 - 1), required=True),
               "dims": _Field("the spatial dims", _int_in(1, 3), required=True)},
}


def _path(c: _Checker, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value or any(not part for part in value.split(".")):
        c.fail(where, "a module path such as 'backbone.conv1' (non-empty names joined by '.')", value)
    return value


def _layer_list(c: _Checker, where: str, value: Any) -> list[LayerPlan]:
    if not isinstance(value, list):
        c.fail(where, "a list of layer entries", value)
    out = [_layer(c, f"{where}[{i}]", entry) for i, entry in enumerate(value)]
    index = {}
    for i, lp in enumerate(out):
        index.setdefault(lp.path, i)
    for i, lp in enumerate(out):
        parts = lp.path.split(".")
        for other in [lp.path] + [".".join(parts[:n]) for n in range(1, len(parts))]:
            j = index.get(other)
            if j is not None and j != i:
                a, b = sorted((i, j))
                raise FoldError(f"{c.source}: {where}[{a}] ({out[a].path!r}) and {where}[{b}] ({out[b].path!r}) "
                                f"name the same or nested layers; a plan has one entry per layer{_HINT}")
    return out


LAYER_FIELDS: dict[str, _Field] = {
    "path": _Field("the layer's module path", _path, required=True),
    "type": _Field("the layer's class name", _string(nonempty=True), required=True),
    "spec": _Field("the layer's spec string", _string(), required=True),
    "choice": _Field("the form to build", _string(one_of=tuple(CHOICES)), required=True),
    "options": _Field("the form's options", lambda c, where, value: value),  # checked in _layer, per choice
    "times_ms": _Field("measured time per form", _numbers(allow_nonfinite=False)),
    "max_error": _Field("max error per form", _numbers(allow_nonfinite=True)),
    "reason": _Field("why this form was kept", _string()),
}


def _layer(c: _Checker, where: str, value: Any) -> LayerPlan:
    data = c.object(where, value, LAYER_FIELDS)
    options = data.get("options", {})
    allowed = CHOICES[data["choice"]]
    if not isinstance(options, dict):
        c.fail(f"{where}.options", "an object of option → value", options)
    if options and not allowed:
        raise FoldError(f"{c.source}: {where}.options: {data['choice']!r} takes no options, found "
                        f"{_found(options)}{_HINT}")
    data["options"] = c.object(f"{where}.options", options, allowed)
    return LayerPlan(**data)


PLAN_FIELDS: dict[str, _Field] = {
    "schema": _Field(f"{PLAN_SCHEMA!r}", _string(one_of=(PLAN_SCHEMA,)), required=True),
    "layers": _Field("a list of layer entries", _layer_list, required=True),
    "device": _Field("where it was measured", _string(), required=True),
    "torch_version": _Field("the torch version", _string(), required=True),
    "memory_format": _Field("'contiguous' or 'channels_last'", _string(one_of=MEMORY_FORMATS)),
    "model_time_ms": _Field("whole-model times", _numbers(allow_nonfinite=False)),
    "created": _Field("a timestamp", _string()),
    "cost": _Field("what the times measure", _string(nonempty=True)),
}


def _validate(data: Any, source: str) -> Plan:
    c = _Checker(source)
    if isinstance(data, dict) and "schema" in data and data["schema"] != PLAN_SCHEMA:
        raise FoldError(f"{source}: schema: expected {PLAN_SCHEMA!r}, found {_found(data['schema'])}: a plan from "
                        f"another pixelfold version or not a plan{_HINT}")
    fields = c.object("", data, PLAN_FIELDS)
    return Plan(**fields)


# ---------------------------------------------------------------------------- applying
def _as_plan(plan: Any) -> tuple[Plan, str]:
    """A validated copy of ``plan`` (a :class:`Plan`, a path (str / PathLike) or JSON text), and its name."""
    if isinstance(plan, Plan):
        try:
            data = json.loads(plan.to_json())
        except (TypeError, ValueError, RecursionError) as err:
            raise FoldError(f"plan: not JSON-serialisable ({type(err).__name__}: {err}); a Plan holds only "
                            "strings, numbers, lists and dicts") from None
        return Plan.from_dict(data, "plan"), "plan"
    if isinstance(plan, str) and plan.lstrip().startswith("{"):
        return Plan.from_json(plan), "plan JSON text"
    if isinstance(plan, str) and not plan.strip():
        raise FoldError("plan is an empty string; give a Plan, a path to a plan file, or the JSON text")
    if isinstance(plan, (str, os.PathLike)):
        return Plan.load(plan), _file_source(plan)
    raise FoldError(f"plan must be a pixelfold.Plan, a path to a plan file or JSON text, got {type(plan).__name__}")


def _spec_of(module: nn.Module) -> str:
    return str(ConvSpec.from_module(module)) if isinstance(module, nn.modules.conv._ConvNd) else type(module).__name__


def _build(work: nn.Module, lp: LayerPlan, where: str, freeze: bool) -> nn.Module | None:
    """The form ``lp`` asks for, built from ``work``'s layer after checking it is the planned one (None: keep)."""
    from .tune import build_form  # tune imports this module

    try:
        module = work.get_submodule(lp.path)
    except AttributeError:
        raise FoldError(f"{where}: the plan names layer {lp.path!r}, which this model does not have; "
                        "the plan was made for another model: re-run pixelfold.tune") from None
    spec = _spec_of(module)
    if type(module).__name__ != lp.type or spec != lp.spec:
        raise FoldError(f"{where}: layer {lp.path!r} is {type(module).__name__} {spec} but the plan expects "
                        f"{lp.type} {lp.spec}; the plan was made for another model: re-run pixelfold.tune")
    block = lp.options.get("block")
    if block is not None and isinstance(module, nn.modules.conv._ConvNd) and len(block) != module.weight.dim() - 2:
        raise FoldError(f"{where}: options.block {block} has {len(block)} entries but the layer is "
                        f"{module.weight.dim() - 2}-D ({spec}); the plan was made for another model: "
                        "re-run pixelfold.tune")
    if lp.choice == "original":
        return None
    try:
        built = build_form(module, lp.choice, dict(lp.options))
    except Exception as err:  # a form that cannot be built for this layer: say which and why
        raise FoldError(f"{where}: cannot build {_label(lp.choice, lp.options)} of {spec}: "
                        f"{err if isinstance(err, FoldError) else f'{type(err).__name__}: {err}'}") from None
    if built is not module:
        method = getattr(built, "freeze" if freeze else "unfreeze", None)
        if callable(method):
            method()
    return built


def apply_plan(model: nn.Module, plan: Plan | str | os.PathLike[str], inplace: bool = False,
               freeze: bool = False) -> nn.Module:
    """Reapply a tuning plan without timing; refuses a plan that does not fit ``model``.

    Args:
        model: the model the plan was made for (same layer paths, types and specs).
        plan: a :class:`Plan`, a path to a plan file, or the JSON text itself (text starting with ``{``).
        inplace: replace the layers in ``model`` itself. Every replacement is built and checked first:
            if any fails, ``model`` is left untouched.
        freeze: call ``.freeze()`` on the forms that have it (bakes the transformed weight, for inference).
            By default they stay trainable and checkpoint-loadable: they share the original Parameters.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4))
    >>> plan = Plan([LayerPlan("0", "Conv2d", "Conv2d 3→8 k4×4 s4×4 p0×0", "patch_linear")], "cpu", torch.__version__)
    >>> type(apply_plan(net, plan)[0]).__name__, type(net[0]).__name__    # on a copy by default
    ('PatchLinear', 'Conv2d')
    >>> weight = net[0].weight
    >>> same = apply_plan(net, plan, inplace=True)
    >>> same is net, same[0].weight is weight, same[0].frozen    # the user's Parameter, still trained
    (True, True, False)
    """
    if not isinstance(model, nn.Module):
        raise FoldError(f"apply_plan needs an nn.Module, got {type(model).__name__}")
    checked, source = _as_plan(plan)
    work = model if inplace else copy.deepcopy(model)
    replacements = [(lp.path, _build(work, lp, f"{source}: layers[{i}]", freeze))
                    for i, lp in enumerate(checked.layers)]
    for path, built in replacements:  # all built and checked: nothing below can fail on a plan
        if built is not None:
            work.set_submodule(path, built)
    if checked.memory_format == "channels_last":
        from .tune import _to_memory_format

        _to_memory_format(work, torch.channels_last)
    return work
