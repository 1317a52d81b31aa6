"""Whole-model rewriting (`pixelfold.rewrite`) and its fail-closed verification (`pixelfold.verify`).

Fast: small toy models and a few real architectures at 64×64, so it runs in every `make test`.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pixelfold
from pixelfold import FoldError, PhaseConv, SubpixelConvTranspose
from pixelfold import verify as V
from pixelfold.rewrite import LayerChange, Profile, RewriteReport, Rule, SamePadPhaseConv, rewrite

PLAIN = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# ---------------------------------------------------------------------------- helpers
def tree(model: nn.Module) -> list[tuple[str, str]]:
    return [(n, type(m).__name__) for n, m in model.named_modules()]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def strided_left(model: nn.Module) -> list[str]:
    """Paths of plain convs / transposed convs with stride > 1 still in the model."""
    return [n for n, m in model.named_modules() if type(m) in PLAIN and any(s > 1 for s in m.stride)]


def assert_no_stride(new: nn.Module, report: RewriteReport) -> None:
    skipped = {p for e in report.skipped + report.failed for p in e.path.split("+")}
    left = [p for p in strided_left(new) if p not in skipped]
    assert not left, f"strided layers left without a reason: {left}"
    for e in report.skipped + report.failed:
        assert e.reason, e


def e2e_close(model: nn.Module, new: nn.Module, x: torch.Tensor, tol: float = 1e-9) -> float:
    err = V.compare_modules(model, new, x, dtype=torch.float64)
    assert err <= tol, err
    return err


class Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class TinyUNet(nn.Module):
    """Encoder with strided convs, decoder with transposed convs and skip connections."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, padding=3), nn.ReLU())
        self.down = nn.ModuleList([Down(8, 16), Down(16, 32)])
        self.mid = nn.ModuleDict({"conv": nn.Conv2d(32, 32, 3, padding=1), "pool": nn.Conv2d(32, 32, 1, stride=1)})
        self.up = nn.ModuleList([
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),
            nn.ConvTranspose2d(32, 8, 3, stride=2, padding=1, output_padding=1),
        ])
        self.head = nn.Sequential(nn.Sequential(nn.ConvTranspose2d(16, 4, 2, stride=2)), nn.Conv2d(4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem(x)
        s1 = self.down[0](s0)
        s2 = self.down[1](s1)
        m = self.mid["pool"](self.mid["conv"](s2))
        u1 = torch.cat([self.up[0](m), s1], 1)
        u2 = torch.cat([self.up[1](u1), s0], 1)
        return self.head(u2)


@pytest.fixture
def unet() -> TinyUNet:
    torch.manual_seed(0)
    return TinyUNet().eval()


# ---------------------------------------------------------------------------- profiles and rules
def test_profile_parse_names_and_combinations() -> None:
    assert [r.transform_name for r in Profile.parse("no_stride").rules] == ["fold", "subpixel"]
    assert [r.transform_name for r in Profile.parse("no_transposed").rules] == ["subpixel"]
    p = Profile.parse("no_stride + max_kernel=3")
    assert p.name == "no_stride+max_kernel=3" and len(p.rules) == 3
    assert all(r.same_pad for r in Profile.parse("no_stride+same_pad").rules if r.transform_name == "fold")
    assert (Profile.no_stride() + Profile.no_transposed()).name == "no_stride+no_transposed"
    for bad, words in [("no_strides", "unknown profile"), ("max_kernel=x", "integer"), ("same_pad", "add-on"),
                       ("", "empty"), ("min_channels=0", "≥ 1")]:
        with pytest.raises(FoldError, match=words):
            Profile.parse(bad)


def test_rule_validation() -> None:
    with pytest.raises(FoldError, match="not one of"):
        Rule("squash")
    with pytest.raises(FoldError, match="form"):
        Rule("subpixel", form="diagonal")
    with pytest.raises(FoldError, match="callable"):
        Rule(42)  # type: ignore[arg-type]
    assert Rule("subpixel").types == (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    assert Rule(lambda m, s: m).types == PLAIN
    assert Rule("fold", types=nn.Conv2d).types == (nn.Conv2d,)


def test_rule_selection_by_type_name_and_predicate() -> None:
    conv = nn.Conv2d(3, 8, 3, stride=2)
    assert Rule("fold", name="stem*").selects("stem.0", conv)
    assert not Rule("fold", name="stem*").selects("body.stem", conv)
    assert Rule("fold", name="re:layer[0-9]+\\.0").selects("model.layer12.0.conv", conv)
    import re

    assert Rule("fold", name=re.compile(r"conv$")).selects("a.conv", conv)
    assert not Rule("fold", where=lambda s: s.in_channels > 3).selects("x", conv)
    assert Rule("fold", where=lambda s: s.stride == (2, 2)).selects("x", conv)
    assert not Rule("fold", types=nn.Conv1d).selects("x", conv)
    assert not Rule("fold").selects("x", nn.ConvTranspose2d(3, 3, 2, 2))


def test_rules_given_as_list_mixing_kinds() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(8, 8, 5, padding=2), nn.ConvTranspose2d(8, 3, 2, 2))
    new, report = rewrite(net, [Rule("polyphase", name="1", block=2), "no_transposed"])
    assert [e.status for e in report.entries] == ["kept", "changed", "changed"]
    assert report.rules == "polyphase,no_transposed"
    assert str(new[1].inner) == "Conv2d 32→32 k3×3 s1×1 p0×0"
    with pytest.raises(FoldError, match="no rules"):
        rewrite(net, [])


# ---------------------------------------------------------------------------- the walk, nesting, no mutation
def test_no_stride_on_nested_containers(unet: TinyUNet) -> None:
    x = torch.randn(1, 3, 40, 56)  # odd sizes (5×7) reach the last strided layer
    new, report = rewrite(unet, "no_stride", example_inputs=x)
    by_path = {e.path: e for e in report.entries}
    assert by_path["stem.0"].status == "changed" and by_path["stem.0"].transform == "fold"
    assert str(new.stem[0].inner) == "Conv2d 12→8 k4×4 s1×1 p0×0"
    assert isinstance(new.down[1].conv, PhaseConv)
    assert isinstance(new.up[0], SubpixelConvTranspose) and isinstance(new.head[0][0], SubpixelConvTranspose)
    assert by_path["mid.conv"].status == "kept" and by_path["mid.pool"].status == "kept"
    assert len(report.changed) == 6 and not report.failed and not report.skipped
    assert_no_stride(new, report)
    assert all(e.checked_on.startswith("float64: captured ") and "; random " in e.checked_on and e.max_error < 1e-9
               for e in report.changed)
    assert report.end_to_end_error is not None and report.end_to_end_error <= report.end_to_end_tolerance
    assert report.ok
    e2e_close(unet, new, x)
    e2e_close(unet, new, torch.randn(2, 3, 24, 40))  # exact on other sizes too


def test_verify_false_applies_the_same_changes_unchecked(unet: TinyUNet) -> None:
    x = torch.randn(1, 3, 40, 56)
    checked, _ = rewrite(unet, "no_stride", example_inputs=x)
    fast, report = rewrite(unet, "no_stride", example_inputs=x, verify=False)
    assert len(report.changed) == 6 and all(e.checked_on == "unverified" and e.max_error is None
                                            for e in report.changed)
    assert report.end_to_end_error is None and "verify=False" in report.summary()
    assert tree(fast) == tree(checked)
    e2e_close(unet, fast, x)


def test_user_model_is_not_mutated(unet: TinyUNet) -> None:
    unet.train()
    before_state, before_tree = snapshot(unet), tree(unet)
    flags = [m.training for m in unet.modules()]
    new, report = rewrite(unet, "no_stride", example_inputs=torch.randn(2, 3, 32, 32))
    assert len(report.changed) == 6
    assert same_state(before_state, snapshot(unet))  # BN running stats too: verification ran in eval mode
    assert tree(unet) == before_tree
    assert [m.training for m in unet.modules()] == flags
    assert new is not unet and new.training and all(m.training for m in new.modules())
    assert not any(p is q for p in new.parameters() for q in unet.parameters())


def test_inplace_rewrites_the_given_model(unet: TinyUNet) -> None:
    stem = unet.stem[0]
    new, report = rewrite(unet, "no_stride", inplace=True, example_inputs=torch.randn(1, 3, 32, 32))
    assert new is unet and isinstance(unet.stem[0], PhaseConv)
    assert unet.stem[0].weight is stem.weight  # the same Parameter: optimizers keep training it
    assert not strided_left(unet)


def test_state_dict_keys_and_values_survive(unet: TinyUNet) -> None:
    new, _ = rewrite(unet, "no_stride")
    assert same_state(snapshot(unet), snapshot(new))
    new.load_state_dict(unet.state_dict())  # strict: same keys both ways
    unet.load_state_dict(new.state_dict())


def test_shared_module_is_replaced_everywhere() -> None:
    conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)
    net = nn.Sequential(conv, nn.ReLU(), nn.Upsample(scale_factor=2), conv)
    x = torch.randn(1, 4, 16, 16)
    new, report = rewrite(net, "no_stride", example_inputs=x)
    assert len(report.entries) == 1 and report.entries[0].status == "changed"
    assert new[0] is new[3] and isinstance(new[0], PhaseConv)
    e2e_close(net, new, x)


def test_model_that_is_a_single_conv() -> None:
    conv = nn.Conv2d(3, 4, 5, stride=(2, 3), padding=2)
    new, report = rewrite(conv, "no_stride", example_inputs=torch.randn(1, 3, 17, 19))
    assert isinstance(new, PhaseConv) and new.inner.stride == (1, 1)
    assert report.entries[0].path == "" and report.ok


def test_train_mode_flags_are_kept() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4)).train()
    net[1].eval()
    new, _ = rewrite(net, "no_stride", example_inputs=torch.randn(2, 3, 9, 9))
    assert new.training and new[0].training and not new[1].training
    assert net.training and not net[1].training


