"""Issue 9 regressions at the layer API's boundary: checkpoints, frozen forms, hooks, sizes, RNG, arguments.

Each test names the item of issue 9 it pins; each failed on the main of 2026-11-28.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

import pixelfold as pf
from pixelfold import FoldError
from pixelfold.spec import ConvSpec, as_tuple


def _conv(*args, seed=0, **kw):
    torch.manual_seed(seed)
    return nn.Conv2d(*args, **kw).double()


# ---------------------------------------------------------------------------- item 1: frozen forms and checkpoints
@pytest.mark.parametrize("build", [
    lambda c: pf.fold(c, 2),
    lambda c: pf.polyphase(c, 2),
    lambda c: pf.fold(c, 2, order="dcr"),
])
def test_frozen_form_loads_a_checkpoint(build):
    conv = _conv(3, 8, 3, stride=2, padding=1)
    m = build(conv).freeze().eval()
    trained = _conv(3, 8, 3, stride=2, padding=1, seed=1)
    m.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(2, 3, 13, 12, dtype=torch.float64)
    torch.testing.assert_close(m(x), trained(x), rtol=0, atol=1e-12)


def test_frozen_subpixel_and_patch_linear_load_a_checkpoint():
    torch.manual_seed(0)
    up, up2 = nn.ConvTranspose2d(4, 3, 4, 2, 1).double(), nn.ConvTranspose2d(4, 3, 4, 2, 1).double()
    for form in ("shared", "phases"):
        m = pf.subpixel(up, form).freeze().eval()
        m.load_state_dict(up2.state_dict())
        x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
        torch.testing.assert_close(m(x), up2(x), rtol=0, atol=1e-12)
    patch, patch2 = _conv(3, 8, 4, stride=4), _conv(3, 8, 4, stride=4, seed=3)
    m = pf.PatchLinear(patch).freeze().eval()
    m.load_state_dict(patch2.state_dict())
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), patch2(x), rtol=0, atol=1e-12)


def test_frozen_form_trains_in_train_mode():
    conv = _conv(3, 8, 3, stride=2, padding=1)
    m = pf.fold(conv, 2).freeze().train()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    m(x).square().sum().backward()
    ref = copy.deepcopy(conv)
    ref(x).square().sum().backward()
    assert conv.weight.grad is not None
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(conv.bias.grad, ref.bias.grad, rtol=0, atol=1e-10)


def test_torch_save_stores_no_gather_maps_and_reloads_exactly():
    conv = _conv(64, 128, 3, stride=2, padding=1)
    for m in (pf.fold(conv, 2), pf.fold(conv, 2).freeze(), pf.subpixel(nn.ConvTranspose2d(64, 32, 4, 2, 1).double()),
              pf.PatchLinear(_conv(3, 64, 4, stride=4)).freeze()):
        buf = io.BytesIO()
        torch.save(m, buf)
        params = sum(p.numel() * p.element_size() for p in m.parameters())
        assert buf.tell() < params + 20_000  # the Parameters and a little pickle overhead: no int64 maps, no baked copy
        buf.seek(0)
        back = torch.load(buf, weights_only=False)
        x = torch.randn(1, back.in_channels, 12, 12, dtype=torch.float64)
        assert back.frozen == m.frozen
        torch.testing.assert_close(back(x), m(x), rtol=0, atol=0)
        assert pickle.loads(pickle.dumps(m)).weight_index.shape == m.weight_index.shape


def test_deepcopy_keeps_sharing_and_maps():
    conv = _conv(3, 8, 3, stride=2, padding=1)
    model = nn.Sequential(pf.fold(conv, 2), nn.ReLU())
    twin = copy.deepcopy(model)
    assert twin[0].weight is not conv.weight and twin[0].weight_index is not model[0].weight_index
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------- sizes of the gather maps and forms
def test_phase_map_does_not_grow_with_channels():
    m = pf.fold(nn.Conv2d(1024, 2048, 1, stride=2, bias=False), 2)
    assert m.weight_index.numel() <= 4  # one phase read (1×1/2), one tap
    m = pf.polyphase(nn.Conv2d(64, 64, 3, bias=False), 4)
    assert m.weight_index.numel() == 16 * 16 * 2 * 2


def test_huge_form_is_refused_with_numbers():
    with pytest.raises(FoldError) as err:
        pf.polyphase(nn.Conv2d(64, 64, 3), 16)
    text = str(err.value)
    assert text.startswith("the form's inner conv would be Conv2d 16384→16384 k2×2 s1×1 p0×0 with 1,073,741,824 "
                           "weights (4.0 GiB, above pixelfold.layers.MAX_FORM_BYTES = 1.0 GiB); use a smaller block")
    assert "polyphase(conv, 8): 67,108,864 weights" in text and "raise pixelfold.layers.MAX_FORM_BYTES" in text


# ---------------------------------------------------------------------------- item 4: weights computed in forward, hooks
def _constructors():
    return {
        "fold": lambda c: pf.fold(c, 2),
        "polyphase": lambda c: pf.polyphase(c, 2),
        "to_space": lambda c: pf.to_space(c, 1),
        "to_depth": lambda c: pf.to_depth(c, 2),
        "PatchLinear": pf.PatchLinear,
        "merge": lambda c: pf.merge(pf.SpaceToDepth(1), c),
        "transposed": lambda c: pf.transposed(nn.Sequential(c, nn.PixelShuffle(1))),
    }


def _patch():  # a conv every constructor above accepts when plain (stride = kernel = 2, no padding)
    return nn.Conv2d(4, 4, 2, stride=2)


@pytest.mark.parametrize("name", list(_constructors()))
def test_plain_patch_conv_is_accepted(name):
    conv = _patch() if name != "transposed" else nn.Conv2d(4, 4, 1)
    _constructors()[name](conv)


@pytest.mark.parametrize("name", list(_constructors()))
@pytest.mark.parametrize("wrap, expect", [
    (lambda c: nn.utils.spectral_norm(c), "has torch.nn.utils.spectral_norm"),
    (lambda c: nn.utils.weight_norm(c), "has torch.nn.utils.weight_norm"),
    (lambda c: nn.utils.parametrizations.weight_norm(c), "computes its weight with a parametrization"),
    (lambda c: (c.register_forward_hook(lambda m, i, o: o), c)[1], "has forward hooks that a replacement would not run"),
    (lambda c: (c.register_forward_pre_hook(lambda m, i: None), c)[1], "has forward pre-hooks that"),
    (lambda c: (c.register_full_backward_hook(lambda m, gi, go: None), c)[1], "has backward hooks that"),
])
def test_hidden_weight_or_hooks_are_refused(name, wrap, expect):
    conv = _patch() if name != "transposed" else nn.Conv2d(4, 4, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        conv = wrap(conv)
    with pytest.raises(FoldError, match=expect):
        _constructors()[name](conv)


def test_spectral_norm_message_in_full():
    with pytest.raises(FoldError) as err:
        pf.fold(nn.utils.spectral_norm(nn.Conv2d(3, 4, 3, 2, 1)), 2)
    assert str(err.value) == (
        "fold: Conv2d has torch.nn.utils.spectral_norm (a hook that divides weight by its largest singular value in "
        "forward, so .weight is stale before that): pixelfold would build from a stale weight; call "
        "torch.nn.utils.remove_spectral_norm(module) first (it bakes the normalised weight)")


def test_subpixel_refuses_weight_norm_and_hooks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        up = nn.utils.weight_norm(nn.ConvTranspose2d(4, 4, 4, 2, 1))
    with pytest.raises(FoldError, match="subpixel: ConvTranspose2d has torch.nn.utils.weight_norm"):
        pf.subpixel(up)
    up = nn.ConvTranspose2d(4, 4, 4, 2, 1)
    up.register_full_backward_hook(lambda m, gi, go: None)
    with pytest.raises(FoldError, match="subpixel: ConvTranspose2d has backward hooks"):
        pf.subpixel(up)


def test_lazy_and_quantized_convs_get_their_own_message():
    with pytest.raises(FoldError, match="fold takes a float nn.Conv1d/2d/3d; nn.LazyConv2d is not materialised yet"):
        pf.fold(nn.LazyConv2d(4, 3, stride=2), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.nn.quantized.Conv2d(4, 4, 3, stride=2)
    with pytest.raises(FoldError, match="is a quantized conv .* rewrite the float model first, then quantize it"):
        pf.fold(q, 2)


# ---------------------------------------------------------------------------- messages and small things
def test_constructors_do_not_advance_the_global_rng():
    conv, strided = nn.Conv2d(16, 8, 3, padding=1), nn.Conv2d(4, 8, 4, stride=2, padding=2)
    focus = nn.Sequential(pf.FocusSlice(), nn.Conv2d(12, 8, 3, padding=1))
    shuffle = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.PixelShuffle(2))
    up = pf.subpixel(nn.ConvTranspose2d(4, 4, 4, 2, 1))
    state = torch.random.get_rng_state()
    pf.to_space(conv, 2)
    pf.to_depth(strided, 2)
    pf.merge(focus)
    pf.transposed(shuffle)
    up.to_transposed()
    assert torch.equal(state, torch.random.get_rng_state())


def test_float_blocks_are_refused_not_truncated():
    with pytest.raises(FoldError, match=r"block must be an int or a tuple of 2 ints, got \(2.7, 2\)"):
        as_tuple((2.7, 2), 2, "block")
    with pytest.raises(FoldError):
        pf.space_to_depth(torch.zeros(1, 1, 4, 4), (2.7, 2))
    assert as_tuple(torch.tensor(2), 2, "block") == (2, 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel=0), "kernel (0, 0) must be positive ints in every dim"),
    (dict(kernel=3, stride=0), "stride (0, 0) must be positive ints in every dim"),
    (dict(kernel=3, dilation=(1, -1)), "dilation (1, -1) must be positive ints in every dim"),
    (dict(kernel=3, padding=-1), "padding -1 must be non-negative (crop the input instead)"),
    (dict(kernel=3, groups=2), "in_channels 3 and out_channels 8 must both be divisible by groups 2"),
])
def test_conv_spec_validates(kwargs, message):
    with pytest.raises(FoldError) as err:
        ConvSpec.make(3, 8, **kwargs)
    assert str(err.value) == message


# ---------------------------------------------------------------------------- item 3: grouped conv + dcr/focus d2s
@pytest.mark.parametrize("order", ["dcr", "focus", "crd"])
@pytest.mark.parametrize("groups, out_per_phase, block", [(2, 4, 2), (2, 1, 2), (4, 2, 2), (3, 2, 3), (2, 3, 2)])
def test_transposed_of_grouped_conv_is_exact_in_every_order(order, groups, out_per_phase, block):
    R = block * block
    torch.manual_seed(0)
    conv = nn.Conv2d(2 * groups, out_per_phase * R, 3, padding=1, groups=groups, bias=False).double()
    seq = nn.Sequential(conv, pf.DepthToSpace(block, order))
    t = pf.transposed(seq)
    x = torch.randn(2, 2 * groups, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(t(x), seq(x), rtol=0, atol=1e-12)


def test_issue_example_grouped_dcr_transposed():
    net = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1, groups=2, bias=False), pf.DepthToSpace(2, "dcr"))
    new, report = pf.rewrite(net, [pf.Rule("transposed")], example_inputs=torch.randn(1, 4, 6, 6))
    assert report.ok and [e.status for e in report.entries] == ["changed"]
    x = torch.randn(3, 4, 7, 5)
    torch.testing.assert_close(new(x), net(x), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- item 2: verification is never vacuous
def _wrong_rule():
    def wrong(module, spec):  # right bias, wrong weight: equal to the original on all-zero inputs
        other = nn.Conv2d(**spec.module_kwargs())
        other.bias = module.bias
        return other
    return pf.Rule(wrong, where=lambda s: True)


@pytest.mark.parametrize("example", [torch.zeros(1, 4, 6, 6), torch.zeros(0, 4, 6, 6), torch.full((1, 4, 6, 6), 3.0)])
def test_wrong_rule_fails_on_zeros_empty_and_constant_examples(example):
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1))
    new, report = pf.rewrite(net, _wrong_rule(), example_inputs=example)
    assert [e.status for e in report.entries] == ["failed"], report
    assert "not equivalent on " in report.entries[0].reason
    assert new[0] is not None and torch.equal(new[0].weight, net[0].weight)


def test_report_says_what_each_layer_was_checked_on():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
    _, report = pf.rewrite(net, "no_stride", example_inputs=torch.zeros(1, 3, 16, 16))
    (entry,) = report.changed
    assert entry.checked_on == ("float64: random 1×3×16×16; resized 1×3×17×17; "
                                "1 empty/constant captured call(s) not counted")
    assert report.end_to_end_checked_on == "random 1×3×16×16"
    assert "end to end on random 1×3×16×16: max |Δ|" in report.summary()


def test_nothing_to_compare_is_refused():
    class OnlyZeros(nn.Module):  # a model that refuses anything but its all-zero example
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2)

        def forward(self, x):
            if bool(x.abs().sum() != 0):
                raise ValueError("only zeros, please")
            return self.conv(x)

    with pytest.raises(FoldError, match="example_inputs hold no data to compare on"):
        pf.rewrite(OnlyZeros(), "no_stride", example_inputs=torch.zeros(1, 3, 9, 9))


def test_to_depth_says_it_accepts_fewer_sizes():
    net = nn.Sequential(nn.Conv2d(3, 8, 4, stride=2, padding=2))
    new, report = pf.rewrite(net, pf.Rule("to_depth"), example_inputs=torch.randn(1, 3, 16, 16))
    (entry,) = report.changed
    assert entry.note == ("accepts fewer input sizes than the original: refuses 1×3×17×17, which the original "
                          "accepts")
    assert "notes:" in str(report) and entry.note in str(report)


def test_user_rule_that_only_works_at_the_captured_size_fails():
    def fixed_size(module, spec):
        fold = pf.fold(module, 2)

        class Fixed(nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = fold

            def forward(self, x):
                if x.shape[-1] != 16:
                    raise RuntimeError("built for 16×16 only")
                return self.inner(x)
        return Fixed()

    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1))
    _, report = pf.rewrite(net, pf.Rule(fixed_size), example_inputs=torch.randn(1, 3, 16, 16))
    assert report.entries[0].status == "failed"
    assert "refuses input 1×3×17×17, which the original accepts" in report.entries[0].reason


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_keep_exact_changes(dtype):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 7, stride=2, padding=3), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Conv2d(16, 4, 3, stride=2, padding=1)).to(dtype)
    new, report = pf.rewrite(net, "no_stride", example_inputs=torch.randn(2, 3, 32, 32).to(dtype))
    assert len(report.changed) == 3 and report.ok, report
    assert "float64 copies" in report.end_to_end_checked_on


@pytest.mark.parametrize("model, rules, message", [
    (None, "no_stride", "rewrite takes an nn.Module, got NoneType"),
    (nn.Conv2d(3, 3, 3), 42, "rules must be a profile name such as 'no_stride', a Profile, a Rule or a list of them, "
                             "got int 42"),
])
def test_rewrite_arguments_are_checked(model, rules, message):
    with pytest.raises(FoldError) as err:
        pf.rewrite(model, rules)
    assert str(err.value) == message


def test_torchscript_and_compiled_models_are_refused():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2))
    with pytest.raises(FoldError, match="is a TorchScript module"):
        pf.rewrite(torch.jit.script(net), "no_stride")
    with pytest.raises(FoldError, match="torch.compile wrapper"):
        pf.rewrite(torch.compile(net), "no_stride")


@pytest.mark.parametrize("kwargs, message", [
    (dict(order="bogus"), "order 'bogus' is not one of ('crd', 'dcr', 'focus')"),
    (dict(block=0), "block must be a positive int, a tuple of them or a callable spec -> block, got 0"),
    (dict(block=(2, 0)), "block must be a positive int, a tuple of them or a callable spec -> block, got (2, 0)"),
    (dict(block=2.5), "block must be a positive int, a tuple of them or a callable spec -> block, got 2.5"),
])
def test_rule_arguments_are_checked(kwargs, message):
    with pytest.raises(FoldError) as err:
        pf.Rule("fold", **kwargs)
    assert str(err.value) == message


def test_rewrite_refuses_backward_hooks():
    conv = nn.Conv2d(3, 8, 3, stride=2)
    conv.register_full_backward_hook(lambda m, gi, go: None)
    _, report = pf.rewrite(nn.Sequential(conv), "no_stride")
    assert report.entries[0].status == "skipped"
    assert "has backward hooks that a replacement would not run" in report.entries[0].reason


def test_a_list_is_one_argument_everywhere():
    from pixelfold.verify import as_args
    x = torch.randn(1, 3, 8, 8)
    assert as_args([x, x]) == ([x, x],) and as_args((x, x)) == (x, x) and as_args(x) == (x,)


# ---------------------------------------------------------------------------- item 1: tune / apply_plan
def _stem():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))


def test_planned_model_loads_a_trained_checkpoint():
    from pixelfold.tune import LayerPlan, Plan, apply_plan
    net = _stem()
    plan = Plan([LayerPlan("0", "Conv2d", "Conv2d 3→8 k4×4 s4×4 p0×0", "patch_linear"),
                 LayerPlan("2", "Conv2d", "Conv2d 8→8 k3×3 s2×2 p1×1", "fold", {"block": [2, 2]})],
                "cpu", torch.__version__)
    planned = apply_plan(net, plan)
    trained = _stem()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    planned.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(planned(x), trained(x), rtol=1e-5, atol=1e-5)
    assert not any(getattr(m, "frozen", False) for m in planned.modules())


def test_tune_inplace_keeps_the_users_parameters_and_optimizer():
    net = _stem()
    params = [id(p) for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(2, 3, 32, 32)
    tuned, plan = pf.tune(net, x, inplace=True, rounds=1, min_run_time=0.001, margin=-1.0, progress=False)
    assert tuned is net and [id(p) for p in tuned.parameters()] == params
    before = tuned(x).detach().clone()
    tuned(x).square().mean().backward()
    opt.step()
    assert not torch.allclose(tuned(x), before)  # the optimizer made before tuning still trains the model
    assert not any(getattr(m, "frozen", False) for m in tuned.modules())


def test_tune_freeze_is_opt_in_and_follows_checkpoints():
    net = _stem()
    x = torch.randn(1, 3, 32, 32)
    tuned, plan = pf.tune(net, x, rounds=1, min_run_time=0.001, margin=-1.0, progress=False, freeze=True,
                          candidates=["fold", "patch_linear"])
    trained = _stem()
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(-1)
    tuned.load_state_dict(trained.state_dict())
    torch.testing.assert_close(tuned.eval()(x), trained(x), rtol=1e-5, atol=1e-5)


def test_tune_and_rewrite_are_functions_and_modules():
    import pixelfold.rewrite
    import pixelfold.tune
    assert callable(pf.tune) and callable(pf.rewrite)
    assert pf.tune.Plan is pixelfold.tune.Plan and pf.rewrite.Rule is pf.Rule
    _, report = pf.rewrite(nn.Conv2d(3, 3, 3, stride=2), "no_stride")
    assert len(report.changed) == 1


@pytest.mark.parametrize("cls", [pf.SpaceToDepth, pf.DepthToSpace])
@pytest.mark.parametrize("args, message", [
    ((0,), "block (0,) must be positive in every dim"),
    (((2, 0),), "block (2, 0) must be positive in every dim"),
    ((2.5,), "block must be a positive int or a tuple of positive ints, got 2.5"),
    ((2, "bogus"), "order 'bogus' is not one of ('crd', 'dcr', 'focus')"),
])
def test_rearrangement_modules_check_their_arguments(cls, args, message):
    with pytest.raises(FoldError) as err:
        cls(*args)
    assert str(err.value) == message
