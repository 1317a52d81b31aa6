"""`pixelfold rewrite` and `pixelfold tune` on the command line (in-process), and model loading."""

from __future__ import annotations

import json

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
