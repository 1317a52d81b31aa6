"""`pixelfold rewrite` and `pixelfold tune` on the command line (in-process), and model loading."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os

import pytest
import torch
from torch import nn

from pixelfold import FoldError
from pixelfold.cli import main
from pixelfold.commands import load_model


def tiny_model() -> nn.Module:
    """A factory for `module:factory` MODEL arguments."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1))


def test_rewrite_command_prints_report_and_writes_files(tmp_path, capsys):
    out, report = tmp_path / "m.pt", tmp_path / "r.json"
    rc = main(["rewrite", "test_commands:tiny_model", "--input-shape", "1,3,16,16", "--out", str(out),
               "--json", str(report), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "changed" in text and "fold" in text and "subpixel" in text
    data = json.loads(report.read_text())
    assert [e["status"] for e in data["entries"]] == ["changed", "changed"]
    model = torch.load(out, weights_only=False)
    x = torch.randn(2, 3, 10, 12)
    torch.manual_seed(0)
    torch.testing.assert_close(model(x), _seeded_tiny()(x), rtol=1e-5, atol=1e-5)


def _seeded_tiny() -> nn.Module:
    torch.manual_seed(0)
    return tiny_model().eval()


def test_tune_command_writes_a_plan(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    rc = main(["tune", "test_commands:tiny_model", "--input-shape", "1,3,16,16", "--plan", str(plan),
               "--rounds", "1", "--min-run-time", "0.001", "--quiet", "--channels-last"])
    assert rc == 0
    data = json.loads(plan.read_text())
    assert data["schema"] == "pixelfold.plan/1" and len(data["layers"]) == 2
    assert "fastest form measured" in capsys.readouterr().out


def test_rewrite_command_on_a_torchvision_model(capsys):
    assert main(["rewrite", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--quiet"]) == 0
    assert "7 changed" in capsys.readouterr().out


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["rewrite", "no_such_model_anywhere", "--quiet"]) == 2
    assert "no timm or torchvision model is called 'no_such_model_anywhere'" in capsys.readouterr().err
    with pytest.raises(FoldError, match="package.module:factory"):
        load_model("no_such_package:factory")


def test_bad_input_shape_is_an_argparse_error():
    with pytest.raises(SystemExit):
        main(["tune", "test_commands:tiny_model", "--input-shape", "3"])


# ---------------------------------------------------------------------------- factories for the error cases
CALLS: list[str] = []


def counted_model() -> nn.Module:
    """Records that it was built: an argument error must be reported before this runs."""
    CALLS.append("built")
    return tiny_model()


def raising_factory() -> nn.Module:
    raise RuntimeError("no GPU here")


def not_a_module() -> int:
    return 42


def needs_an_argument(width: int) -> nn.Module:
    return nn.Conv2d(3, width, 3)


NOT_CALLABLE = 7
MODEL_INSTANCE = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2))


def downloading_factory() -> nn.Module:
    torch.hub.load_state_dict_from_url("https://download.pytorch.org/models/resnet18-f37072fd.pth")
    return nn.Identity()


def err_of(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------------- argument errors: before the work
@pytest.mark.parametrize("args, message", [
    (["--input-shape", "0,3,16,16"],
     "argument --input-shape: a batch of 0 gives nothing to verify: expected N ≥ 1, got '0,3,16,16'"),
    (["--input-shape=-2,3,16,16"],
     "argument --input-shape: a batch of -2 gives nothing to verify: expected N ≥ 1, got '-2,3,16,16'"),
    (["--input-shape", "1,3,0,16"], "argument --input-shape: expected every size ≥ 1, got '1,3,0,16'"),
    (["--input-shape", "1,3,4,4,4,4"],
     "argument --input-shape: expected (N, C, *spatial) with 1-3 spatial dims, got '1,3,4,4,4,4'"),
    (["--rounds", "0"], "argument --rounds: expected an integer ≥ 1, got '0'"),
    (["--threads=-4"], "argument --threads: expected an integer ≥ 1, got '-4'"),
    (["--threads", "0"], "argument --threads: expected an integer ≥ 1, got '0'"),
    (["--min-run-time", "0"], "argument --min-run-time: expected a number > 0 (seconds), got '0'"),
    (["--min-run-time=-1"], "argument --min-run-time: expected a number > 0 (seconds), got '-1'"),
    (["--min-run-time", "inf"], "argument --min-run-time: expected a number > 0 (seconds), got 'inf'"),
    (["--seed=-1"], "argument --seed: expected an integer from 0 to 2**64 - 1, got '-1'"),
])
def test_bad_numbers_are_argparse_errors(capsys, args, message):
    CALLS.clear()
    with pytest.raises(SystemExit) as exc:
        main(["tune", "test_commands:counted_model", "--quiet", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"pixelfold tune: error: {message}"
    assert CALLS == []


@pytest.mark.parametrize("option", ["--out", "--json", "--plan", "--onnx"])
def test_unwritable_outputs_are_refused_before_the_work(capsys, tmp_path, option):
    CALLS.clear()
    missing = tmp_path / "no_such_dir" / "f.out"
    rc, out, err = err_of(capsys, ["tune", "test_commands:counted_model", "--input-shape", "1,3,16,16",
                                   option, str(missing)])
    assert rc == 2 and out == "" and CALLS == []
    assert err == (f"pixelfold tune: error: {option} {missing}: directory {str(missing.parent)!r} does not exist "
                   "(nothing was run; choose another path)\n")
    rc, out, err = err_of(capsys, ["tune", "test_commands:counted_model", option, str(tmp_path)])
    assert rc == 2 and CALLS == []
    assert err == f"pixelfold tune: error: {option} {tmp_path}: is a directory, not a file (nothing was run; " \
                  "choose another path)\n"
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, out, err = err_of(capsys, ["tune", "test_commands:counted_model", option, str(afile / "f.out")])
    assert rc == 2 and CALLS == []
    assert err == (f"pixelfold tune: error: {option} {afile / 'f.out'}: {str(afile)!r} is not a directory "
                   "(nothing was run; choose another path)\n")


def test_read_only_directory_is_refused(capsys, tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # what a read-only folder does (root ignores chmod)
    CALLS.clear()
    rc, _, err = err_of(capsys, ["rewrite", "test_commands:counted_model", "--out", str(tmp_path / "m.pt")])
    assert rc == 2 and CALLS == []
    assert err == (f"pixelfold rewrite: error: --out {tmp_path / 'm.pt'}: cannot write to directory "
                   f"{str(tmp_path)!r}: Permission denied (nothing was run; choose another path)\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_directory_really(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    rc, _, err = err_of(capsys, ["rewrite", "test_commands:counted_model", "--json", str(ro / "r.json")])
    assert rc == 2 and "cannot write to directory" in err


def test_two_outputs_on_one_file_are_refused(capsys, tmp_path):
    CALLS.clear()
    path = str(tmp_path / "same.json")
    rc, _, err = err_of(capsys, ["tune", "test_commands:counted_model", "--plan", path, "--json", path])
    assert rc == 2 and CALLS == []
    assert err == f"pixelfold tune: error: --json and --plan name the same file ({path}); give each its own path\n"


def test_onnx_without_its_packages_is_refused_first(capsys, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxscript" else real(n, *a))
    CALLS.clear()
    rc, _, err = err_of(capsys, ["rewrite", "test_commands:counted_model", "--onnx", str(tmp_path / "m.onnx")])
    assert rc == 2 and CALLS == []
    assert err == ("pixelfold rewrite: error: --onnx needs onnxscript (pip install 'pixelfold[export]'); "
                   "nothing was run\n")


def test_bad_profile_is_refused_before_building(capsys):
    CALLS.clear()
    rc, _, err = err_of(capsys, ["rewrite", "test_commands:counted_model", "--profile", "no_strides", "--quiet"])
    assert rc == 2 and CALLS == []
    assert err.startswith("pixelfold rewrite: error: unknown profile 'no_strides'")


def test_an_input_the_model_refuses_is_a_clear_error(capsys):
    rc, _, err = err_of(capsys, ["tune", "test_commands:tiny_model", "--input-shape", "1,4,16,16", "--quiet",
                                 "--plan", os.devnull])
    assert rc == 2
    assert err.startswith("pixelfold tune: error: test_commands:tiny_model does not run on an input of shape "
                          "1×4×16×16 (RuntimeError: Given groups=1, weight of size [8, 3, 3, 3], expected "
                          "input[1, 4, 16, 16] to have 3 channels")
    assert err.endswith("); give --input-shape N,C,H,W as the model expects it\n")


# ---------------------------------------------------------------------------- MODEL arguments
@pytest.mark.parametrize("model, message", [
    ("no_such_package_xyz:factory", "cannot load 'no_such_package_xyz:factory': No module named "
     "'no_such_package_xyz'; give MODEL as package.module:factory (importable from here: check the spelling "
     "and PYTHONPATH)"),
    ("test_commands:no_such_factory", "cannot load 'test_commands:no_such_factory': module 'test_commands' has no "
     "attribute 'no_such_factory'; give MODEL as package.module:factory"),
    ("test_commands:raising_factory", "cannot build 'test_commands:raising_factory': the factory raised "
     "RuntimeError: no GPU here"),
    ("test_commands:not_a_module", "'test_commands:not_a_module' gave an int, not an nn.Module"),
    ("test_commands:NOT_CALLABLE", "cannot load 'test_commands:NOT_CALLABLE': NOT_CALLABLE is an int, not a "
     "function or class that returns an nn.Module; give MODEL as package.module:factory"),
    ("test_commands:needs_an_argument", "cannot build 'test_commands:needs_an_argument': the factory raised "
     "TypeError: needs_an_argument() missing 1 required positional argument: 'width'"),
    ("test_commands:", "cannot load 'test_commands:': give MODEL as package.module:factory"),
    ("test_commands:downloading_factory", "building 'test_commands:downloading_factory' tried to download "
     "https://download.pytorch.org/models/resnet18-f37072fd.pth; pixelfold builds models offline with random "
     "weights (the rewrites are exact for any weights): build it without pretrained weights (e.g. weights=None, "
     "weights_backbone=None, pretrained=False)"),
])
def test_bad_factories_are_clear_errors(capsys, model, message):
    rc, out, err = err_of(capsys, ["rewrite", model, "--quiet"])
    assert (rc, out) == (2, "")
    assert err.splitlines() == [f"pixelfold rewrite: error: {message}"]


def test_a_model_instance_is_accepted():
    assert load_model("test_commands:MODEL_INSTANCE")[0].stride == (2, 2)


def test_torchvision_models_are_built_without_any_weights():
    import torchvision

    from pixelfold.commands import _torchvision_kwargs

    builder = torchvision.models.get_model_builder("fcn_resnet50")
    assert _torchvision_kwargs(builder) == {"weights": None, "weights_backbone": None}
    model = load_model("torchvision:lraspp_mobilenet_v3_large")  # weights_backbone: downloaded before
    assert type(model).__name__ == "LRASPP"
    assert "TORCH_HOME" not in os.environ or os.environ["TORCH_HOME"] != "", "environment restored"


def test_internal_errors_are_one_line_with_a_hint(capsys, monkeypatch):
    rewrite_module = importlib.import_module("pixelfold.rewrite")  # `pixelfold.rewrite` is the function

    def broken(*args, **kwargs):
        raise KeyError("layer")

    monkeypatch.setattr(rewrite_module, "rewrite", broken)
    rc, _, err = err_of(capsys, ["rewrite", "test_commands:tiny_model", "--input-shape", "1,3,16,16", "--quiet"])
    assert rc == 3
    assert err == ("pixelfold rewrite: internal error: KeyError: 'layer'\n"
                   "pixelfold rewrite: this is a bug (in pixelfold, or in the model's code); rerun with --debug for "
                   "the traceback (pixelfold --debug rewrite ...) and report it\n")
    with pytest.raises(KeyError):
        main(["--debug", "rewrite", "test_commands:tiny_model", "--input-shape", "1,3,16,16", "--quiet"])
    with pytest.raises(KeyError):
        main(["rewrite", "test_commands:tiny_model", "--input-shape", "1,3,16,16", "--quiet", "--debug"])


# ---------------------------------------------------------------------------- NPU targets on the command line
def test_rewrite_with_a_target(capsys, tmp_path):
    from pixelfold.cli import main
    rc = main(["rewrite", "zoo:conv_k7s4", "--target", "ethos-u55-128", "--quiet", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "pixelfold rewrite [ethos-u55-128]: 1 changed" in out
    assert "ethos-u55-128 rejects Conv2d 3→32 k7×7 s4×4 p3×3: CONV_2D: Stride>3 is only supported IF" in out


def test_target_errors_are_clear_and_early(capsys):
    from pixelfold.cli import main
    assert main(["rewrite", "zoo:conv_k7s4", "--target", "npu9000", "--quiet"]) == 2
    assert "unknown target 'npu9000'; built-in targets: dla, ethos-n" in capsys.readouterr().err
    assert main(["rewrite", "zoo:conv_k7s4", "--target", "rk3588", "--profile", "no_stride", "--quiet"]) == 2
    assert "give --profile or --target, not both" in capsys.readouterr().err
    assert main(["check", "zoo:conv_k7s4", "--target", "tidl", "--quiet"]) == 2
    assert "tidl is a data-only target: no compiler judges it here" in capsys.readouterr().err
    assert main(["rewrite", "zoo:nope", "--quiet"]) == 2
    assert "no zoo model is called 'nope'; the zoo has yolov5_focus" in capsys.readouterr().err
