"""NPU targets as data, the registry of forms, and the solver that rewrites only what a target rejects."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pixelfold as pf
from pixelfold import FoldError, forms, targets
from pixelfold.forms import Op
from pixelfold.spec import ConvSpec
from pixelfold.targets import Target, condition_holds
from pixelfold.targets.solver import expand, solve


# ---------------------------------------------------------------------------- the condition language
@pytest.mark.parametrize("attrs, key, cond, every, expected", [
    ({"stride": (4, 4)}, "stride", ">3", False, True),
    ({"stride": (4, 1)}, "stride", ">3", False, True),
    ({"stride": (4, 1)}, "stride", ">3", True, False),
    ({"kernel": (3, 5)}, "kernel", "odd", True, True),
    ({"kernel": (3, 4)}, "kernel", "odd", True, False),
    ({"kernel": (31, 1)}, "kernel", "1..31", True, True),
    ({"kernel": (32, 1)}, "kernel", "1..31", True, False),
    ({"kernel": (3, 7)}, "kernel_w", "<7", True, False),
    ({"kernel": (3, 7)}, "kernel_h", "<7", True, True),
    ({"kernel": (64, 64)}, "kernel_area", "1..4096", True, True),
    ({"in_channels": 24}, "in_channels", "%8", True, True),
    ({"in_channels": 20}, "in_channels", "%8", True, False),
    ({"stride": (2, 2)}, "stride", [[1, 1], [2, 2]], True, True),
    ({"stride": (2, 1)}, "stride", [[1, 1], [2, 2]], True, False),
    ({"block": (3, 3)}, "block", [2, 4], True, False),
    ({"order": "dcr"}, "order", "dcr", True, True),
    ({"order": "crd"}, "order", ["dcr", "focus"], True, False),
    ({"padding_valid": False}, "padding_valid", True, True, False),
    ({}, "rank", "<=4", True, True),      # an attribute the op lacks satisfies a requirement...
    ({}, "rank", "<=4", False, False),    # ...and never triggers a `when`
])
def test_conditions(attrs, key, cond, every, expected):
    assert condition_holds(attrs, key, cond, every) is expected


def test_bad_condition_syntax_fails_when_the_target_is_read():
    with pytest.raises(FoldError, match="condition '> three' is not a value"):
        Target.from_dict({"name": "x", "constraints": [{"ops": ["conv"], "require": {"stride": "> three"},
                                                        "message": "m"}]})
    with pytest.raises(FoldError, match=r"unknown keys \['requires'\]"):
        Target.from_dict({"name": "x", "constraints": [{"ops": ["conv"], "requires": {}, "message": "m"}]})
    with pytest.raises(FoldError, match="needs a 'message'"):
        Target.from_dict({"name": "x", "constraints": [{"ops": ["conv"]}]})
    with pytest.raises(FoldError, match="lowering 'rank5' is not one of"):
        Target.from_dict({"name": "x", "lowering": "rank5"})


def test_user_defined_target_files(tmp_path):
    data = {"name": "my-npu", "lowering": "rank4", "constraints": [
        {"ops": ["conv"], "require": {"stride": [1, 2]}, "message": "stride 1 or 2 only", "source": "my datasheet"}]}
    (tmp_path / "npu.json").write_text(json.dumps(data))
    (tmp_path / "npu.toml").write_text('name = "my-npu"\nlowering = "rank4"\n[[constraints]]\nops = ["conv"]\n'
                                       'require = { stride = [1, 2] }\nmessage = "stride 1 or 2 only"\n')
    for path in ("npu.json", "npu.toml"):
        t = targets.get(str(tmp_path / path))
        assert t.name == "my-npu" and [c.message for c in t.constraints] == ["stride 1 or 2 only"]
        new, report = pf.rewrite(nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1)), str(tmp_path / path),
                                 example_inputs=torch.randn(1, 3, 32, 32))
        assert [e.status for e in report.entries] == ["changed"]
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(FoldError, match="is not valid toml"):
        targets.get(str(tmp_path / "bad.toml"))
    with pytest.raises(FoldError, match="unknown target 'nope'; built-in targets: dla, ethos-n"):
        targets.get("nope")


@pytest.mark.parametrize("name", targets.names())
def test_builtin_targets_cite_their_sources(name):
    t = targets.get(name)
    assert t.sources and t.description
    for c in t.constraints:
        assert c.message and c.source, (name, c)
    judged = {"ethos-u55-128": "vela", "ethos-u65-256": "vela", "ethos-u85-256": "vela",
              "rk3588": "rknn", "rk3568": "rknn", "rk3576": "rknn", "rv1106": "rknn"}
    assert t.judge == judged.get(name) and t.judged == (name in judged)


# ---------------------------------------------------------------------------- the registry of forms
def test_lowered_rearrangements():
    d2s = Op("depth_to_space", block=(2, 2), order="dcr")
    assert expand([d2s], targets.get("onnxruntime")) == [d2s]
    assert [str(o) for o in forms.lowered(d2s, "rank4")] == ["reshape 2×2 dcr rank 4", "transpose 2×2 dcr rank 4",
                                                              "reshape 2×2 dcr rank 4"]
    assert [o.rank for o in forms.lowered(d2s, "reshape6")] == [6, 6, 4]
    assert len(forms.lowered(Op("depth_to_space", block=(2, 2), order="crd"), "rank4_nchw")) == 5  # + the c/phase swap
    with pytest.raises(FoldError, match="lowering 'rank5' is not one of"):
        forms.lowered(d2s, "rank5")
    torch_op = Op("depth_to_space", block=(2, 2), order="crd", note="torch")
    assert forms.lowered(torch_op, "rank4") == [torch_op]  # torch's PixelShuffle is exported natively


@settings(max_examples=60, deadline=None)
@given(dims=st.integers(1, 2), stride=st.integers(1, 4), kernel=st.integers(1, 5), padding=st.integers(0, 2),
       groups=st.sampled_from([1, 2]), transposed=st.booleans(), data=st.data())
def test_every_candidate_is_exact(dims, stride, kernel, padding, groups, transposed, data):
    torch.manual_seed(0)
    if transposed:
        padding = min(padding, kernel - 1)
        m = (nn.ConvTranspose1d, nn.ConvTranspose2d)[dims - 1](2 * groups, 2 * groups, kernel, stride, padding,
                                                                groups=groups).double()
    else:
        m = (nn.Conv1d, nn.Conv2d)[dims - 1](2 * groups, 4, kernel, stride, padding, groups=groups).double()
    size = data.draw(st.integers(max(kernel, 2 * padding + 1) + 1, 12))
    x = torch.randn(2, 2 * groups, *([size] * dims), dtype=torch.float64)
    ref = m(x)
    for cand in forms.candidates(m, input_shape=tuple(x.shape)):
        if cand.form != "original" and forms.FORMS[cand.form].restricts_sizes and any(
                size % b for b in cand.options["block"]):
            with pytest.raises(FoldError, match="not divisible by block"):  # to_depth: multiples of the block only
                cand.build(m)(x)
            continue
        got = cand.build(m)(x)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-10, msg=cand.label)


def test_pair_and_lone_rearrangement_candidates_are_exact():
    torch.manual_seed(0)
    units = [
        (nn.Sequential(nn.Conv2d(8, 27, 3, padding=1), nn.PixelShuffle(3)), (1, 8, 5, 6)),
        (nn.Sequential(pf.SpaceToDepth(2, "dcr"), nn.Conv2d(12, 5, 3)), (1, 3, 8, 10)),
        (nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, 5, 3, padding=1)), (2, 3, 8, 8)),
        (nn.Sequential(pf.FocusSlice(), nn.Conv2d(12, 5, 3, padding=1)), (1, 3, 8, 8)),
        (nn.PixelShuffle(2), (1, 12, 3, 4)),
        (pf.DepthToSpace(3, "dcr"), (1, 18, 3, 4)),
        (pf.SpaceToDepth(2, "focus"), (1, 3, 4, 6)),
    ]
    for unit, shape in units:
        unit = unit.double()
        x = torch.randn(*shape, dtype=torch.float64)
        labels = []
        for cand in forms.candidates(unit, input_shape=shape):
            torch.testing.assert_close(cand.build(unit)(x), unit(x), rtol=0, atol=1e-10, msg=cand.label)
            labels.append(cand.label)
        assert len(labels) >= 2, (unit, labels)


# ---------------------------------------------------------------------------- the solver
# (unit, input shape, target, expected form or None to keep) — the cases shared/ARCHITECTURE.md measured
CASES = [
    (lambda: nn.Conv2d(3, 16, 7, stride=4, padding=3), (1, 3, 64, 64), "ethos-u55-128", "fold"),
    (lambda: nn.Conv2d(3, 16, 7, stride=4, padding=3), (1, 3, 64, 64), "ethos-u85-256", None),
    (lambda: nn.Conv2d(3, 16, 8, stride=8), (1, 3, 64, 64), "ethos-u55-128", None),
    (lambda: nn.ConvTranspose2d(8, 8, 4, stride=4), (1, 8, 16, 16), "ethos-u55-128", "subpixel"),
    (lambda: nn.ConvTranspose2d(8, 8, 4, stride=4), (1, 8, 16, 16), "ethos-u85-256", None),
    (lambda: nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1), (1, 8, 16, 16), "ethos-u55-128", None),
    # litert-torch converts a strided ConvTranspose only with TFLite VALID/SAME cropping (FSRCNN's k9 s3 p4 op2 is not)
    (lambda: nn.ConvTranspose2d(8, 1, 9, stride=3, padding=4, output_padding=2), (1, 8, 16, 16), "ethos-u85-256",
     "subpixel"),
    (lambda: nn.ConvTranspose2d(8, 1, 9, stride=3, padding=3), (1, 8, 16, 16), "ethos-u85-256", None),
    (lambda: nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1), (1, 8, 16, 16), "ethos-u85-256", None),
    (lambda: nn.ConvTranspose2d(8, 8, 3, stride=3), (1, 8, 16, 16), "rk3588", "subpixel"),
    (lambda: nn.ConvTranspose2d(8, 8, 3, stride=3), (1, 8, 16, 16), "rk3576", None),
    # Vela 5.2 runs Focus slicing on the NPU: kept (tune(target=...) weighs merge by cycles)
    (lambda: nn.Sequential(pf.FocusSlice(), nn.Conv2d(12, 16, 3, padding=1)), (1, 3, 64, 64), "ethos-u55-128", None),
    (lambda: nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, 16, 3, padding=1)), (1, 3, 64, 64), "rk3568",
     "merge"),  # no space-to-depth runs on rk3568's NPU: merged into the conv
    (lambda: nn.ConvTranspose2d(8, 8, 3, stride=3), (1, 8, 16, 16), "rv1106", None),
    (lambda: nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.PixelShuffle(2)), (1, 8, 16, 16), "rv1106", None),
    # litert-torch writes torch's PixelShuffle as a rank-6 transpose: in Vela's size rule at 16², out of it at 128²
    (lambda: nn.Sequential(nn.Conv2d(8, 27, 3, padding=1), nn.PixelShuffle(3)), (1, 8, 16, 16), "ethos-u55-128",
     None),
    (lambda: nn.Sequential(nn.Conv2d(8, 256, 3, padding=1), nn.PixelShuffle(2)), (1, 8, 128, 128), "ethos-u55-128",
     "reorder"),
    (lambda: nn.Sequential(nn.Conv2d(8, 256, 3, padding=1), nn.PixelShuffle(2)), (1, 8, 128, 128), "ethos-u85-256",
     None),
    (lambda: nn.Sequential(nn.Conv2d(8, 27, 3, padding=1), nn.PixelShuffle(3)), (1, 8, 16, 16), "nnapi", "reorder"),
    (lambda: nn.PixelShuffle(3), (1, 27, 16, 16), "dla", "onehot"),
    (lambda: nn.Conv2d(3, 16, 8, stride=8), (1, 3, 64, 64), "tidl", "fold"),
]


@pytest.mark.parametrize("build, shape, target, expected", CASES)
def test_solver_rewrites_only_what_the_target_rejects(build, shape, target, expected):
    unit = build()
    t = targets.get(target)
    d = solve(unit, t, shape)
    assert (d.candidate.form if d.changed else None) == expected, d.reason
    if d.changed:
        assert not t.rejects(expand(d.candidate.ops, t))
        assert d.original_violations and d.reason.startswith(f"{target} rejects ")
        x = torch.randn(*shape)
        torch.testing.assert_close(d.candidate.build(unit)(x), unit(x), rtol=1e-5, atol=1e-5)
    else:
        assert d.reason == f"{target} runs it as it is"


def test_solver_says_why_when_nothing_fits():
    d = solve(nn.PixelShuffle(3), targets.get("ethos-n"), (1, 27, 8, 8))
    assert not d.changed
    assert d.reason.startswith("ethos-n rejects depth_to_space 3×3 crd: DepthToSpace: block size 2; "
                               "no exact form runs on it")


def test_solver_prefers_dcr_where_it_emits_fewer_ops():
    d = solve(nn.Conv2d(3, 16, 7, stride=4, padding=3), targets.get("ethos-u55-128"), (1, 3, 64, 64))
    assert d.candidate.options["order"] == "dcr"


# ---------------------------------------------------------------------------- rewrite with a target
class _SR(nn.Module):  # an ESPCN-like net with a k7/s4 stem and a stride-4 deconv
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 7, stride=4, padding=3)
        self.up = nn.ConvTranspose2d(16, 8, 4, stride=4)
        self.tail = nn.Sequential(nn.Conv2d(8, 27, 3, padding=1), nn.PixelShuffle(3))

    def forward(self, x):
        return self.tail(torch.relu(self.up(torch.relu(self.stem(x)))))


@pytest.mark.parametrize("target, changed", [
    ("ethos-u55-128", {"stem", "up"}),  # the PixelShuffle(3) at 32² is within Vela's transpose size rule
    ("rk3588", {"tail.0+tail.1"}),
    ("onnxruntime", set()),
])
def test_rewrite_for_a_target(target, changed):
    torch.manual_seed(0)
    model = _SR().eval()
    x = torch.randn(1, 3, 32, 32)
    new, report = pf.rewrite(model, target, example_inputs=x)
    assert {e.path for e in report.changed} == changed, report
    assert report.ok and not report.failed
    assert all(e.note.startswith(f"{target} rejects ") for e in report.changed)
    torch.testing.assert_close(new(x), model(x), rtol=1e-5, atol=1e-5)
    if not changed:
        assert all(type(a) is type(b) for a, b in zip(new.modules(), model.modules()))


def test_target_names_work_like_profiles():
    assert pf.Profile.parse("rk3588").name == "rk3588"
    assert pf.Rule("target", target="ethos-u55-128").transform_name == "ethos-u55-128"
    with pytest.raises(FoldError, match="unknown profile 'rk9999'; use one of .* or a target: dla, ethos-n"):
        pf.Profile.parse("rk9999")


# ---------------------------------------------------------------------------- tune by a compiler's cost model
def _fake_cycles(module, shape):
    """A stand-in compiler: cycles = MACs / 100, + 1000 per op; a k8/s8 conv is very slow (as Vela's U55 is)."""
    from pixelfold.targets.solver import macs_of
    slow = any(isinstance(m, nn.Conv2d) and m.stride == (8, 8) for m in module.modules())
    return macs_of(module, shape) / 100 * (25 if slow else 1), "fake"


def test_tune_for_a_target_by_its_cost_model():
    from pixelfold.tune_target import tune_for_target
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
                        nn.ReLU(), nn.ConvTranspose2d(16, 8, 4, stride=4))
    x = torch.randn(1, 3, 64, 64)
    tuned, plan = tune_for_target(net, x, "ethos-u55-128", cost=_fake_cycles, progress=False)
    by_path = {lp.path: lp for lp in plan.layers}
    assert by_path["0"].choice == "fold"            # on the NPU already, but 25× cheaper folded (Vela: 551k → 22k)
    assert by_path["2"].choice == "original"        # the cheapest form is the original: never more cycles
    assert by_path["4"].choice == "subpixel"        # the original is rejected (stride 4 deconv): infinite cost
    assert by_path["4"].times_ms["original"] == float("inf")
    assert "custom cost" in plan.cost and "ethos-u55-128" in plan.device
    torch.testing.assert_close(tuned(x), net(x), rtol=1e-5, atol=1e-5)


