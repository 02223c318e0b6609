"""DDP: sharding covers every batch without overlap, and two CPU processes on gloo train to identical weights on
both ranks (and, up to float summation order, to the weights of one process with the same global batch)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.data.augment import derive_seed
from masterkey.data.batches import epoch_order, global_batch, shard_batch, shard_eval
from masterkey.errors import MasterkeyError
from masterkey.train import TrainConfig, train
from masterkey.train.distributed import init_distributed, resolve_device
from masterkey.train.loop import build_model
from masterkey.train.rundir import partial_dir


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


@pytest.mark.torchrun
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


# ---------------------------------------------------------------------- streamed, several processes, several nodes
_RUN = """
import json, os, signal, sys, torch
torch.set_num_threads(1)
from masterkey.train import TrainConfig, train
config = TrainConfig.from_dict(json.loads(sys.argv[1]))
out, record, kill_at, resume = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
rank = int(os.environ.get("RANK", "0"))
rows = []
def on_batch(epoch, step, index, x):
    rows.append({"epoch": epoch, "step": step, "index": index.tolist(), "sums": x.double().sum(dim=(1, 2, 3)).tolist()})
def on_step(epoch, step):
    if step == kill_at and rank == 0:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind, as in a crash
result = train(config, out, resume=resume, on_step=on_step, on_batch=on_batch)
with open(f"{record}.rank{rank}.json", "w") as f:
    json.dump(rows, f)
torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()}, f"{record}.rank{rank}.pt")
"""


@pytest.fixture
def streamed(small_tree, shared: Path, tmp_path: Path) -> TrainConfig:
    """Per-image timm augmentation (RandomResizedCrop, RandAugment, random erasing) in loader workers, drop-path,
    on 24 real Imagenette images at 32 px: 4 steps of 6 images per epoch."""
    source = shared / "data" / "imagenette-128"
    small_tree(tmp_path / "data" / "train", source / "train", classes=3, per_class=8)
    small_tree(tmp_path / "data" / "val", source / "val", classes=3, per_class=4)
    return TrainConfig(
        model="convnext_atto", model_kwargs={"dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "patch_size": 2},
        data=str(tmp_path / "data"), image_size=32, train_crop="rrc", auto_augment="rand-m9-mstd0.5-inc1",
        re_prob=0.5, drop_path=0.1, batch_size=6, epochs=2, warmup_epochs=0.5, eval_batch_size=16, progress=False,
        log_every=1, data_mode="stream", workers=0, device="cpu",
    )  # fmt: skip


def _recorder(rows: list[dict]) -> object:
    def on_batch(epoch: int, step: int, index: torch.Tensor, x: torch.Tensor) -> None:
        sums = x.double().sum(dim=(1, 2, 3)).tolist()
        rows.append({"epoch": epoch, "step": step, "index": index.tolist(), "sums": sums})

    return on_batch


def _stream_worker(rank: int, world: int, port: int, config_json: str, record: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    rows: list[dict] = []
    result = train(TrainConfig.from_dict(json.loads(config_json)), on_batch=_recorder(rows))
    Path(f"{record}.rank{rank}.json").write_text(json.dumps(rows))
    torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()}, f"{record}.rank{rank}.pt")


def _two_processes(config: TrainConfig, record: Path) -> list[list[dict]]:
    mp.start_processes(
        _stream_worker,
        args=(2, _free_port(), json.dumps(config.to_dict()), str(record)),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    return [json.loads(Path(f"{record}.rank{r}.json").read_text()) for r in range(2)]


def _merged(ranks: list[list[dict]]) -> list[dict]:
    """Per step, the ranks' images in rank order: what one process should have seen."""
    return [
        {**steps[0], "index": [i for s in steps for i in s["index"]], "sums": [v for s in steps for v in s["sums"]]}
        for steps in zip(*ranks, strict=True)
    ]


@pytest.mark.torchrun
def test_two_streaming_processes_see_the_global_batches_of_one(streamed: TrainConfig, tmp_path: Path) -> None:
    one: list[dict] = []
    single = train(streamed, on_batch=_recorder(one))
    two = _two_processes(streamed.replace(workers=1), tmp_path / "two")
    assert [len(r) for r in two] == [8, 8] and all(len(s["index"]) == 3 for s in two[0])
    merged = _merged(two)
    assert [(s["epoch"], s["step"], s["index"]) for s in merged] == [(s["epoch"], s["step"], s["index"]) for s in one]
    # The same images, augmented the same way (each image's draws depend on seed, epoch and image only).
    assert [s["sums"] for s in merged] == [s["sums"] for s in one]
    rank0, rank1 = (torch.load(tmp_path / f"two.rank{r}.pt", weights_only=True) for r in range(2))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert single.summary["n_train"] == 24  # (drop-path draws per rank, so the weights differ from one process)


def _torchrun(args: list[str], script: Path, run_args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *args, str(script), *run_args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.kill
@pytest.mark.torchrun
@pytest.mark.slow
def test_torchrun_streaming_resumes_after_kill_9_on_two_nodes(streamed: TrainConfig, tmp_path: Path) -> None:
    """Killed mid-epoch under ``torchrun --nproc_per_node 2``, resumed as two nodes of one process each (c10d
    rendezvous; rank 0 reads the checkpoint and hands it over): the weights of an uninterrupted 2-process run, bit
    for bit, and the same batches from the checkpoint on. About 90 s on 2 CPU cores."""
    config = streamed.replace(checkpoint_every=2)
    uninterrupted = _merged(_two_processes(config, tmp_path / "full"))
    script = tmp_path / "run.py"
    script.write_text(_RUN)
    out = tmp_path / "killed"
    spec = json.dumps(config.to_dict())
    run_args = [spec, str(out), str(tmp_path / "k"), "7", "0"]
    killed = _torchrun(["--standalone", "--nproc_per_node", "2"], script, run_args)
    log = killed.communicate(timeout=300)[0]
    assert killed.returncode != 0 and "SIGKILL" in log, log[-2000:]
    ckpt = torch.load(partial_dir(out) / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["step"]) == (1, 2, 6)  # mid-epoch 2, both ranks' states inside
    assert len(ckpt["partial"]["ranks"]) == 2 and not out.exists()
    rendezvous = ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{_free_port()}", "--rdzv_id", "resume"]
    run_args = [spec, str(out), str(tmp_path / "r"), "0", "1"]
    nodes = [
        _torchrun(["--nnodes", "2", "--node_rank", str(r), "--nproc_per_node", "1", *rendezvous], script, run_args)
        for r in range(2)
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), logs[0][-2000:] + logs[1][-2000:]
    full = torch.load(tmp_path / "full.rank0.pt", weights_only=True)
    resumed = torch.load(tmp_path / "r.rank0.pt", weights_only=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full), "resumed weights differ from the uninterrupted run"
    ranks = [json.loads((tmp_path / f"r.rank{r}.json").read_text()) for r in range(2)]
    assert _merged(ranks) == uninterrupted[6:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8 and summary["data_mode"] == "stream"