# ---------------------------------------------------------------------------- profiles on layers
def test_max_kernel_profile_chooses_the_smallest_block() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 7, stride=2, padding=3),  # block 2 -> 4×4
        nn.Conv2d(8, 8, 5, stride=4, padding=2),  # block 2 -> 3×3 (4 not needed)
        nn.Conv2d(8, 8, (7, 3), stride=(4, 1), padding=(3, 1)),  # block (2, 1): 4×3
        nn.Conv2d(8, 8, 7, padding=3),  # stride 1: no block helps
        nn.Conv2d(8, 8, 3, stride=2, padding=1),  # already small: kept
    )
    x = torch.randn(1, 3, 67, 61)
    new, report = rewrite(net, "max_kernel=4", example_inputs=x)
    st = [e.status for e in report.entries]
    assert st == ["changed", "changed", "changed", "skipped", "kept"], st
    assert str(new[0].inner).startswith("Conv2d 12→8 k4×4")
    assert new[1].in_block == (2, 2) and str(new[1].inner).startswith("Conv2d 32→8 k3×3")
    assert new[2].in_block == (2, 1)
    assert "no block dividing the stride" in report.entries[3].reason
    assert "Rule('polyphase', block=2)" in report.entries[3].reason
    _, r3 = rewrite(net, "max_kernel=2", example_inputs=x)
    assert [e.status for e in r3.entries][:3] == ["skipped", "changed", "skipped"]  # 7/2 = 4 > 2; 3 at stride 1
    e2e_close(net, new, x)