def test_tune_for_a_data_only_target_falls_back_to_macs_and_says_so(capsys):
    net = nn.Sequential(nn.Conv2d(3, 16, 7, stride=4, padding=3))
    tuned, plan = pf.tune(net, torch.randn(1, 3, 32, 32), target="tidl")
    assert plan.layers[0].choice == "fold"
    assert plan.cost.startswith("MACs among the forms tidl's constraints accept (no compiler judges it here")
    assert "choosing by the target's constraints and MACs instead" in capsys.readouterr().err


def _fake_judge_layers(calls):
    """A stand-in for pixelfold.judges.judge_layers: every layer on the NPU, cycles = MACs / 100."""
    from pixelfold.judges import Judgement, OpPlacement
    from pixelfold.targets.solver import macs_of

    def judge_layers(layers, target):
        calls.append(len(layers))
        return [Judgement(target, "vela", "fake", [OpPlacement(0, "CONV_2D", True, None, 1)],
                          npu_cycles=int(macs_of(m, s) / 100) + 1) for m, s in layers]
    return judge_layers


class _Twin(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ConvTranspose2d(16, 8, 4, stride=4))
        self.b = nn.Sequential(nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ConvTranspose2d(16, 8, 4, stride=4))

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_tune_for_a_target_compiles_each_layer_spec_once_in_one_run():
    from pixelfold.tune_target import CompilerCost, tune_for_target
    torch.manual_seed(0)
    # a.0 and b.0 are the same spec on the same input shape (different weights): compiled once
    net = _Twin()
    x = torch.randn(1, 3, 16, 16)
    calls: list[int] = []
    cost = CompilerCost("ethos-u55-128")
    cost._judge_layers = _fake_judge_layers(calls)
    tuned, plan = tune_for_target(net, x, "ethos-u55-128", cost=cost, progress=False)
    assert len(calls) == 1  # one compiler run for the whole model
    n_forms = sum(1 for lp in plan.layers for v in lp.times_ms.values() if v != float("inf"))
    assert cost.compiled == calls[0] < n_forms  # the repeated spec's forms were not judged twice
    assert cost.hits == n_forms  # every cost came from the memo filled by the one run
    by_path = {lp.path: lp for lp in plan.layers}
    assert by_path["a.0"].times_ms == by_path["b.0"].times_ms and len(by_path["a.0"].times_ms) > 1
    assert by_path["a.1"].choice == "subpixel" and by_path["a.1"].times_ms["original"] == float("inf")
    torch.testing.assert_close(tuned(x), net(x), rtol=1e-5, atol=1e-5)
    tune_for_target(net, x, "ethos-u55-128", cost=cost, progress=False)  # the same model again: nothing new
    assert len(calls) == 1


