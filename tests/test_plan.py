"""Plan files: strict reading (corruption fuzz), full error texts, apply_plan's inputs, atomicity, freezing, __str__."""

from __future__ import annotations

import collections
import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import pixelfold
import importlib
from pixelfold import FoldError
from pixelfold.plan import CHOICES, PLAN_SCHEMA, LayerPlan, Plan, apply_plan

from _plan_cases import corrupted_plans, judge, small_net, valid_plan_dict


@pytest.fixture(scope="module")
def model_and_ref():
    model = small_net().double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        return model, x, model(x)


def write(tmp_path: Path, data, name: str = "plan.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- the corruption fuzz
def _json_kind(v) -> str:
    if isinstance(v, bool) or v is None:
        return repr(v)
    for kind, types in (("number", (int, float)), ("string", str), ("list", list), ("object", dict)):
        if isinstance(v, types):
            return kind
    return type(v).__name__


def _contains(loaded, data) -> bool:
    """Every value of ``data`` is in ``loaded`` unchanged (defaults may fill missing optional fields)."""
    if isinstance(data, dict):
        return isinstance(loaded, dict) and all(k in loaded and _contains(loaded[k], v) for k, v in data.items())
    if isinstance(data, list):
        return isinstance(loaded, list) and len(loaded) == len(data) and all(map(_contains, loaded, data))
    if isinstance(data, float) and math.isnan(data):
        return isinstance(loaded, float) and math.isnan(loaded)
    if _json_kind(loaded) == _json_kind(data) == "number":  # times are read as floats: 10**30 → 1e30
        return math.isclose(loaded, data, rel_tol=1e-15)
    return _json_kind(loaded) == _json_kind(data) and loaded == data


REQUIRED = {1: {"schema", "layers", "device", "torch_version"}, 3: {"path", "type", "spec", "choice"}}


def test_corrupted_plans_give_fold_error_or_load_exactly(tmp_path, model_and_ref):
    model, x, ref = model_and_ref
    base = valid_plan_dict()
    counts: collections.Counter[str] = collections.Counter()
    wrong: list[str] = []
    cache: dict = {}
    path = tmp_path / "plan.json"
    valid = json.dumps(base, indent=1).encode()
    for name, payload, data in corrupted_plans():
        if payload == valid and data != base:  # a corruption that changed nothing (not: a value replaced by itself)
            wrong.append(f"{name}: not a corruption")
        path.write_bytes(payload)
        result = judge(Plan.load, apply_plan, FoldError, path, model, x, ref, cache)
        counts[result] += 1
        if result not in ("refused", "applied"):
            wrong.append(f"{name}: {result}")
            continue
        if result == "applied":
            loaded = Plan.load(path)
            if data is not None and not _contains(loaded.to_dict(), data):
                wrong.append(f"{name}: loaded with a changed value")
            if Plan.from_json(loaded.to_json()).to_json() != loaded.to_json():
                wrong.append(f"{name}: does not round-trip")
            if not name.startswith(("(", "del", "layers[", "UTF-8 BOM")):
                wrong.append(f"{name}: accepted")  # truncations, garbage, nesting, schemas, ...: always refused
            if name.startswith("(") and " = " in name:  # a replaced value: same JSON kind as the original only
                path_text, _, _ = name.partition(" = ")
                node = base
                for key in eval(path_text):  # noqa: S307 - our own tuple repr
                    node = node[key]
                new = loaded.to_dict()
                for key in eval(path_text):  # noqa: S307
                    new = new[key]
                if _json_kind(node) != _json_kind(new):
                    wrong.append(f"{name}: accepted a {_json_kind(new)} for a {_json_kind(node)}")
                if isinstance(new, float) and "times_ms" in path_text and not (math.isfinite(new) and new >= 0):
                    wrong.append(f"{name}: accepted a time of {new}")
            if name.startswith("del "):
                deleted = eval(name[4:])  # noqa: S307 - our own tuple repr
                if deleted[-1] in REQUIRED.get(len(deleted), ()) and deleted[:1] != ("model_time_ms",):
                    wrong.append(f"{name}: a required field was deleted and it loaded")
    assert not wrong, "\n".join(wrong[:40])
    assert sum(counts.values()) > 3000 and counts["refused"] > 2800 and counts["applied"] > 150, counts


@pytest.mark.parametrize("name, payload", [
    ("truncated", '{"schema": "pixelfold.plan/1", "layers": ['),
    ("nested", "[" * 100_000 + "]" * 100_000),
    ("huge int", '{"schema": "pixelfold.plan/1", "x": ' + "9" * 5000 + "}"),
])
def test_text_corruptions_through_apply_plan(model_and_ref, name, payload):
    model, _, _ = model_and_ref
    with pytest.raises(FoldError, match="^plan JSON text"):
        apply_plan(model, "{" + payload if not payload.startswith("{") else payload)


# ---------------------------------------------------------------------------- full messages of the main errors
HINT = "; re-run pixelfold.tune to write a new plan"


def test_missing_file_is_named_not_parsed(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(FoldError) as err:
        apply_plan(nn.Conv2d(1, 1, 1), str(path))
    assert str(err.value) == (f"plan file {str(path)!r} does not exist (a plan is a path to a JSON file, JSON text "
                              "starting with '{', or a pixelfold.Plan)")
    with pytest.raises(FoldError, match="does not exist"):
        apply_plan(nn.Conv2d(1, 1, 1), path)  # PathLike


def test_directory_empty_binary_and_invalid_json(tmp_path):
    with pytest.raises(FoldError) as err:
        Plan.load(tmp_path)
    assert str(err.value) == f"plan file {str(tmp_path)!r} is a directory, expected a JSON file written by pixelfold tune"
    empty = write(tmp_path, "  \n", "empty.json")
    with pytest.raises(FoldError) as err:
        Plan.load(empty)
    assert str(err.value) == f"plan file {str(empty)!r} is empty, expected a JSON plan written by pixelfold tune"
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"{\x80\x81")
    with pytest.raises(FoldError) as err:
        Plan.load(binary)
    assert str(err.value) == f"plan file {str(binary)!r} is not UTF-8 text (byte 0x80 at offset 1): not a plan file"
    bad = write(tmp_path, '{"schema": "pixelfold.plan/1",\n "layers": [}', "bad.json")
    with pytest.raises(FoldError) as err:
        Plan.load(bad)
    assert str(err.value) == (f"plan file {str(bad)!r} is not valid JSON: Expecting value (line 2, column 13)" + HINT)
    deep = write(tmp_path, "[" * 100_000 + "]" * 100_000, "deep.json")
    with pytest.raises(FoldError) as err:
        Plan.load(deep)
    assert str(err.value) == f"plan file {str(deep)!r} nests too deeply to be a plan (a plan is 4 levels deep)" + HINT


def test_fifo_unreadable_and_broken_links(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(FoldError, match="is not a regular file"):
        Plan.load(fifo)  # would block forever if opened
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "gone.json")
    with pytest.raises(FoldError, match="does not exist"):
        Plan.load(dangling)
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    with pytest.raises(FoldError, match="^(plan file|cannot read)"):
        Plan.load(loop)
    path = write(tmp_path, valid_plan_dict(), "locked.json")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(FoldError) as err:
        Plan.load(path)
    assert str(err.value) == f"cannot read plan file {str(path)!r}: Permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, valid_plan_dict())
    path.chmod(0)
    with pytest.raises(FoldError, match="cannot read plan file"):
        Plan.load(path)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(schema="pixelfold.plan/2"),
     "schema: expected 'pixelfold.plan/1', found 'pixelfold.plan/2' (a string): a plan from another pixelfold "
     "version or not a plan"),
    (lambda d: d.pop("schema"), "missing field 'schema' ('pixelfold.plan/1')"),
    (lambda d: d.update(memory_fromat="channels_last"),
     "unknown field 'memory_fromat'; known: schema, layers, device, torch_version, memory_format, model_time_ms, "
     "created, cost"),
    (lambda d: d["layers"][1]["options"].update(block=[2, -2]),
     "layers[1].options.block[1]: expected an integer from 1 to 1024, found -2 (an integer)"),
    (lambda d: d["layers"][1]["options"].update(block=[2, True]),
     "layers[1].options.block[1]: expected an integer from 1 to 1024, found true"),
    (lambda d: d["layers"][1]["options"].update(block=[2.5, 2]),
     "layers[1].options.block[0]: expected an integer from 1 to 1024, found 2.5 (a number)"),
    (lambda d: d["layers"][1]["options"].update(order="bogus"),
     "layers[1].options.order: expected one of 'crd', 'dcr', 'focus', found 'bogus' (a string)"),
    (lambda d: d["layers"][1]["options"].pop("block"),
     "layers[1].options: missing field 'block' (the block, a list of positive integers)"),
    (lambda d: d["layers"][2]["options"].update(form="grouped"),
     "layers[2].options.form: expected one of 'shared', 'phases', found 'grouped' (a string)"),
    (lambda d: d["layers"][3]["options"].update(block=[2, 2]),
     "layers[3].options: 'merge' takes no options, found an object with keys 'block'"),
    (lambda d: d["layers"][0].update(choice="magic"),
     "layers[0].choice: expected one of 'original', 'fold', 'patch_linear', 'subpixel', 'merge', 'polyphase', "
     "'transposed', 'to_depth', 'rearrange', 'reorder', 'onehot', found 'magic' (a string)"),
    (lambda d: d["layers"][0].update(choice="patch_linear", options={"order": "cdr"}),
     "layers[0].options.order: expected one of 'crd', 'dcr', 'focus', found 'cdr' (a string)"),
    (lambda d: d["layers"][0].update(choice="onehot", options={"channels": 0, "dims": 2}),
     "layers[0].options.channels: expected an integer from 1 to 2147483647, found 0 (an integer)"),
    (lambda d: d["layers"][0]["times_ms"].update(original=float("nan")),
     "layers[0].times_ms['original']: expected a finite number ≥ 0, found NaN"),
    (lambda d: d["layers"][0]["times_ms"].update(original=-1),
     "layers[0].times_ms['original']: expected a finite number ≥ 0, found -1 (an integer)"),
    (lambda d: d["layers"][0]["max_error"].update(patch_linear=-1e-3),
     "layers[0].max_error['patch_linear']: expected a number ≥ 0 (or Infinity/NaN), found -0.001 (a number)"),
    (lambda d: d["layers"][0].update(path="0..1"),
     "layers[0].path: expected a module path such as 'backbone.conv1' (non-empty names joined by '.'), "
     "found '0..1' (a string)"),
    (lambda d: d["layers"].append(dict(d["layers"][3], path="5.1")),
     "layers[3] ('5') and layers[4] ('5.1') name the same or nested layers; a plan has one entry per layer"),
    (lambda d: d["layers"][0].pop("choice"), "layers[0]: missing field 'choice' (the form to build)"),
    (lambda d: d.update(layers={"0": "fold"}), "layers: expected a list of layer entries, found an object with "
     "keys '0'"),
    (lambda d: d.update(memory_format="nhwc"),
     "memory_format: expected one of 'contiguous', 'channels_last', found 'nhwc' (a string)"),
    (lambda d: d.update(cost=""), "cost: expected a non-empty string, found '' (a string)"),
])
def test_schema_errors_name_the_file_the_field_and_both_values(tmp_path, edit, message):
    data = valid_plan_dict()
    edit(data)
    path = write(tmp_path, data)
    with pytest.raises(FoldError) as err:
        Plan.load(path)
    assert str(err.value) == f"plan file {str(path)!r}: {message}{HINT}"