def test_min_channels_profile() -> None:
    stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
    net = nn.Sequential(stem, nn.Conv2d(16, 16, 3, stride=2, padding=1))
    x = torch.randn(1, 3, 33, 33)
    new, report = rewrite(net, "min_channels=12", example_inputs=x)
    assert [e.status for e in report.entries] == ["changed", "kept"]
    assert new[0].inner.in_channels == 12
    new6, _ = rewrite(net, "min_channels=6")
    assert new6[0].in_block == (1, 2) and new6[0].inner.in_channels == 6
    _, r16 = rewrite(net, "min_channels=16")
    assert r16.entries[0].status == "skipped"
    assert "12 < min_channels 16" in r16.entries[0].reason and "polyphase" in r16.entries[0].reason
    e2e_close(net, new, x)


def test_no_transposed_profile_and_phases_form() -> None:
    net = nn.Sequential(nn.ConvTranspose2d(4, 4, 3, stride=1, padding=1), nn.ConvTranspose2d(4, 2, 4, 2, 1))
    x = torch.randn(1, 4, 7, 9)
    new, report = rewrite(net, "no_transposed", example_inputs=x)
    assert [e.status for e in report.entries] == ["changed", "changed"]
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in new.modules())
    newp, _ = rewrite(net, Rule("subpixel", form="phases"), example_inputs=x)
    assert newp[1].form == "phases"
    _, rs = rewrite(net, "no_stride")
    assert [e.status for e in rs.entries] == ["kept", "changed"]
    e2e_close(net, new, x)
    e2e_close(net, newp, x)


