"""NPU targets: what each one's compiler runs on the NPU, as data, and the solver that rewrites for it.

A target name works wherever a profile does: ``pixelfold.rewrite(model, "ethos-u55-128", example_inputs=x)``,
``pixelfold rewrite MODEL --target rk3588``. Built-in targets are TOML files in ``targets/data/`` citing
their sources; :func:`get` also reads your own (``get("my_npu.toml")``, same format, see
:mod:`pixelfold.targets.model`).

>>> from pixelfold import targets
>>> "ethos-u55-128" in targets.names() and "rk3588" in targets.names()
True
>>> targets.get("tidl").judged
False
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from ..errors import FoldError
from .model import Constraint, Target, Violation, condition_holds

__all__ = ["Target", "Constraint", "Violation", "condition_holds", "get", "names", "is_target"]


@functools.cache
def _builtin() -> dict[str, str]:
    """Built-in target name -> file name in the package data."""
    out = {}
    for entry in resources.files(__package__).joinpath("data").iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name[: -len(".toml")]] = entry.name
    return dict(sorted(out.items()))


def names() -> list[str]:
    """The built-in targets, by name."""
    return list(_builtin())


def is_target(name: str) -> bool:
    """True for a built-in target name or an existing ``.toml``/``.json`` target file."""
    if name in _builtin():
        return True
    return name.endswith((".toml", ".json")) and Path(name).is_file()


@functools.cache
def _load_builtin(name: str) -> Target:
    text = resources.files(__package__).joinpath("data", _builtin()[name]).read_text()
    import tomllib

    target = Target.from_dict(tomllib.loads(text), where=f"built-in target {name}")
    if target.name != name:
        raise FoldError(f"internal: built-in target file {name}.toml names itself {target.name!r}")
    return target


def get(name: str | Target) -> Target:
    """A target by built-in name, or from a ``.toml``/``.json`` file path; a :class:`Target` is returned as is."""
    if isinstance(name, Target):
        return name
    if not isinstance(name, str):
        raise FoldError(f"a target is a name or a file path, got {type(name).__name__}")
    if name in _builtin():
        return _load_builtin(name)
    if name.endswith((".toml", ".json")):
        return Target.load(name)
    raise FoldError(f"unknown target {name!r}; built-in targets: {', '.join(names())} (or a .toml/.json file)")
