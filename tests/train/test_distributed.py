"""DDP: sharding covers every batch without overlap, and two CPU processes on gloo train to identical weights on
both ranks (and, up to float summation order, to the weights of one process with the same global batch)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.errors import MasterkeyError
from masterkey.train import TrainConfig, train
from masterkey.train.data import derive_seed, epoch_order, global_batch
from masterkey.train.distributed import init_distributed, resolve_device, shard_batch, shard_eval
from masterkey.train.loop import build_model


@settings(max_examples=40, deadline=None)
@given(world=st.integers(1, 8), per_rank=st.integers(1, 16), n_images=st.integers(1, 400), step=st.integers(0, 5))
def test_shards_of_a_global_batch_are_disjoint_and_cover_it(
    world: int, per_rank: int, n_images: int, step: int
) -> None:
    batch_size = world * per_rank
    order = epoch_order(max(n_images, batch_size * (step + 1)), seed=0, epoch=0)
    batch = global_batch(order, step, batch_size)
    shards = [shard_batch(batch, r, world) for r in range(world)]
    assert all(len(s) == per_rank for s in shards)
    assert torch.equal(torch.cat(shards), batch)  # in order, disjoint, complete
    evals = [shard_eval(n_images, r, world) for r in range(world)]
    assert sorted(torch.cat(evals).tolist()) == list(range(n_images))


def test_uneven_batches_and_missing_cuda_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MasterkeyError, match="not a multiple of the 3 processes"):
        shard_batch(torch.arange(10), 0, 3)
    if not torch.cuda.is_available():
        with pytest.raises(MasterkeyError, match="CUDA is not available"):
            resolve_device("cuda")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(MasterkeyError, match="MASTER_ADDR is not set: launch with torchrun"):
        init_distributed("cpu")


def initial_model(config: TrainConfig) -> torch.nn.Module:
    torch.manual_seed(derive_seed(config.seed, "init"))
    return build_model(config)[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, config_json: str, out: str, dump: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1"}
    )
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    result = train(TrainConfig.from_dict(json.loads(config_json)), out)
    torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()}, f"{dump}/rank{rank}.pt")


def test_two_gloo_processes_train_identical_weights(tiny: TrainConfig, tmp_path: Path) -> None:
    config = tiny.replace(mode="frozen", epochs=1, learn_scale=True)
    out = tmp_path / "ddp"
    init = initial_model(config).state_dict()
    single = train(config).model.state_dict()  # also leaves the decoded data in memory for the forked ranks
    # fork, not spawn: the ranks inherit the imported modules instead of importing torch and timm again.
    mp.start_processes(
        _worker,
        args=(2, _free_port(), json.dumps(config.to_dict()), str(out), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks ended with different weights"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3 and summary["n_test"] == 40
    # The same global batch in one process: the same data, crops and flips, so the same weights up to the order
    # of float sums (DDP averages two half-batch gradients).
    for name, value in rank0.items():
        torch.testing.assert_close(value, single[name], rtol=1e-4, atol=1e-5, msg=name)
    moved = [k for k in rank0 if k.endswith("offset") and not torch.allclose(rank0[k], init[k], atol=1e-6)]
    assert len(moved) == 4, "the DDP run did not train the offsets"