def test_named_transforms_polyphase_and_to_depth() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 8, stride=2, padding=2), nn.Conv2d(8, 8, 5, padding=2))
    x = torch.randn(1, 3, 36, 36)
    new, report = rewrite(net, [Rule("to_depth", name="0"), Rule("polyphase", name="1", block=2)], example_inputs=x)
    assert [e.transform for e in report.entries] == ["to_depth", "polyphase"]
    assert isinstance(new[0], nn.Sequential) and str(pixelfold.ConvSpec.from_module(new[0][1])).startswith(
        "Conv2d 12→8 k4×4 s1×1 p1×1")
    e2e_close(net, new, x)
    # to_depth needs padding divisible by the block: a reason, not a wrong model
    _, r = rewrite(nn.Conv2d(3, 8, 7, stride=2, padding=3), Rule("to_depth"))
    assert r.entries[0].status == "skipped" and "padding (3, 3) is not divisible by block 2" in r.entries[0].reason


# ---------------------------------------------------------------------------- pairs: merge / transposed
def test_merge_and_transposed_pairs_in_sequentials() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.PixelUnshuffle(2), nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(),
        nn.Sequential(pixelfold.FocusSlice(), nn.Conv2d(64, 8, 3, padding=1)),
        nn.Conv2d(8, 32, 3, padding=1, bias=False), nn.PixelShuffle(2),
    )
    x = torch.randn(1, 3, 32, 32)
    keys = set(net.state_dict())
    new, report = rewrite(net, [Rule("merge"), Rule("transposed")], example_inputs=x)
    assert [(e.path, e.transform, e.status) for e in report.entries] == [
        ("0+1", "merge", "changed"), ("3.0+3.1", "merge", "changed"), ("4+5", "transposed", "changed")]
    assert isinstance(new[0], nn.Identity) and str(pixelfold.ConvSpec.from_module(new[1])).startswith(
        "Conv2d 3→16 k6×6 s2×2 p2×2")
    assert isinstance(new[4], nn.ConvTranspose2d) and isinstance(new[5], nn.Identity)
    assert set(new.state_dict()) == keys  # indices kept
    e2e_close(net, new, x, tol=1e-8)


def test_transposed_pair_with_phase_dependent_bias_is_skipped() -> None:
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.PixelShuffle(2))  # random bias differs per phase
    new, report = rewrite(net, Rule("transposed"))
    assert report.entries[0].status == "skipped" and "bias differs between the phases" in report.entries[0].reason
    assert new[0].__class__ is nn.Conv2d


def test_undo_subpixel_and_focus_module() -> None:
    up = nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1)
    net = nn.Sequential(pixelfold.subpixel(up))
    new, report = rewrite(net, Rule("transposed"))
    assert report.entries[0].status == "changed" and type(new[0]) is nn.ConvTranspose2d

    class Focus(nn.Module):  # YOLOv5's
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(12, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))

    m = nn.Sequential(Focus(), nn.ReLU())
    x = torch.randn(1, 3, 16, 16)
    new, report = rewrite(m, Rule("merge"), example_inputs=x)
    assert report.entries[0].status == "changed" and type(new[0]) is nn.Conv2d
    e2e_close(m, new, x)


