"""Corrupted plan files for the plan fuzz test (tests/test_plan.py): a valid plan, then ways to break it.

Kept free of pixelfold.plan so the same cases can be run against an older pixelfold to count its failures.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
from typing import Any, Iterator

import torch
from torch import nn

from pixelfold import ConvSpec


def small_net() -> nn.Sequential:
    """Four plannable units: patchify conv, strided conv, transposed conv, PixelUnshuffle + conv pair."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=4),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1),
        nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(32, 4, 1)),
    )


def valid_plan_dict() -> dict[str, Any]:
    """A plan for :func:`small_net` as ``tune`` writes it (every field present)."""
    net = small_net()
    spec = {p: str(ConvSpec.from_module(net.get_submodule(p))) for p in ("0", "2", "4")}
    return {
        "layers": [
            {"path": "0", "type": "Conv2d", "spec": spec["0"], "choice": "patch_linear", "options": {},
             "times_ms": {"original": 0.05, "fold(block=[2, 2])": 0.06, "fold(block=[4, 4])": 0.04,
                          "patch_linear": 0.03},
             "max_error": {"fold(block=[2, 2])": 1e-16, "fold(block=[4, 4])": 2e-16, "patch_linear": 0.0}},
            {"path": "2", "type": "Conv2d", "spec": spec["2"], "choice": "fold",
             "options": {"block": [2, 2], "order": "crd"},
             "times_ms": {"original": 0.08, "fold(block=[2, 2])": 0.07},
             "max_error": {"fold(block=[2, 2])": 3e-16}},
            {"path": "4", "type": "ConvTranspose2d", "spec": spec["4"], "choice": "subpixel",
             "options": {"form": "phases"},
             "times_ms": {"original": 0.1, "subpixel(form=shared)": 0.12, "subpixel(form=phases)": 0.09},
             "max_error": {"subpixel(form=shared)": 1e-16, "subpixel(form=phases)": 1e-16}},
            {"path": "5", "type": "Sequential", "spec": "Sequential", "choice": "merge", "options": {},
             "times_ms": {"original": 0.02, "merge": 0.01}, "max_error": {"merge": 0.0}},
        ],
        "device": "cpu: test, 1 threads",
        "torch_version": torch.__version__,
        "memory_format": "contiguous",
        "model_time_ms": {"original": 0.5, "tuned": 0.4, "original/contiguous": 0.5, "tuned/contiguous": 0.4},
        "created": "2025-01-01T00:00:00+00:00",
        "schema": "pixelfold.plan/1",
    }


WRONG_VALUES: list[Any] = [None, True, False, 0, -1, 7, 1.5, -0.0, "", "x", "original", [], [1], [2, 2], {},
                           {"a": 1}, float("nan"), float("inf"), float("-inf"), 10**30, 1e308, -1e308, 10**400]


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _copy(data: Any) -> Any:
    return json.loads(json.dumps(data))  # faster than deepcopy for plain JSON data


def _set(data: Any, path: tuple, value: Any) -> Any:
    out = _copy(data)
    if not path:
        return value
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def _delete(data: Any, path: tuple) -> Any:
    out = _copy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def _dump(data: Any) -> bytes:
    return json.dumps(data, indent=1).encode()


