"""The command line: `pixelfold explain` (text, JSON, figure, errors) and the command registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixelfold import cli, explain
from pixelfold.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["explain", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    rc, out, err = run(capsys, "--json", *args)
    assert rc == 0, err
    return json.loads(out)


# ---------------------------------------------------------------------------- the seed question
def test_default_question_smaller_map(capsys):
    rc, out, err = run(capsys, "--no-time", "--size", "8")
    assert rc == 0, err
    assert out.startswith(
        "pixelfold explain: is a 3×3 conv on a 256×8×8 map the same as a 48×48 conv with stride 16 on 1×128×128?"
    )
    assert "Yes, exactly." in out
    # both specs, side by side on one line
    assert "Conv2d 256→1 k3×3 s1×1 p1×1   Conv2d 1→1 k48×48 s16×16 p16×16" in out
    assert "1×256×8×8" in out and "1×1×128×128  = depth_to_space(x, 16)" in out
    # same parameters and MACs in both columns
    assert "parameters   2,305" in out and out.count("2,305") == 2
    assert out.count("147,456  (147 k)") == 2  # 256·9·8·8 MACs
    assert "max |depth − space|" in out and "float32" in out
    # what is not the same, and its polyphase form
    assert "Conv2d 1→1 k48×48 s1×1 p16×16" in out
    assert "y1[..., ::16, ::16]" in out
    assert "polyphase(conv, 16)" in out and "Conv2d 256→256 k4×4 s1×1 p0×0" in out
    assert "time" not in out.split("what is NOT")[0].split("check on random data")[1]
    assert err == ""


def test_true_default_with_timing(capsys):
    rc, out, err = run(capsys)
    assert rc == 0, err
    assert "256×64×64" in out and "1×1×1024×1024" in out and "1×1×64×64" in out
    assert "9,437,184  (9.44 M)" in out
    assert "2,345,658,624" in out  # 48·48·1009² MACs of the stride-1 kernel
    assert "on a 16×16 depth map (1×1×256×256 space map" in out
    assert "time (float32" in out and "× the depth form's time" in out
    assert "polyphase" in out.split("  time ")[-1]


def test_json_has_everything(capsys):
    d = run_json(capsys, "--no-time", "--channels", "16", "--block", "4", "--size", "8")
    assert d["depth"]["spec"] == "Conv2d 16→1 k3×3 s1×1 p1×1"
    assert d["space"]["spec"] == "Conv2d 1→1 k12×12 s4×4 p4×4"
    assert d["depth"]["input_shape"] == [1, 16, 8, 8]
    assert d["space"]["input_shape"] == [1, 1, 32, 32]
    assert d["depth"]["output_shape"] == d["space"]["output_shape"] == [1, 1, 8, 8]
    assert d["space"]["padding"] == [[4, 4], [4, 4]]
    assert d["depth"]["macs"] == d["space"]["macs"] == 16 * 9 * 64
    assert d["depth"]["params"] == d["space"]["params"] == 16 * 9 + 1
    assert d["errors"]["float64"]["max_abs_err"] < 1e-12
    assert d["errors"]["float32"]["max_abs_err"] < 1e-4
    assert d["equal"] is True and d["times"] is None and d["plot"] is None
    s1 = d["stride1"]
    assert s1["spec"] == "Conv2d 1→1 k12×12 s1×1 p4×4"
    assert s1["output_shape"] == [1, 1, 29, 29]
    assert s1["macs"] == 144 * 29 * 29
    assert s1["inner_spec"] == "Conv2d 16→16 k4×4 s1×1 p0×0"
    assert s1["subsample"] == [4, 4]
    assert s1["subsample_err"] < 1e-12 and s1["polyphase_err"] < 1e-12
    assert d["question"]["block"] == [4, 4] and d["question"]["order"] == "crd"


def test_json_with_timing(capsys):
    d = run_json(capsys, "--channels", "16", "--block", "4", "--size", "8", "--min-run-time", "0.02")
    t = d["times"]
    assert t["dtype"] == "float32" and t["unit"] == "s"
    for key in ("depth", "space", "depth_to_space"):
        assert 0 < t[key] < 1
    assert t["space_over_depth"] == pytest.approx(t["space"] / t["depth"])
    t1 = d["stride1"]["times"]
    assert t1["direct"] > 0 and t1["polyphase"] > 0


def test_one_dim(capsys):
    d = run_json(capsys, "--no-time", "--dims", "1", "--channels", "32", "--block", "8", "--kernel", "5",
                 "--padding", "2", "--size", "16")
    assert d["depth"]["spec"] == "Conv1d 32→1 k5 s1 p2"
    assert d["space"]["spec"] == "Conv1d 4→1 k40 s8 p16"
    assert d["space"]["input_shape"] == [1, 4, 128]
    assert d["errors"]["float64"]["max_abs_err"] < 1e-12
    assert d["stride1"]["subsample_err"] < 1e-12 and d["stride1"]["polyphase_err"] < 1e-12


def test_one_dim_default_block_folds_all_channels(capsys):
    rc, out, err = run(capsys, "--no-time", "--dims", "1", "--channels", "16", "--size", "8")
    assert rc == 0, err
    assert "Conv1d 1→1 k48 s16 p16" in out


def test_three_dims(capsys):
    d = run_json(capsys, "--no-time", "--dims", "3", "--channels", "64", "--size", "4")
    assert d["question"]["block"] == [4, 4, 4]  # the largest b with b³ | 64
    assert d["depth"]["spec"] == "Conv3d 64→1 k3×3×3 s1×1×1 p1×1×1"
    assert d["space"]["spec"] == "Conv3d 1→1 k12×12×12 s4×4×4 p4×4×4"
    assert d["space"]["input_shape"] == [1, 1, 16, 16, 16]
    assert d["errors"]["float64"]["max_abs_err"] < 1e-12
    assert d["stride1"]["subsample_err"] < 1e-12 and d["stride1"]["polyphase_err"] < 1e-12


def test_rectangular_block(capsys):
    rc, out, err = run(capsys, "--no-time", "--channels", "64", "--block", "2,4", "--out-channels", "3",
                       "--size", "8")
    assert rc == 0, err
    assert "Conv2d 64→3 k3×3 s1×1 p1×1   Conv2d 8→3 k6×12 s2×4 p2×4" in out
    assert "1×8×16×32  = depth_to_space(x, 2×4)" in out
    assert "y1[..., ::2, ::4]" in out


def test_dcr_order(capsys):
    d = run_json(capsys, "--no-time", "--order", "dcr", "--channels", "32", "--block", "2", "--out-channels", "4",
                 "--size", "6")
    assert d["space"]["spec"] == "Conv2d 8→4 k6×6 s2×2 p2×2"
    assert d["errors"]["float64"]["max_abs_err"] < 1e-12
    assert d["stride1"]["polyphase_err"] < 1e-12
    rc, out, _ = run(capsys, "--no-time", "--order", "dcr", "--channels", "32", "--block", "2", "--size", "6")
    assert "depth_to_space(x, 2, 'dcr')" in out and "space_to_depth(2, 'dcr')" in out


@pytest.mark.parametrize(
    "args",
    [
        ["--stride", "2", "--padding", "1", "--size", "9"],
        ["--dilation", "2", "--padding", "2", "--kernel", "3,5", "--size", "7,9"],
        ["--groups", "2", "--out-channels", "4", "--padding", "0"],
        ["--padding", "same", "--kernel", "5"],
        ["--batch", "2", "--dtype", "float64"],
        ["--dtype", "bfloat16"],
    ],
)
def test_more_convs_are_exact(capsys, args):
    d = run_json(capsys, "--no-time", "--channels", "32", "--block", "2", "--size", "8", *args)
    assert d["depth"]["output_shape"] == d["space"]["output_shape"]
    if "--dilation" in args:  # written out densely: the space form multiplies zero taps too
        k, e = d["depth"]["kernel"], d["space"]["kernel"]
        assert d["space"]["macs"] * k[0] * k[1] * 4 == d["depth"]["macs"] * e[0] * e[1]
    else:
        assert d["depth"]["macs"] == d["space"]["macs"]
    assert d["errors"]["float64"]["max_abs_err"] < 1e-12
    assert d["stride1"]["subsample_err"] < 1e-12 and d["stride1"]["polyphase_err"] < 1e-12
    if "bfloat16" in args:
        e = d["errors"]["bfloat16"]
        assert e["max_abs_err"] < 0.1 * max(1.0, e["max_abs_out"])


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channels", "12", "--block", "4"], "not divisible by prod(block) = 16"),
        (["--channels", "16", "--groups", "3"], "divisible by groups (3)"),
        (["--channels", "16", "--block", "2,2,2"], "block (2, 2, 2) has 3 entries"),
        (["--channels", "16", "--block", "2", "--size", "1", "--kernel", "5", "--padding", "0"], "too small"),
        (["--channels", "16", "--block", "2", "--kernel", "4", "--padding", "same"], "asymmetric"),
        (["--channels", "16", "--groups", "2", "--block", "2", "--order", "dcr", "--out-channels", "2"],
         "order='dcr' interleaves channels of different groups"),
    ],
)
def test_bad_combinations_exit_2_with_the_message(capsys, args, message):
    rc, out, err = run(capsys, "--no-time", *args)
    assert rc == 2
    assert out == ""
    assert err.startswith("pixelfold explain: error: ")
    assert message in err
    assert "Traceback" not in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--dims", "4"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--block", "two"])
    assert exc.value.code == 2
    assert "expected an int or a comma list of ints" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "explain" in capsys.readouterr().out


# ---------------------------------------------------------------------------- the figure
def test_plot_writes_a_png(capsys, tmp_path):
    path = tmp_path / "out" / "seed.png"  # the folder is created
    rc, out, err = run(capsys, "--no-time", "--size", "8", "--plot", str(path))
    assert rc == 0, err
    assert path.exists() and path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.rstrip().endswith(f"figure: {path}")


@pytest.mark.parametrize(
    "args",
    [
        ["--channels", "4", "--block", "2", "--size", "4"],  # small: one labelled row
        ["--dims", "1", "--channels", "8", "--block", "4", "--size", "8"],
        ["--dims", "3", "--channels", "8", "--size", "4"],
        ["--channels", "32", "--block", "2,4", "--order", "dcr", "--dilation", "2", "--padding", "2"],
    ],
)
def test_plot_other_shapes(capsys, tmp_path, args):
    path = tmp_path / "fig.png"
    d = run_json(capsys, "--no-time", "--plot", str(path), *args)
    assert d["plot"] == str(path)
    assert path.stat().st_size > 10_000


def test_plot_panels_follow_the_library():
    from pixelfold import ConvSpec
    from pixelfold.plot import panels

    p = panels(ConvSpec.make(8, 1, 3, padding=1), (2, 2), "dcr", (4, 4))
    # dcr: space channel 0 is fed by channels phase*2 + 0
    assert p.phase_grid.tolist() == [[0, 2], [4, 6]]
    assert p.space_channel.shape == (6, 6)
    assert set(p.space_channel.reshape(-1).tolist()) == {0, 2, 4, 6}


# ---------------------------------------------------------------------------- plumbing
def test_help_via_python_m():
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-m", "pixelfold", "explain", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: pixelfold explain")
    for opt in ("--channels", "--out-channels", "--kernel", "--stride", "--padding", "--dilation", "--groups",
                "--block", "--size", "--dims", "--order", "--dtype", "--batch", "--no-time", "--json", "--plot"):
        assert opt in res.stdout


def test_register_a_command(capsys):
    seen = {}

    def add(p):
        p.add_argument("--n", type=int, default=1)

    def go(args):
        seen["n"] = args.n
        print("ran")
        return 3

    cli.register("dummy", "a test command", add, go)
    try:
        assert main(["dummy", "--n", "5"]) == 3
        assert seen == {"n": 5}
        assert capsys.readouterr().out == "ran\n"
    finally:
        del cli.COMMANDS["dummy"]


def test_int_list():
    assert cli.int_list("2,4") == (2, 4)
    assert cli.padding_arg("same") == "same"
    assert cli.padding_arg("1,2") == (1, 2)


def test_progress_is_silent_off_a_terminal(capsys):
    import io

    stream = io.StringIO()
    progress = explain.StderrProgress(after=0.0, stream=stream)
    progress("timing")
    progress.done()
    assert stream.getvalue() == ""


def test_progress_on_a_terminal():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    progress = explain.StderrProgress(after=0.0, stream=stream)
    progress("step one")
    progress.done()
    assert "step one" in stream.getvalue() and stream.getvalue().endswith("\r\033[K")


def test_register_module_imports_lazily(capsys, tmp_path, monkeypatch):
    mod = tmp_path / "pf_lazy_cmd.py"
    mod.write_text(
        "import argparse\n"
        "def add_arguments(p):\n    p.add_argument('--x', type=int, default=0)\n"
        "def run_from_args(args):\n    print('x', args.x)\n    return 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cli.register_module("lazy", "a lazily imported command", "pf_lazy_cmd")
    try:
        assert "pf_lazy_cmd" not in sys.modules
        assert main(["explain", "--channels", "12", "--block", "4", "--no-time"]) == 2  # other command: not imported
        assert "pf_lazy_cmd" not in sys.modules
        assert main(["lazy", "--x", "7"]) == 0
        assert "x 7" in capsys.readouterr().out
    finally:
        del cli.COMMANDS["lazy"]
        sys.modules.pop("pf_lazy_cmd", None)


def test_plot_without_matplotlib_is_a_clean_error(capsys, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    rc, out, err = run(capsys, "--no-time", "--plot", str(tmp_path / "x.png"))
    assert rc == 2 and "needs matplotlib" in err and not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------- no traceback ever: bad arguments first
@pytest.mark.parametrize("name, message", [
    ("x.txt", "the file name has '.txt'"),
    ("figure", "the file name has no extension"),
])
def test_plot_needs_a_format_matplotlib_writes(capsys, tmp_path, name, message):
    path = tmp_path / name
    rc, out, err = run(capsys, "--no-time", "--size", "8", "--plot", str(path))
    assert (rc, out) == (2, "")
    formats = ", ".join("." + f for f in cli.plot_formats())
    assert err == (f"pixelfold explain: error: --plot {path}: {message}; matplotlib writes {formats}: end the name "
                   "in one of them, e.g. .png (nothing was run)\n")
    assert {"png", "svg", "pdf"} <= set(cli.plot_formats())
    assert not path.exists()


def test_plot_into_a_file_is_refused_before_the_work(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    path = tmp_path / "afile" / "seed.svg"
    rc, out, err = run(capsys, "--no-time", "--plot", str(path))
    assert (rc, out) == (2, "")
    assert err == (f"pixelfold explain: error: --plot {path}: {str(path.parent)!r} is not a directory "
                   "(nothing was run; choose another path)\n")
    cli._check_plot_path(str(tmp_path / "new" / "seed.svg"))  # svg and pdf pass; the folder is created
    cli._check_plot_path(str(tmp_path / "seed.PDF"))
    assert (tmp_path / "new").is_dir()


def test_explain_seed_out_of_range_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--seed", str(2**64)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"pixelfold explain: error: argument --seed: expected an integer from 0 to 2**64 - 1, got '{2**64}'")


BENCH_GROUPS = "'seed', 'sweep', 'patch_embed', 'stems', 'patchify', 'focus', 'transposed', 'depthwise', " \
               "'video3d', 'rearrange', 'limit', 'transforms', 'rewrite', 'tune'"


@pytest.mark.parametrize("args, message", [
    (["--cases", "bogus"], f"argument --cases: invalid choice: 'bogus' (choose from {BENCH_GROUPS})"),
    (["--rounds", "0"], "argument --rounds: expected an integer ≥ 1, got '0'"),
    (["--threads=-4"], "argument --threads: expected an integer ≥ 1, got '-4'"),
    (["--min-run-time", "0"], "argument --min-run-time: expected a number > 0 (seconds), got '0'"),
    (["--batch", "0"], "argument --batch: expected an integer ≥ 1, got '0'"),
])
def test_bench_argument_errors(capsys, args, message):
    from pixelfold import bench

    for entry in (lambda: main(["bench", *args]), lambda: bench.main(args)):
        with pytest.raises(SystemExit) as exc:
            entry()
        assert exc.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"pixelfold bench: error: {message}"


@pytest.mark.parametrize("args, message", [
    (["--device", "bogus"], "--device 'bogus' is not a device; use cpu or cuda[:N]"),
    (["--device", "meta"], "--device 'meta': the benchmarks run on cpu or cuda[:N], not meta"),
    (["--tag", "a/b"], "--tag 'a/b' is not a file name stem (no '/'; the files go to --out)"),
])
def test_bench_option_errors_before_measuring(capsys, tmp_path, args, message):
    from pixelfold import bench

    assert main(["bench", "--cases", "seed", "--out", str(tmp_path / "o"), *args]) == 2
    assert capsys.readouterr().err == f"pixelfold bench: error: {message}\n"
    assert bench.main(["--cases", "seed", *args]) == 2  # python -m pixelfold.bench
    assert capsys.readouterr().err == f"pixelfold bench: error: {message}\n"


def test_bench_out_must_be_a_directory(capsys, tmp_path):
    afile = tmp_path / "results"
    afile.write_text("x")
    assert main(["bench", "--cases", "seed", "--out", str(afile)]) == 2
    assert capsys.readouterr().err == (f"pixelfold bench: error: --out {afile}: is a file, not a directory "
                                       "(nothing was run; choose another path)\n")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
def test_bench_cuda_without_a_gpu(capsys, tmp_path):
    assert main(["bench", "--cases", "seed", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "pixelfold bench: error: --device cuda but torch.cuda.is_available() is False\n"


def test_unexpected_errors_exit_3_with_a_hint_and_debug_shows_them(capsys):
    def add(p):
        p.add_argument("--what", default="bug")

    def go(args):
        if args.what == "interrupt":
            raise KeyboardInterrupt
        raise ZeroDivisionError("division by zero")

    cli.register("broken", "a command with a bug", add, go)
    try:
        assert main(["broken"]) == 3
        assert capsys.readouterr().err == (
            "pixelfold broken: internal error: ZeroDivisionError: division by zero\n"
            "pixelfold broken: this is a bug (in pixelfold, or in the model's code); rerun with --debug for the "
            "traceback (pixelfold --debug broken ...) and report it\n")
        with pytest.raises(ZeroDivisionError):
            main(["--debug", "broken"])
        with pytest.raises(ZeroDivisionError):
            main(["broken", "--debug"])
        assert main(["broken", "--what", "interrupt"]) == 130
        assert capsys.readouterr().err == "pixelfold broken: interrupted\n"
    finally:
        del cli.COMMANDS["broken"]


def test_a_command_module_that_fails_to_import_is_an_internal_error(capsys):
    cli.register_module("gone", "a command whose module is missing", "pixelfold.no_such_module_xyz")
    try:
        assert main(["gone"]) == 3
        assert capsys.readouterr().err.startswith(
            "pixelfold gone: internal error: ModuleNotFoundError: No module named 'pixelfold.no_such_module_xyz'\n")
    finally:
        del cli.COMMANDS["gone"]


def test_check_output_file_accepts_what_can_be_written(tmp_path):
    existing = tmp_path / "r.json"
    existing.write_text("keep")
    assert cli.check_output_file(existing, "--json") == existing
    assert existing.read_text() == "keep"  # checked without truncating it
    assert cli.check_output_file(tmp_path / "new.json", "--json") == tmp_path / "new.json"
    assert list(tmp_path.iterdir()) == [existing]  # the probe file is gone
    assert cli.check_output_file(os.devnull, "--out") == Path(os.devnull)


def test_no_traceback_reaches_the_user_via_python_m(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    (tmp_path / "pf_broken_model.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def eval(self):\n"
        "        raise ZeroDivisionError('model bug')\n"
        "def factory():\n"
        "    return Net()\n")
    cases = [
        (["rewrite", "pf_broken_model:factory", "--out", str(tmp_path / "missing" / "m.pt")], 2,
         f"pixelfold rewrite: error: --out {tmp_path / 'missing' / 'm.pt'}: directory "
         f"{str(tmp_path / 'missing')!r} does not exist (nothing was run; choose another path)\n"),
        (["rewrite", "pf_broken_model:factory", "--quiet"], 3,
         "pixelfold rewrite: internal error: ZeroDivisionError: model bug\n"
         "pixelfold rewrite: this is a bug (in pixelfold, or in the model's code); rerun with --debug for the "
         "traceback (pixelfold --debug rewrite ...) and report it\n"),
    ]
    for argv, code, stderr in cases:
        res = subprocess.run([sys.executable, "-m", "pixelfold", *argv], capture_output=True, text=True, env=env,
                             timeout=300)
        assert (res.returncode, res.stdout, res.stderr) == (code, "", stderr)
    res = subprocess.run([sys.executable, "-m", "pixelfold", "--debug", *cases[1][0]], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr
    assert res.stderr.rstrip().endswith("ZeroDivisionError: model bug")