# ---------------------------------------------------------------------------- fail closed
def test_wrong_transform_is_reverted_and_reported() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2))
    x = torch.randn(1, 3, 16, 16)

    def wrong(module: nn.Module, spec: pixelfold.ConvSpec) -> nn.Module:
        return nn.Conv2d(**spec.module_kwargs())  # fresh random weights: not equivalent

    def wrong_shape(module: nn.Module, spec: pixelfold.ConvSpec) -> nn.Module:
        return nn.Conv2d(spec.in_channels, spec.out_channels, 1)

    def broken(module: nn.Module, spec: pixelfold.ConvSpec) -> nn.Module:
        raise RuntimeError("bug in my transform")

    def refuses(module: nn.Module, spec: pixelfold.ConvSpec) -> nn.Module:
        raise FoldError("cannot do this one exactly")

    for fn, status, words in [(wrong, "failed", ": max |Δ|"),
                              (wrong_shape, "failed", "structure or shape"),
                              (broken, "failed", "RuntimeError: bug in my transform"),
                              (refuses, "skipped", "cannot do this one exactly")]:
        for inputs in (x, None):
            new, report = rewrite(net, Rule(fn, where=lambda s: s.stride[0] > 1), example_inputs=inputs)
            assert [e.status for e in report.entries] == [status, status], (fn.__name__, report)
            assert all(words in e.reason for e in report.entries), report
            assert type(new[0]) is nn.Conv2d and torch.equal(new[0].weight, net[0].weight)
            assert report.entries[0].transform == fn.__name__
            if inputs is not None:
                assert report.end_to_end_error == 0.0
            assert not report.ok or status == "skipped"


def test_end_to_end_failure_is_localised_and_reverted() -> None:
    class DtypeDependent(nn.Module):
        """Exact in float64 (so the layer check passes), off by one in float32."""

        def __init__(self, conv: nn.Module) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y if x.dtype == torch.float64 else y + 1.0

    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3, stride=2))
    x = torch.randn(1, 3, 17, 17)
    rules = [Rule(lambda m, s: DtypeDependent(copy.deepcopy(m)), name="1", label="sneaky"), Rule("fold", name="0")]
    new, report = rewrite(net, rules, example_inputs=x)
    by = {e.path: e for e in report.entries}
    assert by["0"].status == "changed" and isinstance(new[0], PhaseConv)
    assert by["1"].status == "failed" and "whole model fails with it" in by["1"].reason
    assert type(new[1]) is nn.Conv2d
    assert report.end_to_end_error <= report.end_to_end_tolerance


def test_model_reading_conv_attributes_fails_closed() -> None:
    class ReadsStride(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.other = nn.Conv2d(4, 4, 3, stride=2, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            assert isinstance(self.conv, nn.Conv2d)  # code that checks the type of the layer it calls
            return self.other(y)

    net = ReadsStride()
    new, report = rewrite(net, "no_stride", example_inputs=torch.randn(1, 3, 16, 16))
    by = {e.path: e for e in report.entries}
    assert by["conv"].status == "failed" and "AssertionError" in by["conv"].reason
    assert by["other"].status == "changed" and type(new.conv) is nn.Conv2d
    assert report.ok is False and report.end_to_end_error <= report.end_to_end_tolerance


def test_convtranspose_called_with_output_size_is_rewritten() -> None:
    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.up(x, output_size=[2 * x.shape[-2], 2 * x.shape[-1]])

    net = Up()
    new, report = rewrite(net, "no_stride", example_inputs=torch.randn(1, 4, 5, 5))
    assert report.entries[0].status == "changed"
    assert isinstance(new.up, pixelfold.SubpixelConvTranspose) and report.end_to_end_error < 1e-5
    x = torch.randn(2, 4, 7, 6)
    torch.testing.assert_close(new(x), net(x), rtol=1e-5, atol=1e-5)


def test_end_to_end_tolerance_arguments() -> None:
    net = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3), nn.Conv2d(64, 64, 3, stride=2, padding=1))
    x = torch.randn(1, 3, 32, 32) * 100
    _, report = rewrite(net, "no_stride", example_inputs=x, atol=1e-3, rtol=0.0)
    assert report.end_to_end_tolerance == 1e-3
    _, report = rewrite(net, "no_stride", example_inputs=x, atol=0.0, rtol=1e-2)
    assert report.end_to_end_tolerance == pytest.approx(1e-2 * report.end_to_end_scale)


