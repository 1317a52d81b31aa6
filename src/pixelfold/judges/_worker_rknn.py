"""The RKNN judge's worker: runs inside ``.venv-rknn`` (``python -m pixelfold.judges._worker_rknn IN.json OUT.json``).

Each job is an ``.onnx`` plus, for int8, calibration samples (``.npy`` files,
the layout the ONNX graph takes). For every target it builds in a fresh
temporary directory (rknn-toolkit2 writes ``check*.onnx`` into the cwd) with
file descriptor 1 redirected to a file (librknnc prints its layer table there,
not into ``verbose_file``) and the toolkit's logger on stderr captured.
:func:`pixelfold.judges.rknn.rknn_judgement` makes the verdict. A build
that fails is a crashed judgement, never an exception.

Results are appended to the output file one JSON line per job, so when
librknnc kills the process (a segfault, an abort) the parent keeps what was
done, reports that job as crashed and restarts the worker on the rest.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any


def build_one(onnx: str, platform: str, dataset: str | None, workdir: str) -> dict[str, Any]:
    """One build in ``workdir`` (the cwd); returns the captured fd 1, the log and the outcome."""
    os.chdir(workdir)
    fd1_path = Path(workdir) / "fd1.txt"
    log_path = Path(workdir) / "log.txt"
    ok, error = False, ""
    sys.stdout.flush()
    sys.stderr.flush()
    saved1, saved2 = os.dup(1), os.dup(2)
    f1 = os.open(fd1_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    f2 = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(f1, 1)
    os.dup2(f2, 2)
    try:
        from rknn.api import RKNN

        rknn = RKNN(verbose=True)
        try:
            rknn.config(target_platform=platform)
            ret = rknn.load_onnx(onnx)
            if ret != 0:
                error = f"load_onnx returned {ret}"
            else:
                ret = rknn.build(do_quantization=dataset is not None, dataset=dataset)
                ok = ret == 0
                if not ok:
                    error = f"build returned {ret}"
        finally:
            rknn.release()
    except BaseException as err:  # noqa: BLE001 - the toolkit raises SystemExit on some errors
        error = f"{type(err).__name__}: {err}"
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved1, 1)
        os.dup2(saved2, 2)
        os.close(f1)
        os.close(f2)
    return {"ok": ok, "error": error, "fd1": fd1_path.read_text(errors="replace"),
            "log": log_path.read_text(errors="replace")}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from pixelfold.judges.results import Judgement
    from pixelfold.judges.rknn import rknn_judgement

    version = dist_version("rknn-toolkit2")
    result: dict[str, Any] = {"id": job["id"], "judgements": []}
    dataset = None
    if job.get("calibration"):
        dataset = str(Path(job["workdir"]) / "dataset.txt")
        Path(dataset).write_text("\n".join(" ".join(sample) for sample in job["calibration"]) + "\n")
    cwd = os.getcwd()
    for target, platform in job["targets"].items():
        with tempfile.TemporaryDirectory(prefix=f"rknn-{target}-") as tmp:
            try:
                run = build_one(job["onnx"], platform, dataset, tmp)
            finally:
                os.chdir(cwd)
        j: Judgement = rknn_judgement(target, version, run["fd1"], run["log"], run["ok"], run.get("error", ""),
                                      job.get("onnx_ops"))
        j.artifacts = {"onnx": job["onnx"]}
        if job.get("keep_raw"):
            j.extra["raw"] = {"fd1": run["fd1"], "log": run["log"], "error": run.get("error", "")}
        result["judgements"].append(j.to_dict())
    return result


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    with open(argv[2], "a") as out:
        for job in spec["jobs"]:
            try:
                res = run_job(job)
            except Exception:
                res = {"id": job["id"], "error": traceback.format_exc()[-4000:]}
            out.write(json.dumps(res) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
