"""``judge``: compile a PyTorch model (or a file) for a named NPU with the vendor's compiler and read its verdict.

Each compiler runs in its own environment (``make npu-env``) as a subprocess:
the model is exported here (``torch.export`` → ``.pt2`` for Vela, whose worker
converts it to int8 TFLite with litert-torch; :func:`pixelfold.export.to_onnx`
for RKNN), the worker compiles it for every asked target and returns JSON.
Verdicts are cached per (content hash of the export, target, options).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FoldError
from .results import Judgement
from .rknn import RKNN_TARGETS
from .vela import VELA_TARGETS

__all__ = [
    "TARGETS",
    "DEFAULT_LOWERING",
    "env_python",
    "env_available",
    "judge",
    "judge_targets",
    "judge_batch",
    "judge_file",
    "judge_layer",
    "judge_layers",
    "layer_key",
    "cache_dir",
]

#: Every judged target: name → (compiler, the compiler's own name for it).
TARGETS: dict[str, tuple[str, str]] = {
    **{t: ("vela", c) for t, c in VELA_TARGETS.items()},
    **{t: ("rknn", c) for t, c in RKNN_TARGETS.items()},
}

#: How pixelfold's rearrangements are written when exporting for each target (``lowering="auto"``);
#: measured, see ``benchmarks/results/npu_forms.md`` and :mod:`pixelfold.judges.lowering`. Build the
#: rearrangements in ``dcr`` order for these targets: ``crd`` costs a second transpose on Ethos-U and can fall
#: to the CPU on rv1106/rk3588. rk3568 runs no Reshape/Transpose on its NPU in any style.
def _default_lowering() -> dict[str, str]:
    """Each judged target's lowering, read from its data (pixelfold.targets): one source for the rewrite's
    solver (which ops the target sees) and for the export (which ops are written)."""
    from .. import targets

    return {t: targets.get(t).lowering for t in (*VELA_TARGETS, *RKNN_TARGETS)}


DEFAULT_LOWERING: dict[str, str] = _default_lowering()

#: Bumped when what the judges compute changes (old cache entries are then ignored).
JUDGE_VERSION = 2

_ENV_DIRS = {"vela": ".venv-vela", "rknn": ".venv-rknn"}
_ENV_VARS = {"vela": "PIXELFOLD_VELA_PYTHON", "rknn": "PIXELFOLD_RKNN_PYTHON"}
_SRC = Path(__file__).resolve().parents[2]  # .../src


def _compiler(target: str) -> tuple[str, str]:
    if target not in TARGETS:
        raise FoldError(f"unknown NPU target {target!r}; judged targets are {sorted(TARGETS)}")
    return TARGETS[target]


def env_python(compiler: str) -> Path:
    """The Python of a judge environment, or :class:`~pixelfold.FoldError` saying how to build it.

    Looked up as ``$PIXELFOLD_VELA_PYTHON`` / ``$PIXELFOLD_RKNN_PYTHON``, else
    ``.venv-vela`` / ``.venv-rknn`` in the repository (beside ``src/``) or the
    current directory.
    """
    if compiler not in _ENV_DIRS:
        raise FoldError(f"unknown compiler {compiler!r}; pixelfold judges with 'vela' and 'rknn'")
    override = os.environ.get(_ENV_VARS[compiler])
    if override:  # an explicit choice: used as it is, or reported missing
        candidates = [Path(override)]
        if candidates[0].exists():
            return candidates[0]
    else:
        candidates = [root / _ENV_DIRS[compiler] / "bin" / "python" for root in (_SRC.parent, Path.cwd())]
        for c in candidates:
            if c.exists() and (c.parent.parent / ".installed").exists():
                return c
    raise FoldError(
        f"the {compiler} judge environment is missing (looked for {', '.join(str(c) for c in candidates)}); "
        f"build it with `make npu-env` in the pixelfold repository (or set ${_ENV_VARS[compiler]})"
    )


def env_available(compiler_or_target: str) -> bool:
    """True when the environment for a compiler (``"vela"``/``"rknn"``) or a target is built."""
    compiler = TARGETS[compiler_or_target][0] if compiler_or_target in TARGETS else compiler_or_target
    try:
        env_python(compiler)
    except FoldError:
        return False
    return True


def cache_dir() -> Path:
    """``$PIXELFOLD_JUDGE_CACHE``, else ``~/.cache/pixelfold/judges``."""
    env = os.environ.get("PIXELFOLD_JUDGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pixelfold" / "judges"


def _cache_get(key: str, target: str) -> Judgement | None:
    path = cache_dir() / key[:2] / f"{key}-{target}.json"
    if path.exists():
        try:
            return Judgement.from_json(path.read_text())
        except (ValueError, KeyError):
            return None
    return None


def _cache_put(key: str, j: Judgement) -> None:
    path = cache_dir() / key[:2] / f"{key}-{j.target}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    d = j.to_dict()
    d["artifacts"] = {}
    d["extra"].pop("raw", None)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(d))
    tmp.replace(path)


# ---------------------------------------------------------------------------- hashing
def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _hash_program(ep: Any) -> Any:
    h = hashlib.sha256()
    h.update(ep.graph_module.code.encode())
    for name, t in sorted(ep.state_dict.items()):
        h.update(name.encode())
        _hash_tensor(h, t)
    for name, t in sorted(ep.constants.items()):
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            _hash_tensor(h, t)
    return h


def _args(example_inputs: Any) -> tuple[Any, ...]:
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise FoldError("judge takes a tensor or a tuple of tensors as example_inputs")
    return tuple(a.detach().contiguous() for a in args)


def _calibration(args: tuple[torch.Tensor, ...], calibration: Any) -> list[tuple[torch.Tensor, ...]]:
    if calibration is None:
        gen = torch.Generator().manual_seed(0)
        return [args] + [tuple(torch.randn(a.shape, generator=gen) for a in args) for _ in range(7)]
    samples = [s if isinstance(s, tuple) else (s,) for s in calibration]
    if not samples:
        raise FoldError("calibration is empty: give at least one input sample for int8 quantisation")
    return [tuple(t.detach().contiguous() for t in s) for s in samples]


# ---------------------------------------------------------------------------- export
@contextlib.contextmanager
def _inference(model: nn.Module, lowering: str | None, exporter: str) -> Iterator[None]:
    from ..export import _eval_mode, _frozen
    from .lowering import lowered_rearrangements

    with _eval_mode(model), _frozen(model), contextlib.ExitStack() as stack:
        if lowering is not None:
            stack.enter_context(lowered_rearrangements(lowering, exporter=exporter))
        yield


def _lowering_for(target: str, lowering: str | None) -> str | None:
    return DEFAULT_LOWERING.get(target) if lowering == "auto" else lowering


def _export_program(model: nn.Module, args: tuple[torch.Tensor, ...], lowering: str | None, path: Path) -> Any:
    with _inference(model, lowering, "tflite"), torch.no_grad():
        try:
            ep = torch.export.export(model, args)
        except Exception as err:
            raise FoldError(f"torch.export could not capture the model for TFLite conversion: "
                            f"{type(err).__name__}: {' '.join(str(err).split())[:1500]}") from err
    torch.export.save(ep, str(path))
    return ep


def _export_onnx(model: nn.Module, args: tuple[torch.Tensor, ...], lowering: str | None, path: Path) -> None:
    from ..export import to_onnx

    native = lowering == "native"
    with _inference(model, None if native else lowering, "onnx"):
        to_onnx(model, args, path, native_rearrange=native, rtol=1e-4)


# ---------------------------------------------------------------------------- running workers
def _run_worker(compiler: str, jobs: list[dict[str, Any]], workdir: Path, timeout: float) -> dict[Any, Any]:
    """Run the jobs in the compiler's venv; a worker that dies costs the job it was on, the rest are rerun."""
    python = env_python(compiler)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    done: dict[Any, Any] = {}
    remaining = list(jobs)
    for attempt in range(len(jobs) + 1):
        if not remaining:
            break
        spec, out = workdir / f"{compiler}-jobs-{attempt}.json", workdir / f"{compiler}-results-{attempt}.jsonl"
        spec.write_text(json.dumps({"jobs": remaining}))
        out.unlink(missing_ok=True)
        died = ""
        try:
            proc = subprocess.run([str(python), "-m", f"pixelfold.judges._worker_{compiler}", str(spec), str(out)],
                                  capture_output=True, text=True, timeout=timeout * len(remaining) + 120, env=env,
                                  cwd=str(workdir))
            if proc.returncode != 0:
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
                died = f"the {compiler} worker died (exit {proc.returncode}) on this job:\n{tail}"
        except subprocess.TimeoutExpired:
            died = f"the {compiler} worker ran past its time limit on this job"
        if out.exists():
            for line in out.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    done[r["id"]] = r
        remaining = [j for j in remaining if j["id"] not in done]
        if remaining:
            victim = remaining.pop(0)
            done[victim["id"]] = {"id": victim["id"], "error": died or f"the {compiler} worker returned no result"}
    return done


