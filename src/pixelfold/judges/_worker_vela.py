"""The Vela judge's worker: runs inside ``.venv-vela`` (``python -m pixelfold.judges._worker_vela IN.json OUT.json``).

Each job is either a ``.tflite`` to compile or a saved ``torch.export`` program
(``.pt2``) plus its inputs (``.pt``: ``{"args": tuple, "calibration": list | None}``)
to convert first with :func:`pixelfold.tflite.to_tflite`. For every target it
runs ``vela --accelerator-config T --show-cpu-operations --output-dir D`` and
returns what it saw as plain data; :func:`pixelfold.judges.vela.vela_judgement`
makes the verdict. Nothing here raises for a model the tools reject: that is
a crashed judgement.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any


def read_ops(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The operators of subgraph 0 of a ``.tflite``, read with Vela's own schema."""
    from ethosu.vela.tflite.BuiltinOperator import BuiltinOperator
    from ethosu.vela.tflite.Model import Model

    names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    buf = Path(path).read_bytes()
    model = Model.GetRootAsModel(buf, 0)
    sg = model.Subgraphs(0)

    def tensor(i: int) -> list[Any]:
        if i < 0:
            return ["", []]
        t = sg.Tensors(i)
        shape = t.ShapeAsNumpy().tolist() if t.ShapeLength() else []
        return [t.Name().decode(errors="replace"), shape]

    ops = []
    for k in range(sg.OperatorsLength()):
        op = sg.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        ops.append({
            "index": k,
            "op": names.get(builtin, str(builtin)),
            "custom": custom.decode(errors="replace") if custom else None,
            "inputs": [tensor(op.Inputs(j)) for j in range(op.InputsLength())],
            "outputs": [tensor(op.Outputs(j)) for j in range(op.OutputsLength())],
        })
    return ops


def _vela(tflite: Path, config: str, outdir: Path, timeout: float) -> dict[str, Any]:
    vela = Path(sys.executable).with_name("vela")
    cmd = [str(vela) if vela.exists() else "vela", str(tflite), "--accelerator-config", config,
           "--output-dir", str(outdir), "--show-cpu-operations", "--verbose-performance"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = -9, exc.stdout or "", f"TimeoutError: vela ran past {timeout:g} s\n"
        out = out.decode() if isinstance(out, bytes) else out
    stem = tflite.stem
    compiled = outdir / f"{stem}_vela.tflite"
    per_layer = outdir / f"{stem}_per-layer.csv"
    summaries = sorted(outdir.glob(f"{stem}_summary_*.csv"))
    return {
        "cmd": cmd,
        "returncode": rc,
        "stdout": out,
        "stderr": err,
        "compiled_ops": read_ops(compiled) if rc == 0 and compiled.exists() else None,
        "per_layer_csv": per_layer.read_text() if per_layer.exists() else "",
        "summary_csv": summaries[0].read_text() if summaries else "",
        "compiled": str(compiled) if compiled.exists() else None,
    }


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from ethosu.vela import __version__ as vela_version  # type: ignore[attr-defined]

    from pixelfold.judges.vela import vela_judgement

    work = Path(job["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"id": job["id"], "judgements": [], "export": None}
    tflite = Path(job["tflite"]) if job.get("tflite") else None
    conversion_error = None
    if tflite is None:
        from pixelfold.tflite import Int8FileRefused, to_tflite

        try:
            program = torch.export.load(job["program"])
            saved = torch.load(job["inputs"], weights_only=False)
            tflite = work / "model.tflite"
            # the float model is checked (1e-5); the int8 error is measured and reported, not a reason to
            # refuse to compile (a ViT's static int8 error is large; the placement is what is judged)
            exp = to_tflite(program.module(), tuple(saved["args"]), tflite, quantize=job.get("quantize"),
                            calibration=saved.get("calibration"), check=job.get("check", True),
                            int8_rtol=float("inf"))
            result["export"] = {"path": str(exp.path), "float_error": exp.float_error, "int8_error": exp.int8_error,
                                "int8_error_lsb": exp.int8_error_lsb}
        except Int8FileRefused as err:  # the compiler may still take the file: judge it, say the check is missing
            exp = err.export
            result["export"] = {"path": str(exp.path), "float_error": exp.float_error, "int8_error": None,
                                "int8_error_lsb": None, "int8_check": str(err)}
        except Exception as err:  # FoldError from to_tflite, or torch.export.load
            conversion_error = " ".join(str(err).split()) or type(err).__name__
            result["traceback"] = traceback.format_exc()[-4000:]
    input_ops = read_ops(tflite) if conversion_error is None and tflite is not None else []
    for target, config in job["targets"].items():
        if conversion_error is not None:
            from pixelfold.judges.results import Judgement

            j = Judgement(target, "vela", vela_version, crashed=True,
                          message=f"conversion to int8 TFLite failed: {conversion_error}")
            result["judgements"].append(j.to_dict())
            continue
        outdir = work / f"vela-{target}"
        shutil.rmtree(outdir, ignore_errors=True)
        outdir.mkdir(parents=True)
        run = _vela(tflite, config, outdir, float(job.get("timeout", 600)))
        j = vela_judgement(target, vela_version, input_ops, run["compiled_ops"], run["stdout"], run["stderr"],
                           run["returncode"], run["per_layer_csv"], run["summary_csv"])
        j.artifacts = {"tflite": str(tflite), **({"compiled": run["compiled"]} if run["compiled"] else {}),
                       "outdir": str(outdir)}
        if job.get("keep_raw"):
            j.extra["raw"] = {k: run[k] for k in ("cmd", "returncode", "stdout", "stderr", "per_layer_csv",
                                                  "summary_csv")}
            j.extra["raw"]["input_ops"] = input_ops
            j.extra["raw"]["compiled_ops"] = run["compiled_ops"]
        result["judgements"].append(j.to_dict())
    return result


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    with open(argv[2], "a") as out:  # one JSON line per job: a crash loses nothing already done
        for job in spec["jobs"]:
            try:
                res = run_job(job)
            except Exception:  # never lose the other jobs' results
                res = {"id": job["id"], "error": traceback.format_exc()[-4000:]}
            out.write(json.dumps(res) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