# ---------------------------------------------------------------------------- subclasses, hooks, hidden convs
def test_timm_conv_subclasses_are_rewritten_exactly_or_skipped_with_reasons() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    net = nn.Sequential(
        timm_layers.Conv2dSame(3, 8, 3, stride=2),
        timm_layers.StdConv2d(8, 8, 3, stride=2, padding=1),
        timm_layers.ScaledStdConv2d(8, 8, 3, stride=2, padding=1),
        timm_layers.BlurPool2d(8, stride=2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        timm_layers.StdConv2d(8, 8, 3, padding=1),  # stride 1: not wanted, kept
    )
    x = torch.randn(1, 3, 67, 67)
    new, report = rewrite(net, "no_stride", example_inputs=x)
    st = [(e.type, e.status) for e in report.entries]
    # StdConv2d / ScaledStdConv2d / BlurPool2d: folded exactly (pixelfold.hidden, tests/test_hidden.py)
    assert st == [("timm.layers.Conv2dSame", "skipped"), ("timm.layers.StdConv2d", "changed"),
                  ("timm.layers.ScaledStdConv2d", "changed"), ("timm.layers.BlurPool2d", "changed"),
                  ("Conv2d", "changed"), ("timm.layers.StdConv2d", "kept")], st
    reasons = [e.reason for e in report.skipped]
    assert "pads TF-'same' in forward (dynamic, asymmetric): not rewritten from attributes" in reasons[0]
    assert type(new[0]) is type(net[0])
    assert_no_stride(new, report)
    e2e_close(net, new, x)
    text = str(report)
    assert "wanted by the rules but not changed" in text and "Conv2dSame" in text

    # the bonus: Conv2dSame folded exactly with per-input TF-"same" padding
    new2, report2 = rewrite(net, "no_stride+same_pad", example_inputs=x)
    assert report2.entries[0].status == "changed" and isinstance(new2[0], SamePadPhaseConv)
    assert report2.entries[0].transform == "fold+same_pad"
    for size in ((67, 67), (64, 65), (9, 12)):
        e2e_close(net[0], new2[0], torch.randn(1, 3, *size))


def test_other_subclasses_hooks_and_parametrizations_are_skipped() -> None:
    class MyConv(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    hooked = nn.Conv2d(4, 4, 3, stride=2)
    hooked.register_forward_pre_hook(lambda m, args: None)
    para = torch.nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 4, 3, stride=2))
    net = nn.Sequential(MyConv(4, 4, 3, stride=2), hooked, para)
    new, report = rewrite(net, "no_stride")
    assert [e.status for e in report.entries] == ["skipped", "skipped", "skipped"]
    assert "may change its forward" in report.entries[0].reason
    assert "forward pre-hooks that a replacement would not run" in report.entries[1].reason
    assert "parametrized" in report.entries[2].reason
    # a user who names the class and brings a transform may rewrite it (and verification still applies)
    x = torch.randn(1, 4, 33, 33)

    def fold_doubled(m: nn.Module, spec: pixelfold.ConvSpec) -> nn.Module:
        plain = nn.Conv2d(**spec.module_kwargs())
        plain.load_state_dict(m.state_dict())
        plain.weight.data *= 2
        plain.bias.data *= 2
        return pixelfold.fold(plain, 2)

    new, report = rewrite(net, Rule(fold_doubled, types=MyConv), example_inputs=x)
    assert report.entries[0].status == "changed"
    e2e_close(net, new, x)


# ---------------------------------------------------------------------------- the report
def test_report_table_json_and_progress(unet: TinyUNet, capsys: pytest.CaptureFixture[str]) -> None:
    net = nn.Sequential(unet.stem, nn.Conv2d(8, 8, 7, padding=3), nn.Conv2d(8, 8, 3, stride=2, padding=1))
    _, report = rewrite(net, "max_kernel=3", progress=True)
    err = capsys.readouterr().err
    assert err.count("[pixelfold ") == 2 and err.count("[pixelfold]") == 1 and "skipped" in err
    text = str(report)
    lines = text.splitlines()
    assert lines[0].startswith("pixelfold rewrite [max_kernel=3]: 0 changed, 0 failed, 2 skipped, 1 kept")
    assert lines[1].split() == ["status", "path", "type", "transform", "before", "after", "MACs", "max", "err"]
    assert "end to end: not checked" in lines[0]
    assert text.count("kernel extent 7") == 2
    data = json.loads(report.to_json())
    assert data["counts"] == {"changed": 0, "failed": 0, "skipped": 2, "kept": 1}
    assert data["entries"][0]["before"] == "Conv2d 3→8 k7×7 s2×2 p3×3"
    assert isinstance(report.entries[0], LayerChange)
    _, quiet = rewrite(net, "no_stride")
    assert capsys.readouterr().err == ""
    assert quiet.changed[0].after.startswith("s2d 2×2 → Conv2d 12→8 k4×4")
    assert quiet.changed[0].mac_ratio == pytest.approx(4 * 16 / 49)  # 4 phases × 4×4 taps vs 7×7
    assert "×1.31" in str(quiet)
    assert quiet.verified_on == "random inputs" and quiet.end_to_end_error is None