def test_duplicate_keys_are_refused():
    text = json.dumps(valid_plan_dict()).replace('"device"', '"memory_format": "channels_last", "device"', 1)
    with pytest.raises(FoldError) as err:
        Plan.from_json(text)
    assert str(err.value) == f"plan JSON text: key 'memory_format' appears twice in one object{HINT}"


def test_plan_for_another_model_names_the_layer(tmp_path, model_and_ref):
    model, _, _ = model_and_ref
    data = valid_plan_dict()
    data["layers"][1]["options"]["block"] = [2]
    path = write(tmp_path, data)
    with pytest.raises(FoldError) as err:
        apply_plan(model, path)
    assert str(err.value) == (f"plan file {str(path)!r}: layers[1]: options.block [2] has 1 entries but the layer "
                              "is 2-D (Conv2d 8→16 k3×3 s2×2 p1×1); the plan was made for another model: "
                              "re-run pixelfold.tune")
    data["layers"][1]["options"]["block"] = [3, 3]
    with pytest.raises(FoldError) as err:
        apply_plan(model, json.dumps(data))
    assert str(err.value).startswith("plan JSON text: layers[1]: cannot build fold(block=[3, 3],order=crd) of "
                                     "Conv2d 8→16 k3×3 s2×2 p1×1: ")
    data["layers"][1]["path"] = "backbone.stem"
    with pytest.raises(FoldError) as err:
        apply_plan(model, json.dumps(data))
    assert str(err.value) == ("plan JSON text: layers[1]: the plan names layer 'backbone.stem', which this model "
                              "does not have; the plan was made for another model: re-run pixelfold.tune")