def _crashed(target: str, compiler: str, message: str) -> Judgement:
    return Judgement(target, compiler, "", crashed=True, message=message)


def judge_batch(
    cases: Sequence[tuple[Any, nn.Module, Any]],
    targets: Sequence[str],
    *,
    quantize: str | None = "int8",
    calibration: Any = None,
    lowering: str | None = "auto",
    workdir: str | os.PathLike[str] | None = None,
    cache: bool = True,
    timeout: float = 600.0,
    keep_raw: bool = False,
) -> dict[Any, dict[str, Judgement]]:
    """Judge many ``(key, model, example_inputs)`` cases for many targets with one worker run per compiler.

    Starting a judge environment costs tens of seconds (litert-torch alone imports for ~25 s), so
    surveys and tuners should batch. Returns ``{key: {target: Judgement}}``.
    """
    if quantize not in (None, "int8"):
        raise FoldError(f"quantize must be None (float) or 'int8', got {quantize!r}")
    groups: dict[tuple[str, str | None], list[str]] = {}
    for t in targets:
        compiler, _ = _compiler(t)
        groups.setdefault((compiler, _lowering_for(t, lowering)), []).append(t)
    for compiler, _ in groups:
        env_python(compiler)  # fail early and clearly when an environment is missing
    results: dict[Any, dict[str, Judgement]] = {key: {} for key, _, _ in cases}
    with contextlib.ExitStack() as stack:
        root = Path(workdir) if workdir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pixelfold-judge-")))
        root.mkdir(parents=True, exist_ok=True)
        jobs: dict[str, list[dict[str, Any]]] = {}
        meta: dict[int, tuple[Any, str, str | None, str]] = {}
        for c, (key, model, example_inputs) in enumerate(cases):
            if not isinstance(model, nn.Module):
                raise FoldError(f"judge compiles an nn.Module, got {type(model).__name__}")
            args = _args(example_inputs)
            samples = _calibration(args, calibration) if quantize else None
            for g, ((compiler, low), names) in enumerate(groups.items()):
                n = len(meta)
                work = root / f"case{c}" / f"{compiler}-{low or 'default'}"
                work.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256(f"v{JUDGE_VERSION}|{compiler}|{quantize}|{low}".encode())
                job: dict[str, Any] = {"id": n, "workdir": str(work), "quantize": quantize, "timeout": timeout,
                                       "keep_raw": keep_raw}
                try:
                    if compiler == "vela":
                        ep = _export_program(model, args, low, work / "model.pt2")
                        h.update(_hash_program(ep).digest())
                        torch.save({"args": args, "calibration": samples}, work / "inputs.pt")
                        job.update(program=str(work / "model.pt2"), inputs=str(work / "inputs.pt"))
                    else:
                        onnx_path = work / "model.onnx"
                        _export_onnx(model, args, low, onnx_path)
                        h.update(onnx_path.read_bytes())
                        job.update(onnx=str(onnx_path), onnx_ops=_count_ops(onnx_path),
                                   calibration=_save_npy(samples, work) if samples else None)
                    for s in samples or []:
                        for t in s:
                            _hash_tensor(h, t)
                except FoldError as err:
                    for t in names:
                        results[key][t] = _crashed(t, compiler, f"export failed: {err}")
                    continue
                digest = h.hexdigest()
                todo = []
                for t in names:
                    hit = _cache_get(digest, t) if cache and not keep_raw else None
                    if hit is not None:
                        hit.extra["cached"] = True
                        results[key][t] = hit
                    else:
                        todo.append(t)
                if todo:
                    job["targets"] = {t: TARGETS[t][1] for t in todo}
                    meta[n] = (key, compiler, low, digest)
                    jobs.setdefault(compiler, []).append(job)
        for compiler, group in jobs.items():
            got_all = _run_worker(compiler, group, root, timeout)
            for job in group:
                key, _, low, digest = meta[job["id"]]
                got = got_all.get(job["id"], {"error": "no result"})
                if "error" in got:
                    for t in job["targets"]:
                        results[key][t] = _crashed(t, compiler, got["error"])
                    continue
                for d in got["judgements"]:
                    j = Judgement.from_dict(d)
                    j.extra["lowering"] = low
                    if got.get("export"):
                        j.extra["tflite_check"] = got["export"]
                    if cache:
                        _cache_put(digest, j)
                    if workdir is None:
                        j.artifacts = {}
                    results[key][j.target] = j
    return {key: {t: results[key][t] for t in targets} for key in results}


