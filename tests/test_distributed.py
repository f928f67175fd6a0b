"""Data-parallel training under torchrun's environment: 2 gloo ranks on CPU make the same updates as 1 process."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from model.factory import build_model
from pipeline.core.config import ParamsError
from pipeline.core.distributed import Dist, dist_from_env, distributed
from pipeline.core.io import DataError
from pipeline.training.checkpoint import FitState
from pipeline.training.loop import batch_loss, fit
from pipeline.training.predict import predict_logits
from tests.conftest import SMALL, feature_map, item_tables, toy_split, train_cfg

# No dropout: with it each rank draws its own masks, and the runs could not match.
NO_DROPOUT = dataclasses.replace(SMALL, transformer_dropout=0.0, net_dropout=0.0)
# Uneven sizes on purpose: 501 = 7 * 64 + 53, so the last global batch splits 27/26; valid slices are 101/100.
N_TRAIN, N_VALID = 501, 201


def _run(dist: Dist, device: torch.device) -> dict:
    """One global-batch gradient from the initial weights, then a short fit; what rank 0 (or the one process)
    ends with."""
    torch.manual_seed(0)
    model = build_model(NO_DROPOUT, feature_map(), *item_tables())
    train, valid = toy_split(N_TRAIN, seed=1), toy_split(N_VALID, seed=2)
    net = nn.parallel.DistributedDataParallel(model) if dist.enabled else model
    loss, _ = batch_loss(net, train, torch.arange(101), train_cfg(), device, dist)  # splits 51 / 50
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    # Two epochs (16 steps): the runs differ only in float summation order, which Adam's sign-like steps on
    # near-zero gradients amplify over longer runs.
    history = fit(model, train, valid, train_cfg(epochs=2, patience=3), device, dist=dist)
    logits = torch.from_numpy(predict_logits(model, valid, 64, device, dist=dist))
    return {"grads": grads, "history": history, "logits": logits}


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed("cpu", "train.device") as (dist, device):
        torch.save(_run(dist, device), Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_train_like_one_process(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ref = _run(Dist(), torch.device("cpu"))
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for got in ranks:
        # The gradient DDP averages over the two ranks' unequal parts is the global batch's, up to float order.
        for k, g in ref["grads"].items():
            torch.testing.assert_close(got["grads"][k], g, rtol=1e-5, atol=1e-7)
        # Training then follows the same path: per-epoch metrics agree closely, and every rank scores the whole
        # valid split. (Adam steps by about lr whatever a gradient's size, so weights whose gradient is float noise
        # may part by a share of one step: the comparison is on what the model computes.)
        assert len(got["history"]) == len(ref["history"])
        for a, b in zip(got["history"], ref["history"]):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
        torch.testing.assert_close(got["logits"], ref["logits"], rtol=1e-3, atol=1e-3)


def _rng_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    with distributed("cpu", "train.device") as (dist, _):
        torch.manual_seed(10 + rank)
        torch.save(dist.rng_states(), Path(out) / f"rng{rank}.pt")


def test_every_rank_s_rng_is_gathered_in_rank_order(tmp_path: Path) -> None:
    """A resume state holds every rank's RNG: it held rank 0's, which every rank then restored, so after a resume
    all ranks drew the same dropout masks and the run no longer ended where an uninterrupted one would."""
    mp.spawn(_rng_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    expected = [torch.manual_seed(10 + r).get_state() for r in range(2)]
    for r in range(2):
        got = torch.load(tmp_path / f"rng{r}.pt", weights_only=True)
        assert len(got) == 2 and all(torch.equal(g, e) for g, e in zip(got, expected))


def test_a_rank_left_waiting_for_a_stopped_rank_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranks waiting in a collective when another rank stops got gloo's RuntimeError ("Connection closed by
    peer"), one traceback each, burying the error that matters; now a one-line DataError. Any other RuntimeError
    is a bug and keeps its traceback."""
    import pipeline.core.distributed as d

    monkeypatch.setattr(d, "dist_from_env", lambda: Dist(rank=0, world=2))
    monkeypatch.setattr(d.dist, "init_process_group", lambda *a, **k: None)
    monkeypatch.setattr(d.dist, "destroy_process_group", lambda: None)
    gone = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:19357. GLHF!")
    with pytest.raises(DataError, match=r"^rank 0: stopped: another rank of the run failed or was stopped \(its "
                                        r"error is above\)$"), distributed("cpu", "train.device"):
        raise gone
    with pytest.raises(RuntimeError, match="a bug"), distributed("cpu", "train.device"):
        raise RuntimeError("a bug")


def test_a_resume_state_gives_each_rank_its_own_rng(tmp_path: Path) -> None:
    """FitState keeps every rank's RNG; rank r of a run of the same size gets its own back, a run of another size
    keeps the RNG each rank was seeded with."""
    torch.manual_seed(0)
    model = build_model(NO_DROPOUT, feature_map(), *item_tables())
    opt, gen = torch.optim.Adam(model.parameters()), torch.Generator()
    states = [torch.manual_seed(10 + r).get_state() for r in range(2)]
    FitState(lr=0.1).save(tmp_path / "state.pt", "fp", model, opt, gen, states)
    for rank, world, want in ((1, 2, states[1]), (0, 2, states[0]), (1, 3, torch.manual_seed(99).get_state())):
        torch.manual_seed(99)
        assert FitState.load(tmp_path / "state.pt", "fp", model, opt, gen, rank, world) is not None
        assert torch.equal(torch.get_rng_state(), want), (rank, world)


def test_dist_from_env_reads_torchrun_variables() -> None:
    assert dist_from_env({}) == Dist()
    d = dist_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (d.rank, d.world, d.local_rank, d.local_world, d.enabled, d.is_main) == (3, 4, 1, 2, True, False)
    assert [k for k in range(10) if d.owns(k)] == [3, 7]
    with pytest.raises(ParamsError, match="RANK=4 is outside WORLD_SIZE=4"):
        dist_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ParamsError, match="must be integers"):
        dist_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    single = Dist()
    assert single.sum(2.5, torch.device("cpu")) == 2.5
    assert single.gather_slices(torch.arange(3.0), 3, torch.device("cpu")).tolist() == [0.0, 1.0, 2.0]