def test_an_original_entry_is_checked_too(model_and_ref):
    model, _, _ = model_and_ref
    data = valid_plan_dict()
    data["layers"] = [dict(data["layers"][0], choice="original", options={}, spec="Conv2d 3→8 k2×2 s2×2 p0×0")]
    with pytest.raises(FoldError, match="but the plan expects Conv2d Conv2d 3→8 k2×2"):
        apply_plan(model, json.dumps(data))


# ---------------------------------------------------------------------------- what apply_plan accepts
def test_apply_plan_takes_json_text_a_path_and_a_plan(tmp_path, model_and_ref):
    model, x, ref = model_and_ref
    plan = Plan.from_dict(valid_plan_dict())
    path = tmp_path / "plan.json"
    plan.save(path)
    for given in (plan.to_json(), "\n  " + plan.to_json(), str(path), path, plan):  # to_json() used to fail
        out = apply_plan(model, given)
        assert [type(m).__name__ for m in out] == ["PatchLinear", "ReLU", "PhaseConv", "ReLU",
                                                   "SubpixelConvTranspose", "Conv2d"]
        torch.testing.assert_close(out(x), ref, rtol=1e-9, atol=1e-9)
    with pytest.raises(FoldError) as err:
        apply_plan(model, plan.to_json().encode())
    assert str(err.value) == "plan must be a pixelfold.Plan, a path to a plan file or JSON text, got bytes"
    with pytest.raises(FoldError) as err:
        apply_plan(model, "")
    assert str(err.value) == "plan is an empty string; give a Plan, a path to a plan file, or the JSON text"
    with pytest.raises(FoldError) as err:
        apply_plan("not a model", plan)
    assert str(err.value) == "apply_plan needs an nn.Module, got str"