# ---------------------------------------------------------------------------- verify
def test_capture_inputs_and_compare_modules() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 1))
    x = torch.randn(1, 3, 11, 11)
    cap = V.capture_inputs(net, x, ["0", "2"])
    assert torch.equal(cap["0"][0], x)
    assert (cap["2"][0] >= 0).all() and cap["2"][0].shape == (1, 4, 5, 5)
    with pytest.raises(FoldError, match="no submodule"):
        V.capture_inputs(net, x, ["7"])
    with pytest.raises(FoldError, match="example_inputs"):
        V.capture_inputs(net, torch.randn(1, 5, 11, 11), ["0"])
    assert V.compare_modules(net[0], pixelfold.fold(net[0], 2), x) < 1e-12
    assert V.compare_modules(net[0], nn.Conv2d(3, 4, 1), x) == math.inf
    assert V.compare_modules(net[0], pixelfold.fold(net[0], 2), x, dtype=torch.float32) < 1e-5
    assert net.training  # untouched


def test_output_error_structures() -> None:
    a = {"out": torch.ones(2), "aux": [torch.zeros(3)]}
    assert V.output_error(a, {"out": torch.ones(2), "aux": [torch.zeros(3)]}) == (0.0, 1.0)
    assert V.output_error(a, {"out": torch.ones(2)})[0] == math.inf
    nan = torch.tensor([float("nan"), 1.0])
    assert V.output_error(nan, nan.clone()) == (0.0, 1.0)
    assert V.output_error(nan, torch.tensor([0.0, 1.0]))[0] == math.inf


# ---------------------------------------------------------------------------- 1-D and 3-D
def test_1d_model() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 8, 9, stride=4, padding=4, padding_mode="reflect"), nn.GELU(),
        nn.Conv1d(8, 8, 3, stride=2, dilation=2, groups=4), nn.GELU(),
        nn.ConvTranspose1d(8, 4, 8, stride=4, padding=2),
    )
    x = torch.randn(2, 2, 203)
    new, report = rewrite(net, "no_stride", example_inputs=x)
    assert len(report.changed) == 3 and report.ok
    assert_no_stride(new, report)
    e2e_close(net, new, x)


def test_3d_model() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv3d(2, 4, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)), nn.ReLU(),
        nn.Conv3d(4, 4, 3, stride=2, padding=1, padding_mode="circular"), nn.ReLU(),
        nn.ConvTranspose3d(4, 2, (2, 4, 4), stride=(2, 2, 2), padding=(0, 1, 1)),
    )
    x = torch.randn(1, 2, 7, 13, 14)
    new, report = rewrite(net, "no_stride", example_inputs=x)
    assert len(report.changed) == 3 and report.ok
    assert new[0].in_block == (1, 2, 2)
    assert_no_stride(new, report)
    e2e_close(net, new, x)


# ---------------------------------------------------------------------------- real architectures
def _real(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("tv:"):
        tvm = pytest.importorskip("torchvision.models")
        return getattr(tvm, name[3:])(weights=None).eval()
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False).eval()


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v3_small", "resnet18d", "regnetx_002",
                                  "tf_efficientnet_b0"])
def test_real_models_no_stride(name: str) -> None:
    model = _real(name)
    x = torch.randn(1, 3, 64, 64)
    before = snapshot(model)
    new, report = rewrite(model, "no_stride+same_pad" if name.startswith("tf_") else "no_stride", example_inputs=x)
    assert report.changed and not report.failed, str(report)
    assert report.ok, str(report)
    assert_no_stride(new, report)
    assert not strided_left(new) or name.startswith("tf_")
    assert same_state(before, snapshot(model))
    assert same_state(before, snapshot(new))
    e2e_close(model, new, x, tol=1e-9 * max(1.0, V.output_error(model(x), model(x))[1]))