def judge_targets(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    targets: Sequence[str],
    **kwargs: Any,
) -> dict[str, Judgement]:
    """:func:`judge` for several targets at once: one export per compiler (and lowering), one worker run each."""
    return judge_batch([(0, model, example_inputs)], targets, **kwargs)[0]


def _count_ops(path: Path) -> dict[str, int]:
    from ..export import count_ops

    return count_ops(path)


def _save_npy(samples: list[tuple[torch.Tensor, ...]], work: Path) -> list[list[str]]:
    import numpy as np

    out = []
    for k, s in enumerate(samples):
        names = []
        for i, t in enumerate(s):
            p = work / f"calib{k}_{i}.npy"
            np.save(p, t.numpy().astype(np.float32))
            names.append(str(p))
        out.append(names)
    return out


def judge(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    target: str,
    *,
    quantize: str | None = "int8",
    workdir: str | os.PathLike[str] | None = None,
    calibration: Any = None,
    lowering: str | None = "auto",
    cache: bool = True,
    timeout: float = 600.0,
) -> Judgement:
    """Compile ``model`` for ``target`` with the vendor's compiler; per-op NPU/CPU placement and cycles.

    Targets: ``ethos-u55-128``, ``ethos-u65-256``, ``ethos-u85-256`` (Arm Vela 5.2: PyTorch → int8 TFLite
    → ``vela``) and ``rk3588``, ``rk3568``, ``rk3576``, ``rv1106`` (rknn-toolkit2 2.5: PyTorch → ONNX →
    ``RKNN.build``). ``lowering="auto"`` writes pixelfold's rearrangements the way the target runs them
    (:data:`DEFAULT_LOWERING`); ``None`` keeps pixelfold's default. ``workdir`` keeps the exported and
    compiled files (their paths are in ``artifacts``). A compiler crash, or a conversion the tools refuse,
    is a ``Judgement`` with ``crashed=True`` and the tool's own message.

    Raises:
        FoldError: an unknown target, or its environment is missing (build it with ``make npu-env``).
    """
    return judge_batch([(0, model, example_inputs)], [target], quantize=quantize, calibration=calibration,
                       lowering=lowering, workdir=workdir, cache=cache, timeout=timeout)[0][target]