def test_a_plan_object_is_validated_like_a_file(model_and_ref):
    model, x, ref = model_and_ref
    spec = str(pixelfold.ConvSpec.from_module(model[2]))
    ok = Plan([LayerPlan("2", "Conv2d", spec, "fold", {"block": (2, 2)})], "cpu", "x")  # a tuple is a JSON list
    torch.testing.assert_close(apply_plan(model, ok)(x), ref, rtol=1e-9, atol=1e-9)
    bad = Plan([LayerPlan("2", "Conv2d", spec, "fold", {"block": [2, 0]})], "cpu", "x")
    with pytest.raises(FoldError) as err:
        apply_plan(model, bad)
    assert str(err.value) == f"plan: layers[0].options.block[1]: expected an integer from 1 to 1024, found 0 (an integer){HINT}"
    odd = Plan([LayerPlan("2", "Conv2d", spec, "fold", {"block": [2, 2], "fn": print})], "cpu", "x")
    with pytest.raises(FoldError, match="^plan: not JSON-serialisable"):
        apply_plan(model, odd)


def test_older_plans_without_reason_or_cost_load(tmp_path):
    data = valid_plan_dict()  # as tune wrote it before reason/cost existed
    assert "cost" not in data and all("reason" not in lp for lp in data["layers"])
    plan = Plan.load(write(tmp_path, data))
    assert plan.cost == "wall time" and [lp.reason for lp in plan.layers] == ["", "", "", ""]
    data["cost"] = "vela cycles"
    data["layers"][0]["reason"] = "fewest NPU cycles"
    plan = Plan.load(write(tmp_path, data))
    assert plan.cost == "vela cycles" and plan.layers[0].reason == "fewest NPU cycles"
    assert Plan.from_json(plan.to_json()) == plan
    text = str(plan)
    assert text.splitlines()[0].split() == ["layer", "spec", "kept", "original", "cost", "fastest", "form",
                                            "measured", "cost", "ratio", "why"]
    assert "fewest NPU cycles" in text and text.endswith("(memory format contiguous, cost: vela cycles)")


def test_reexports_are_the_same_objects():
    import pixelfold.plan as plan_module

    tune_module = importlib.import_module("pixelfold.tune")  # `pixelfold.tune` is the function
    for name in ("Plan", "LayerPlan", "apply_plan", "PLAN_SCHEMA"):
        assert getattr(tune_module, name) is getattr(plan_module, name)
    assert pixelfold.Plan is Plan and pixelfold.apply_plan is apply_plan and pixelfold.LayerPlan is LayerPlan
    assert PLAN_SCHEMA == "pixelfold.plan/1"
    assert {"original", "fold", "patch_linear", "subpixel", "merge", "polyphase", "transposed"} <= set(CHOICES)