def corrupted_plans() -> Iterator[tuple[str, bytes, Any]]:
    """``(name, file bytes, the data if the bytes are JSON)`` for every corruption; ~4000 cases."""
    base = valid_plan_dict()
    text = _dump(base)
    for cut in range(len(text)):  # truncations: every prefix
        yield f"truncated at {cut}", text[:cut], None
    for path in _paths(base):  # wrong types and values at every field (and at the top level)
        for value in WRONG_VALUES:
            data = _set(base, path, value)
            yield f"{path} = {value!r:.20}", _dump(data), data
        if path:
            data = _delete(base, path)
            yield f"del {path}", _dump(data), data
        node = base
        for key in path:
            node = node[key]
        if isinstance(node, dict):  # an unknown key in every object
            data = _set(base, path + ("bogus_key",), 1)
            yield f"{path} + unknown key", _dump(data), data
    for schema in (None, "", "pixelfold.plan/2", "pixelfold.plan/0", "PIXELFOLD.PLAN/1", 1, ["pixelfold.plan/1"]):
        data = _set(base, ("schema",), schema)
        yield f"schema {schema!r}", _dump(data), data
    for depth in (50, 900, 100_000):  # deep nesting: in a field, and as the whole file
        yield f"nested lists {depth}", b"[" * depth + b"]" * depth, None
        yield f"nested objects {depth}", b'{"a":' * depth + b"1" + b"}" * depth, None
        yield (f"nested options {depth}", text.replace(b'"form": "phases"', b'"form": ' + b"[" * depth + b"]" * depth),
               None)
    huge = text.replace(b'"original": 0.05', b'"original": ' + b"9" * 5000)
    yield "5000-digit number", huge, None
    yield "1e999 time", text.replace(b'"original": 0.05', b'"original": 1e999'), None
    yield "block 10**30", text.replace(b'"block": [\n     2,', b'"block": [\n     1' + b"0" * 30 + b","), None
    yield "NaN literal time", text.replace(b'"original": 0.05', b'"original": NaN'), None
    yield "duplicate key", text.replace(b'"device"', b'"layers": [], "device"'), None
    data = copy.deepcopy(base)
    data["layers"].append(copy.deepcopy(data["layers"][1]))
    yield "duplicate layer path", _dump(data), data
    data = copy.deepcopy(base)
    data["layers"].append({**copy.deepcopy(data["layers"][1]), "path": "5.1", "type": "Conv2d"})
    yield "nested layer paths", _dump(data), data
    for path in ("", ".", "0.", ".0", "0..1", "nope", "0.weight", "1"):
        data = _set(base, ("layers", 0, "path"), path)
        yield f"layer path {path!r}", _dump(data), data
    for choice, options in [("fold", {}), ("fold", {"block": [0, 2]}), ("fold", {"block": [2.0, 2]}),
                            ("fold", {"block": [True, 2]}), ("fold", {"block": [2, 2, 2, 2]}),
                            ("fold", {"block": [2, 2], "order": "bogus"}), ("fold", {"block": [3, 3]}),
                            ("fold", {"block": [2]}), ("fold", {"block": 2}), ("fold", {"block": [2, 2], "x": 1}),
                            ("subpixel", {"form": "bogus"}), ("subpixel", {}), ("merge", {"block": [2, 2]}),
                            ("patch_linear", {"order": "dcr"}), ("polyphase", {"block": [1, 1]}),
                            ("transposed", {}), ("transposed", {"trim": True}), ("to_depth", {"block": [2, 2]}),
                            ("reorder", {}), ("onehot", {"channels": 3, "dims": 2}), ("rearrange", {}),
                            ("magic", {}), ("original", {"block": [2, 2]})]:
        for index in (0, 1, 2, 3):
            data = _set(base, ("layers", index, "choice"), choice)
            data = _set(data, ("layers", index, "options"), options)
            yield f"layers[{index}] {choice}{options}", _dump(data), data
    rng = random.Random(0)
    for n in (1, 2, 7, 64, 1000, 20_000):  # binary garbage
        yield f"{n} random bytes", bytes(rng.randrange(256) for _ in range(n)), None
    yield "NUL bytes", b"\x00" * 100, None
    yield "gzip of a plan", gzip.compress(text), None
    yield "UTF-16", text.decode().encode("utf-16"), None
    yield "UTF-8 BOM", b"\xef\xbb\xbf" + text, base
    yield "latin-1 in a string", text.replace(b"cpu: test", b"cpu: t\xe9st"), None
    for top in (b"[]", b"null", b"1", b'"pixelfold.plan/1"', b"true", b"{}", b" ", b"\n\n", b""):
        yield f"top level {top!r}", top, None
    yield "two plans", text + text, None
    yield "trailing garbage", text + b"x", None
    yield "a Python repr", repr(base).encode(), None


def judge(load: Any, apply: Any, fold_error: type, path: Any, model: nn.Module, x: torch.Tensor,
          expected: torch.Tensor, cache: dict | None = None) -> str:
    """``"refused"`` (FoldError on load or apply), ``"applied"`` (exact), or what went wrong.

    ``cache`` (a dict) remembers the outcome per distinct set of choices, so a plan that differs only in
    its measurements is not built again.
    """
    try:
        plan = load(path)
    except fold_error:
        return "refused"
    except BaseException as err:  # noqa: BLE001 - counting what escapes
        return f"load raised {type(err).__name__}"
    if cache is not None:
        try:
            key = repr([(lp.path, lp.type, lp.spec, lp.choice, sorted(lp.options.items())) for lp in plan.layers]
                       + [plan.memory_format])
        except Exception:  # noqa: BLE001 - an old pixelfold may load garbage: no cache then
            key = None
        if key is not None and key in cache:
            return cache[key]
        cache[key] = result = judge(load, apply, fold_error, path, model, x, expected)
        return result
    try:
        out = apply(model, plan)
    except fold_error:
        return "refused"
    except BaseException as err:  # noqa: BLE001
        return f"apply raised {type(err).__name__}"
    with torch.no_grad():
        got = out(x)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max())):
        return "applied: WRONG OUTPUT"
    return "applied"