def test_tune_for_a_judged_target_without_its_environment_says_how_to_build_it(monkeypatch, capsys):
    import pixelfold.judges
    monkeypatch.setattr(pixelfold.judges, "env_available", lambda target: False)
    net = nn.Sequential(nn.Conv2d(3, 16, 7, stride=4, padding=3))
    tuned, plan = pf.tune(net, torch.randn(1, 3, 32, 32), target="ethos-u55-128")
    assert plan.layers[0].choice == "fold"
    assert plan.cost == ("MACs among the forms ethos-u55-128's constraints accept "
                         "(its judge environment is missing (build it with make npu-env))")
    assert ("tune: ethos-u55-128: its judge environment is missing (build it with make npu-env); "
            "choosing by the target's constraints and MACs instead") in capsys.readouterr().err


def test_vela_transpose_size_rule_is_what_rejects_torchs_pixel_shuffle():
    """Vela's rule is about sizes, not ranks: a rank-6 transpose runs while every product of 4 axes ≤ 2^16."""
    t = targets.get("ethos-u55-128")
    unit = nn.Sequential(nn.Conv2d(8, 256, 3, padding=1), nn.PixelShuffle(2))
    d = solve(unit, t, (1, 8, 128, 128))
    assert [v.message for v in d.original_violations] == [t.constraints[2].message]
    assert "Product of any N-2 axes" in d.original_violations[0].message
    core = [o for o in expand(forms.original_ops(unit, (1, 8, 128, 128)), t) if o.kind == "transpose"]
    # litert-torch's TRANSPOSE of (N·C, 2, 2, H·W) = (64, 2, 2, 16384): Vela says "has shape out of range"
    assert [o.rank for o in core] == [4] and core[0].attrs()["axes_product"] == 64 * 128 * 128
    assert not solve(unit, t, (1, 8, 8, 8)).original_violations  # 64·8·8 = 4096: on the NPU
    # measured with Vela 5.2 (U55), TRANSPOSE shapes from its reports: (16, 2, 2, 96·40) and (1, 3, 3, 256²) run,
    # (128, 2, 2, 64²) does not; PixelUnshuffle: (64, 2, 32², 2) runs, (8, 2, 128², 2) does not
    for shape, r, c, ok in (((1, 8, 96, 40), 2, 64, True), ((1, 8, 256, 256), 3, 9, True),
                            ((2, 8, 64, 64), 2, 256, False)):
        u = nn.Sequential(nn.Conv2d(8, c, 3, padding=1), nn.PixelShuffle(r))
        assert (not solve(u, t, shape).original_violations) == ok, (shape, c)
    for shape, ok in (((1, 64, 64, 64), True), ((1, 8, 256, 256), False)):
        u = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(shape[1] * 4, 8, 3, padding=1))
        assert (not solve(u, t, shape).original_violations) == ok, shape


def test_torch_lowering_is_validated():
    from pixelfold.targets.model import Target

    with pytest.raises(FoldError, match="torch_lowering 'rank6' is not one of \\('native', 'litert'\\)"):
        Target.from_dict({"name": "x", "torch_lowering": "rank6"})