def judge_file(
    path: str | os.PathLike[str],
    target: str,
    *,
    quantize: str | None = "int8",
    calibration: Sequence[Sequence[Any]] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    cache: bool = True,
    timeout: float = 600.0,
) -> Judgement:
    """Judge a file the user already has: an int8 ``.tflite`` for Ethos-U targets, an ``.onnx`` for RKNN ones.

    For RKNN with ``quantize="int8"`` the calibration samples are ``calibration`` (a list of per-input
    arrays) or, by default, 8 seeded standard-normal samples of the graph's input shapes.
    """
    path = Path(path)
    compiler, name = _compiler(target)
    want = ".tflite" if compiler == "vela" else ".onnx"
    if path.suffix != want:
        raise FoldError(f"{target} is judged by {compiler}, which takes a {want} file; got {path.name}")
    if not path.exists():
        raise FoldError(f"no such file: {path}")
    env_python(compiler)
    data = path.read_bytes()
    h = hashlib.sha256(f"v{JUDGE_VERSION}|file|{compiler}|{quantize}".encode() + data)
    with contextlib.ExitStack() as stack:
        root = Path(workdir) if workdir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pixelfold-judge-")))
        root.mkdir(parents=True, exist_ok=True)
        job: dict[str, Any] = {"id": 0, "workdir": str(root), "targets": {target: name}, "timeout": timeout}
        if compiler == "vela":
            job["tflite"] = str(path.resolve())
        else:
            samples = None
            if quantize:
                samples = _onnx_samples(path, calibration)
                for s in samples:
                    for t in s:
                        _hash_tensor(h, t)
            job.update(onnx=str(path.resolve()), onnx_ops=_count_ops(path),
                       calibration=_save_npy(samples, root) if samples else None)
        key = h.hexdigest()
        hit = _cache_get(key, target) if cache else None
        if hit is not None:
            hit.extra["cached"] = True
            return hit
        got = _run_worker(compiler, [job], root, timeout)[0]
        if "error" in got:
            return _crashed(target, compiler, got["error"])
        j = Judgement.from_dict(got["judgements"][0])
        if cache:
            _cache_put(key, j)
        if workdir is None:
            j.artifacts = {}
        return j


