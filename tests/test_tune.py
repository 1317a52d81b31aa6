"""tune / apply_plan: exactness, plans, refusal of plans that do not fit. No timed assertions."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import pixelfold
from pixelfold import FoldError
from pixelfold.tune import PLAN_SCHEMA, LayerPlan, Plan, apply_plan, build_form, candidate_forms, tune

FAST = dict(rounds=1, min_run_time=0.001, progress=False)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=4),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1),
        nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(32, 4, 1)),
    )


def test_tune_keeps_function_and_writes_plan(tmp_path):
    net = small_net().eval()
    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tuned, plan = tune(net, x, memory_formats=("contiguous", "channels_last"), **FAST)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # user's model untouched
    torch.testing.assert_close(tuned(x), net(x), rtol=1e-5, atol=1e-5)
    assert [lp.path for lp in plan.layers] == ["0", "2", "4", "5"]
    for lp in plan.layers:
        assert "original" in lp.times_ms
        assert all(err < 1e-6 for err in lp.max_error.values())
    path = tmp_path / "plan.json"
    plan.save(path)
    data = json.loads(path.read_text())
    assert data["schema"] == PLAN_SCHEMA and data["torch_version"] == torch.__version__
    reapplied = apply_plan(net, path)
    torch.testing.assert_close(reapplied(x), net(x), rtol=1e-5, atol=1e-5)
    assert [type(m).__name__ for m in reapplied.children()] == [type(m).__name__ for m in tuned.children()]
    assert "layer" in str(plan) and "model: original" in str(plan)


@pytest.mark.parametrize(
    "choice, options, expected",
    [
        ("fold", {"block": [2, 2]}, pixelfold.PhaseConv),
        ("patch_linear", {}, pixelfold.PatchLinear),
    ],
)
def test_apply_plan_builds_each_form(choice, options, expected):
    net = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4))
    spec = str(pixelfold.ConvSpec.from_module(net[0]))
    plan = Plan([LayerPlan("0", "Conv2d", spec, choice, options)], "cpu", torch.__version__)
    out = apply_plan(net, plan)
    assert isinstance(out[0], expected) and isinstance(net[0], nn.Conv2d)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(out(x), net(x), rtol=1e-5, atol=1e-5)


def test_apply_plan_refuses_a_plan_for_another_model():
    net = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4))
    plan = Plan([LayerPlan("0", "Conv2d", "Conv2d 3→8 k4×4 s2×2 p0×0", "fold", {"block": [2, 2]})], "cpu", "x")
    with pytest.raises(FoldError, match="the plan expects Conv2d"):
        apply_plan(net, plan)
    plan.layers[0].path = "backbone.stem"
    with pytest.raises(FoldError, match="does not have"):
        apply_plan(net, plan)
    bad = json.loads(plan.to_json())
    bad["schema"] = "other/9"
    with pytest.raises(FoldError, match="schema"):
        Plan.from_json(json.dumps(bad))


def test_candidate_forms_cover_the_exact_forms():
    assert candidate_forms(nn.Conv2d(3, 8, 3)) == []
    assert candidate_forms(nn.Conv2d(3, 8, 3, stride=(2, 1))) == [("fold", {"block": (2, 1), "order": o})
                                                                  for o in ("crd", "dcr")]
    found = candidate_forms(nn.Conv2d(3, 8, 16, stride=16))
    assert found == ([("fold", {"block": (b, b), "order": o}) for b in (2, 4, 8, 16) for o in ("crd", "dcr")]
                     + [("patch_linear", {"order": o}) for o in ("crd", "dcr")])
    assert candidate_forms(nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, 4, 3))) == [("merge", {})]
    assert candidate_forms(nn.ConvTranspose1d(2, 2, 3, stride=1)) == []
    # the seed's stride-1 48×48 conv: every polyphase block within the MAC bound (issue 12)
    assert [o["block"] for n, o in candidate_forms(nn.Conv2d(1, 1, 48)) if o["order"] == "crd"] == [
        (2, 2), (4, 4), (8, 8), (16, 16)]
    assert candidate_forms(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.PixelShuffle(2))) == [
        ("transposed", {})]
    with pytest.raises(FoldError, match="unknown form"):
        build_form(nn.Conv2d(1, 1, 1), "magic", {})


def test_tune_inplace_replaces_layers_in_the_given_model():
    net = small_net().eval()
    x = torch.randn(1, 3, 32, 32)
    ref = net(x)
    out, plan = tune(net, x, inplace=True, margin=-1.0, **FAST)  # margin<0: prefer candidates
    assert out is net
    torch.testing.assert_close(net(x), ref, rtol=1e-5, atol=1e-5)


def test_tune_refuses_unknown_memory_format():
    with pytest.raises(FoldError, match="memory format"):
        tune(small_net(), torch.randn(1, 3, 32, 32), memory_formats=("nhwc",), **FAST)


def test_tune_channels_last_only_uses_it_as_the_baseline():
    net = small_net().eval()
    x = torch.randn(1, 3, 32, 32).to(memory_format=torch.channels_last)
    tuned, plan = tune(net, x, memory_formats=("channels_last",), **FAST)
    assert plan.memory_format == "channels_last" and set(plan.model_time_ms) >= {"original/channels_last"}
    assert "original/contiguous" not in plan.model_time_ms
    torch.testing.assert_close(tuned(x), net(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(FoldError, match="memory_formats is empty"):
        tune(net, x, memory_formats=(), **FAST)
