"""pixelfold.tflite: a clear error where litert-torch is missing; inside the Vela env, float TFLite matches PyTorch
to 1e-5 relative and int8 stays within its measured quantisation error (one subprocess runs all the checks)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

import pixelfold
from pixelfold import tflite
from pixelfold.judges import env_available, env_python

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.skipif(tflite.available(), reason="litert-torch is installed here")
def test_missing_extra_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(pixelfold.FoldError) as err:
        tflite.to_tflite(torch.nn.Conv2d(1, 1, 1), torch.randn(1, 1, 4, 4), tmp_path / "m.tflite")
    assert str(err.value) == (
        "to_tflite needs litert-torch and ai-edge-quantizer, which pixelfold keeps out of its own environment: "
        "run `make npu-env` and use .venv-vela/bin/python (PYTHONPATH=src), or "
        "pip install litert-torch==0.10.0 ai-edge-quantizer"
    )


_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch, pixelfold
    from pixelfold.tflite import to_tflite
    from pixelfold import FoldError
    out, tmp = {}, sys.argv[1]
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 7, stride=4, padding=3)
    x = torch.randn(1, 3, 32, 32)
    for style in ("rank4", None):
        r = to_tflite(pixelfold.fold(conv, 4, "dcr"), x, f"{tmp}/fold_{style}.tflite", lowering=style)
        out[f"fold_float_{style}"] = r.float_error
    r = to_tflite(conv, x, f"{tmp}/conv_q.tflite", quantize="int8")
    out["conv_int8"] = [r.float_error, r.int8_error, r.int8_error_lsb, r.path.exists(), r.float_path.exists()]
    up = torch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
    y = torch.randn(1, 8, 8, 8)
    try:
        to_tflite(up, y, f"{tmp}/up.tflite")
        out["convt_op1"] = "converted"
    except FoldError as e:
        out["convt_op1"] = str(e)
    out["convt_op1_subpixel"] = to_tflite(pixelfold.subpixel(up, "shared", "dcr"), y, f"{tmp}/sp.tflite",
                                         lowering="rank4").float_error
    class Bad(torch.nn.Module):
        def forward(self, t):
            return t * 2
    try:
        to_tflite(Bad(), y, f"{tmp}/bad.tflite", quantize="int4")
    except FoldError as e:
        out["bad_quantize"] = str(e)
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow  # minutes: the compilers' envs start slowly; run by `make npu-test`
@pytest.mark.skipif(not env_available("vela"), reason="the Vela env is not built (make npu-env)")
def test_to_tflite_in_the_vela_env(tmp_path: Path) -> None:
    script = tmp_path / "check.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(SRC), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([str(env_python("vela")), str(script), str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=1200)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, proc.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT"):])
    assert got["fold_float_rank4"] <= 1e-5 and got["fold_float_None"] <= 1e-5
    f_err, q_err, q_lsb, q_exists, f_exists = got["conv_int8"]
    assert f_err <= 1e-5 and q_exists and f_exists
    # int8: a single conv stays within a few output quantisation steps (measured: ~2 LSB, ~1.6 % of max|y|)
    assert 0 < q_err < 0.05 and q_lsb <= 4
    assert got["convt_op1"].startswith("litert-torch could not convert the model:"), got["convt_op1"]
    assert "failed to legalize operation 'mhlo.convolution'" in got["convt_op1"]
    assert got["convt_op1_subpixel"] <= 1e-5
    assert got["bad_quantize"] == "quantize must be None (float32) or 'int8', got 'int4'"
