"""DDP smoke test: a model rewritten by ``rewrite(model, "no_stride")`` trains under DistributedDataParallel.

Two CPU processes (gloo) each train the rewritten model on half the batch;
DDP averages their gradients, so after a few SGD steps the parameters must
equal those of the *original* model trained in one process on the whole batch
(float64, same names: the forms keep the original Parameters).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import pixelfold as pf
from pixelfold import PhaseConv, SubpixelConvTranspose

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with the gloo backend is not available"
)

WORLD, BATCH, STEPS, LR = 2, 8, 4, 0.05
TIMEOUT_S = 300.0  # a hang guard only (a worker stuck in gloo's rendezvous), not a timing assertion


def _setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The same model (strided convs, a grouped one, a transposed conv; no BatchNorm) and data in every process."""
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2), nn.Tanh(),
            nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(4 * 6 * 6, 5),
        ).double()
    x = torch.randn(BATCH, 3, 11, 12, dtype=torch.float64, generator=gen)
    y = torch.randn(BATCH, 5, dtype=torch.float64, generator=gen)
    return model, x, y


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model, x, y = _setup()
        new, report = pf.rewrite(model, "no_stride", example_inputs=x)
        ddp = nn.parallel.DistributedDataParallel(new)
        shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        _train(ddp, x[shard], y[shard])
        if rank == 0:
            kinds = sorted(type(m).__name__ for m in new.modules() if isinstance(m, (PhaseConv, SubpixelConvTranspose)))
            torch.save({"params": {k: p.detach().clone() for k, p in new.named_parameters()}, "kinds": kinds,
                        "changed": len(report.changed)}, Path(out) / "rank0.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    except OSError as err:  # no loopback networking in this sandbox
        pytest.skip(f"cannot bind a localhost port for gloo: {err}")


def test_ddp_two_processes_match_single_process_training(tmp_path: Path) -> None:
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    got = torch.load(tmp_path / "rank0.pt")
    # not vacuous: the strided convs were folded and the transposed conv became a sub-pixel conv
    assert got["kinds"] == ["PhaseConv", "PhaseConv", "SubpixelConvTranspose"] and got["changed"] == 3

    model, x, y = _setup()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    _train(model, x, y)  # the original model, one process, the whole batch
    ref = {k: p.detach() for k, p in model.named_parameters()}
    assert sorted(got["params"]) == sorted(ref)
    for name, p in got["params"].items():
        assert not torch.equal(ref[name], before[name]), f"{name} did not train"
        err = float((p - ref[name]).abs().max())
        assert err <= 1e-12 * max(1.0, float(ref[name].abs().max())), f"{name}: max|Δ| {err:.3g}"