def test_real_model_skips_are_listed() -> None:
    model = _real("tf_efficientnet_b0")
    new, report = rewrite(model, "no_stride", example_inputs=torch.randn(1, 3, 64, 64))
    assert len(report.skipped) == 5 and all("Conv2dSame" in e.reason for e in report.skipped)
    assert len(report.changed) == 0  # every strided layer of tf_efficientnet_b0 is a Conv2dSame
    assert_no_stride(new, report)


# ---------------------------------------------------------------------------- torch.fx: pairs across modules
class SubpixelHead(nn.Module):
    """Space-to-depth and depth-to-space steps held as attributes, not in an nn.Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)
        self.stem = nn.Conv2d(12, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.shuffle = nn.PixelShuffle(2)
        self.side = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(self.unshuffle(x)))
        return self.shuffle(self.head(y)) + self.side(y).mean()


def test_fx_finds_pairs_across_modules() -> None:
    torch.manual_seed(0)
    net = SubpixelHead()
    x = torch.randn(1, 3, 16, 16)
    new, report = rewrite(net, [Rule("merge"), Rule("transposed")], example_inputs=x)
    assert [(e.path, e.status) for e in report.entries if e.status != "kept"] == [
        ("unshuffle+stem", "changed"), ("head+shuffle", "changed")]
    assert isinstance(new.unshuffle, nn.Identity) and isinstance(new.shuffle, nn.Identity)
    assert type(new.head) is nn.ConvTranspose2d
    e2e_close(net, new, x)


def test_fx_untraceable_model_falls_back_cleanly() -> None:
    class Untraceable(SubpixelHead):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = x * 2
            return super().forward(x)

    net = Untraceable()
    new, report = rewrite(net, [Rule("merge"), Rule("transposed"), "no_stride"], example_inputs=torch.randn(1, 3, 8, 8))
    assert not report.changed and not report.failed and type(new.stem) is nn.Conv2d

    class TwoUsers(SubpixelHead):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.head(torch.relu(self.stem(self.unshuffle(x))))
            return self.shuffle(z) + z.mean()  # the conv output is used twice: not a pair

    _, report = rewrite(TwoUsers(), Rule("transposed"), example_inputs=torch.randn(1, 3, 8, 8))
    assert not report.changed


# ---------------------------------------------------------------------------- property: any strided layer
@st.composite
def strided_layers(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, ...]]:
    dims = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    k = tuple(draw(st.integers(1, 5)) for _ in range(dims))
    s = tuple(draw(st.integers(1, 3)) for _ in range(dims - 1)) + (draw(st.integers(2, 3)),)
    d = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    bias = draw(st.booleans())
    size = tuple(draw(st.integers(7, 13)) for _ in range(dims))
    if draw(st.booleans()):
        p = tuple(draw(st.integers(0, dd * (kk - 1) // 2)) for kk, dd in zip(k, d))
        op = tuple(draw(st.integers(0, ss - 1)) for ss in s)
        op = tuple(min(o, max(ss, dd) - 1) for o, ss, dd in zip(op, s, d))
        cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]
        return cls(2 * groups, 2 * groups, k, s, p, op, groups, bias, d), size
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    p = tuple(draw(st.integers(0, min(kk, 2 if mode != "zeros" else kk))) for kk in k)
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    return cls(2 * groups, 2 * groups, k, s, p, d, groups, bias, padding_mode=mode), size


@settings(max_examples=30)
@given(strided_layers())
def test_no_stride_removes_any_strided_layer_exactly(case: tuple[nn.Module, tuple[int, ...]]) -> None:
    layer, size = case
    net = nn.Sequential(layer)
    x = torch.randn(1, layer.in_channels, *size)
    try:
        net(x)
    except RuntimeError:  # input too small for this layer: not a case
        return
    new, report = rewrite(net, "no_stride", example_inputs=x)
    assert [e.status for e in report.entries] == ["changed"], str(report)
    assert not strided_left(new) and report.ok
    e2e_close(net, new, x)