def _onnx_samples(path: Path, calibration: Any) -> list[tuple[torch.Tensor, ...]]:
    if calibration is not None:
        return [tuple(torch.as_tensor(a, dtype=torch.float32) for a in s) for s in calibration]
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    shapes = []
    for inp in graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if any(d <= 0 for d in dims):
            raise FoldError(f"input {inp.name!r} of {path.name} has a dynamic shape {dims}; give calibration samples")
        shapes.append(dims)
    gen = torch.Generator().manual_seed(0)
    return [tuple(torch.randn(s, generator=gen) for s in shapes) for _ in range(8)]


def _reseeded(module: nn.Module, seed: int) -> nn.Module:
    """A copy of ``module`` with deterministic parameters (uniform ±1/sqrt(fan_in)) and buffers as they are."""
    m = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            fan = math.prod(p.shape[1:]) if p.dim() > 1 else max(1, p.numel())
            bound = 1.0 / math.sqrt(fan)
            p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1).mul(bound).to(p.dtype))
    return m


def _layer_case(module: nn.Module, input_shape: Sequence[int]) -> tuple[nn.Module, torch.Tensor]:
    if not isinstance(module, nn.Module):
        raise FoldError(f"judge_layer takes an nn.Module, got {type(module).__name__}")
    shape = tuple(int(s) for s in input_shape)
    if any(s <= 0 for s in shape):
        raise FoldError(f"input_shape must be positive, got {shape}")
    return _reseeded(module, 0), torch.randn(shape, generator=torch.Generator().manual_seed(1))


def layer_key(module: nn.Module, input_shape: Sequence[int]) -> str:
    """A key for one layer spec on one input shape: its structure and (reseeded) state, not its weights.

    Two layers with the same spec get the same key, whatever their trained weights:

    >>> a, b = nn.Conv2d(4, 8, 3, stride=2), nn.Conv2d(4, 8, 3, stride=2)
    >>> layer_key(a, (1, 4, 16, 16)) == layer_key(b, (1, 4, 16, 16))
    True
    >>> layer_key(a, (1, 4, 16, 16)) == layer_key(nn.Conv2d(4, 8, 3), (1, 4, 16, 16))
    False
    """
    layer, _ = _layer_case(module, input_shape)
    h = hashlib.sha256(f"{tuple(int(s) for s in input_shape)}|{layer!r}".encode())
    for name, t in sorted(layer.state_dict().items()):
        h.update(name.encode())
        _hash_tensor(h, t)
    return h.hexdigest()


def judge_layers(
    layers: Sequence[tuple[nn.Module, Sequence[int]]],
    target: str,
    *,
    quantize: str | None = "int8",
    lowering: str | None = "auto",
    cache: bool = True,
    workdir: str | os.PathLike[str] | None = None,
) -> list[Judgement]:
    """:func:`judge_layer` for many ``(module, input_shape)`` layers with one compiler run (in order).

    Layers with the same spec (:func:`layer_key`) are exported and compiled once.
    """
    keys = [layer_key(m, s) for m, s in layers]
    unique: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    for k, (m, s) in zip(keys, layers):
        if k not in unique:
            unique[k] = _layer_case(m, s)
    got = judge_batch([(k, m, x) for k, (m, x) in unique.items()], [target], quantize=quantize,
                      lowering=lowering, workdir=workdir, cache=cache)
    return [got[k][target] for k in keys]


def judge_layer(
    module: nn.Module,
    input_shape: Sequence[int],
    target: str,
    *,
    quantize: str | None = "int8",
    lowering: str | None = "auto",
    cache: bool = True,
    workdir: str | os.PathLike[str] | None = None,
) -> Judgement:
    """Compile one layer alone (on a seeded random input of ``input_shape``, NCHW) for ``target``.

    The layer's weights are replaced (on a copy) by seeded random ones, so two
    layers with the same spec compile once: the cache is keyed by the export's
    content. Placement and cycle estimates do not depend on the weight values
    beyond quantisation scales. For Ethos-U the file has NHWC input and output
    (``litert_torch.to_channel_last_io``), as a model's inner layers do.
    """
    layer, x = _layer_case(module, input_shape)
    return judge(layer, x, target, quantize=quantize, lowering=lowering, cache=cache, workdir=workdir)


def _cleanup(path: Path) -> None:  # pragma: no cover
    shutil.rmtree(path, ignore_errors=True)