# ---------------------------------------------------------------------------- atomic, trainable, frozen
def test_inplace_is_atomic(model_and_ref):
    model, x, ref = model_and_ref
    net = copy.deepcopy(model)
    children = list(net.children())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    data = valid_plan_dict()
    data["layers"][2]["options"] = {"form": "shared"}
    data["layers"][3]["path"] = "1"  # the last entry does not fit: a ReLU, not the pair
    with pytest.raises(FoldError, match=r"layers\[3\]: layer '1' is ReLU"):
        apply_plan(net, json.dumps(data), inplace=True)
    assert list(net.children()) == children  # layers 0, 2, 4 were buildable but nothing was replaced
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    torch.testing.assert_close(net(x), ref, rtol=0, atol=0)


def test_planned_layers_stay_trainable_and_checkpoint_loadable(model_and_ref):
    model, x, _ = model_and_ref
    data = valid_plan_dict()
    del data["layers"][3]  # merge builds a new conv (other state-dict keys); the other three share Parameters
    planned = apply_plan(model, json.dumps(data))
    assert [getattr(m, "frozen", None) for m in planned] == [False, None, False, None, False, None]
    trained = small_net().double().eval()
    torch.manual_seed(1)
    for p in trained.parameters():  # a checkpoint with other weights
        p.data.normal_()
    planned.load_state_dict(trained.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(planned(x), trained(x), rtol=1e-9, atol=1e-9)  # frozen forms kept old weights
    opt = torch.optim.SGD(planned.parameters(), lr=0.1)
    before = planned(x).detach()
    planned(x).square().sum().backward()
    opt.step()
    assert (planned(x) - before).abs().max() > 1e-3  # training moves the planned layers


def test_inplace_keeps_the_users_parameters_for_an_optimizer(model_and_ref):
    model, x, _ = model_and_ref
    net = copy.deepcopy(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    apply_plan(net, Plan.from_dict(valid_plan_dict()), inplace=True)
    before = net[0](x).detach()
    net[0](x).sum().backward()
    opt.step()
    assert (net[0](x) - before).abs().max() > 1e-3


def test_freeze_true_bakes_the_forms(model_and_ref):
    model, x, ref = model_and_ref
    frozen = apply_plan(model, Plan.from_dict(valid_plan_dict()), freeze=True)
    assert [getattr(m, "frozen", None) for m in frozen] == [True, None, True, None, True, None]
    torch.testing.assert_close(frozen(x), ref, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------- __str__ says why
def test_str_says_why_a_layer_kept_the_original():
    def lp(path, choice, times, errors, reason=""):
        return LayerPlan(path, "Conv2d", "spec", choice, {}, times, errors, reason)

    layers = [
        lp("a", "original", {"original": 1.0}, {"fold(block=[2, 2])": 0.5}),
        lp("b", "original", {"original": 1.0, "fold": 0.99}, {"fold": 0.0}),
        lp("c", "original", {"original": 1.0, "fold": 0.01}, {"fold": 0.0}),
        lp("d", "fold", {"original": 1.0, "fold": 0.5}, {"fold": 0.0}),
        lp("e", "original", {"original": 1.0, "fold": 0.01}, {"fold": 0.0}, reason="kept by hand"),
        lp("f", "original", {"original": 1.0}, {}),
    ]
    reverted = Plan(layers, "cpu", "x", model_time_ms={"original": 1.0, "tuned": 1.0, "original/contiguous": 1.0,
                                                        "tuned/contiguous": 0.99})
    rows = {line.split()[0]: line for line in str(reverted).splitlines()[2:-1]}
    assert rows["a"].endswith("not verified: fold(block=[2, 2]) (max error 0.5)")
    assert rows["b"].endswith("within noise margin 3% (ratio 0.99)")
    assert rows["c"].endswith("whole model not faster: kept original")  # was 'original … 0.01' with no reason
    assert rows["d"].endswith("fastest verified form")
    assert rows["e"].endswith("kept by hand")
    assert rows["f"].endswith("no other form could be built")
    kept = Plan(layers, "cpu", "x", model_time_ms={"original": 1.0, "tuned": 0.6, "original/contiguous": 1.0,
                                                    "tuned/contiguous": 0.6})
    rows = {line.split()[0]: line for line in str(kept).splitlines()[2:-1]}
    assert rows["c"].endswith("not chosen (the plan records no reason)")
    assert rows["b"].endswith("within noise margin 3% (ratio 0.99)")


def test_save_is_atomic(tmp_path):
    plan = Plan.from_dict(valid_plan_dict())
    with pytest.raises(OSError):
        plan.save(tmp_path / "missing" / "plan.json")
    assert list(tmp_path.iterdir()) == []
    plan.save(tmp_path / "plan.json")
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    assert Plan.load(tmp_path / "plan.json") == plan
