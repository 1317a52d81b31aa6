"""Smoke test of the benchmark suite: the quick mode runs in-process, writes its files, and every form agrees
with the original. Correctness only: no assertion here depends on a timing."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pixelfold import bench


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    results = bench.run(quick=True, threads=1, out=out, rounds=1, min_run_time=0.002)
    return out, results, bench.run.last_info


def test_quick_run_writes_tables_json_and_chart(quick_run):
    out, results, _ = quick_run
    for ext in ("md", "json", "png"):
        path = out / f"cpu.{ext}"
        assert path.is_file() and path.stat().st_size > 0, path
    assert (out / "cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "cpu.md").read_text()
    assert f"torch {torch.__version__}" in md and "MALLOC_MMAP_MAX_" in md and "torch threads 1" in md
    for group in {r.group for r in results}:
        assert group in {g.key for g in bench.GROUPS}
    data = json.loads((out / "cpu.json").read_text())
    assert len(data["results"]) == len(results)
    assert data["meta"]["threads"] == 1 and data["meta"]["quick"] is True


def test_quick_run_every_form_matches_the_original(quick_run):
    _, results, _ = quick_run
    assert len(results) >= 30
    assert {"sweep", "patch_embed", "limit", "seed", "stems", "patchify", "focus", "transposed", "rearrange", "transforms", "rewrite"} <= {
        r.group for r in results}
    for r in results:
        assert r.status == "ok", (r.case, r.form, r.note)
        assert r.max_err <= 1e-4 * max(1.0, r.ref_max), (r.case, r.form, r.max_err, r.ref_max)
        assert r.time_ms > 0 and r.runs > 0 and len(r.rounds_ms) == 1
        assert not math.isnan(r.ratio)
    exact = [r for r in results if r.group in ("rearrange", "limit")]
    assert exact and all(r.max_err == 0 for r in exact)  # rearrangements move values: bit-exact


def test_quick_run_reports_the_rearrangement_targets(quick_run):
    _, results, _ = quick_run
    rows = bench.targets(results)
    kinds = {t["target"] for t in rows}
    assert any("NCHW" in k for k in kinds) and any("channels_last" in k for k in kinds)
    assert all(t["ratio"] > 0 for t in rows)
    limit = [t for t in rows if "vs best hand-written" in t["target"]]
    assert any("PatchLinear vs hand-written F.linear" in t["target"] for t in rows)
    assert any(t["target"].startswith("best polyphase block") for t in rows)
    assert len(limit) == 12 and all(t["limit"] == 1.1 and "GB/s" in t["target"] for t in limit)  # 3 orders × 2 × 2


def test_limit_target_is_the_ratio_to_the_fastest_hand_written_form():
    """Regression: the target took the smallest ratio over the bars, i.e. pixelfold vs the *slowest* of them."""
    from pixelfold.bench.cases_limit import limit_targets
    from pixelfold.bench.model import Result

    def r(form, ms):
        return Result("limit", "2-D space_to_depth b=2×2 crd, x", form, "NCHW", time_ms=ms[0], rounds_ms=ms,
                      note="0.1 GB moved" if form == "clone()" else "")

    rows = limit_targets([r("clone()", [1.0, 1.0]), r("hand-written reshape/permute/contiguous", [2.0, 2.0]),
                          r("einops.rearrange", [4.0, 4.0]), r("pixelfold.space_to_depth (crd)", [3.0, 3.0])])
    assert len(rows) == 1 and rows[0]["ratio"] == 1.5 and not rows[0]["met"]


@pytest.mark.slow
def test_tune_group_runs_on_a_timm_model():
    """(slow: tunes a timm model) the tune group compares tune() with the original in both layouts."""
    pytest.importorskip("timm")
    results = bench.run(cases=["tune"], quick=True, threads=1, rounds=1, min_run_time=0.001, compile=False)
    assert {r.form for r in results} == {"original", "tune()"}
    assert {r.layout for r in results} == {"NCHW", "channels_last"}
    assert all(r.status == "ok" and r.max_err <= 1e-4 * max(1.0, r.ref_max) for r in results)
    assert {t["target"].split(":")[0] for t in bench.targets(results)} == {"resnet50"}


def test_unknown_group_and_list(capsys):
    with pytest.raises(ValueError, match="unknown case group"):
        bench.run(cases=["nope"], quick=True)
    assert bench.main(["--list"]) == 0
    assert "rearrange" in capsys.readouterr().out


def test_paired_ratio_uses_rounds():
    a = bench.Result("g", "c", "a", "NCHW", rounds_ms=[2.0, 4.0, 3.0])
    b = bench.Result("g", "c", "b", "NCHW", rounds_ms=[1.0, 2.0, 1.0])
    assert bench.paired_ratio(a, b) == 2.0


@pytest.mark.parametrize("order", ["crd", "dcr", "focus"])
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_handwritten_rearrangements_match_the_numpy_oracle(order, n, layout):
    """The benchmark's hand-written bar (bench.handwritten) computes exactly what pixelfold.reference does."""
    from pixelfold.bench import handwritten as H

    block = (2, 4, 2)[:n]
    shape = (2, 3, *(4, 8, 4)[:n])
    x = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    xin = x.movedim(1, -1).contiguous().movedim(-1, 1) if layout == "channels_last" else x
    want = _numpy_space_to_depth(x.numpy(), block, order)
    y = H.s2d(xin, block, order)
    assert y.shape == want.shape and (y.numpy() == want).all()
    assert H.channels_last(y) == (layout == "channels_last")
    yin = y if layout == "channels_last" else y.contiguous()
    assert torch.equal(H.d2s(yin, block, order), x)


def _numpy_space_to_depth(x, block, order):
    """Element by element from the definition: channel c * R + phase (crd), phase * C + c (dcr, focus; focus
    numbers the phases first offset fastest)."""
    import itertools

    import numpy as np

    N, C, *S = x.shape
    R = math.prod(block)
    outer = [s // b for s, b in zip(S, block)]
    out = np.zeros((N, C * R, *outer), x.dtype)
    for off in itertools.product(*[range(b) for b in block]):
        key = off[::-1] if order == "focus" else off
        dims = block[::-1] if order == "focus" else block
        phase = 0
        for k, d in zip(key, dims):
            phase = phase * d + k
        for c in range(C):
            ch = c * R + phase if order == "crd" else phase * C + c
            src = x[(slice(None), c, *[slice(o, None, b) for o, b in zip(off, block)])]
            out[:, ch] = src
    return out


def test_every_limit_case_form_computes_its_own_shapes_block():
    """Regression: the limit group's callables bound the loop's last block (every 1-D/2-D case then failed)."""
    from pixelfold.bench.cases_limit import limit_cases

    ctx = bench.Context(torch.device("cpu"), torch.float32, quick=False, batch=1)
    cases = limit_cases(ctx)
    assert len(cases) == 7 * 3 * 2 * 2
    for case in cases:
        for f in case.forms:
            assert torch.equal(f.fn(f.arg), f.expected), (case.name, f.name)
