"""The training loop: every mode trains, frozen keys stay bitwise frozen, run directories follow the contract, and a
run killed mid-epoch resumes to exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from masterkey.data.augment import derive_seed
from masterkey.errors import MasterkeyError
from masterkey.keys import load_keys
from masterkey.networks.models import create_model
from masterkey.nn import PUBLISHED_PROPORTIONS, counts_from_proportions, key_layers
from masterkey.train import TrainConfig, train
from masterkey.train.loop import CHECKPOINT, EPOCH_COLUMNS, build_model, lr_factor, partial_dir


def initial_model(config: TrainConfig) -> torch.nn.Module:
    torch.manual_seed(derive_seed(config.seed, "init"))  # what train() does before building
    return build_model(config)[0]


def depthwise_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "conv_dw" in n}


@pytest.mark.parametrize(
    ("mode", "learn_scale"), [("trainable", False), ("frozen", False), ("frozen", True), ("key-init", False)]
)
def test_every_mode_trains_and_frozen_keys_never_change(tiny: TrainConfig, mode: str, learn_scale: bool) -> None:
    config = tiny.replace(mode=mode, learn_scale=learn_scale, keys="paper8", assignment="convnextv2-b")
    before = initial_model(config)
    result = train(config)
    after = result.model
    assert math.isfinite(result.summary["train_loss"]) and result.summary["steps"] == 3
    if mode == "frozen":
        keyconvs_before, keyconvs_after = key_layers(before), key_layers(after)
        assert len(keyconvs_after) == 4
        for (_, old), (_, new) in zip(keyconvs_before, keyconvs_after, strict=True):
            assert torch.equal(old.key, new.key), "a frozen key changed"
            assert torch.equal(old.key_index, new.key_index)
            assert not torch.equal(old.offset, new.offset), "the offsets b did not train"
            if learn_scale:
                assert not torch.equal(old.scale, new.scale), "the scales a did not train"
        expected = sum(counts_from_proportions(c, PUBLISHED_PROPORTIONS["convnextv2-b"]) for c in (8, 16, 24, 32))
        assert result.summary["key_counts"] == expected.tolist()
        assert result.summary["parameters"]["frozen_key_values"] == 80 * 49
    else:
        old, new = depthwise_weights(before), depthwise_weights(after)
        assert len(old) == 8 and all(not torch.equal(old[n], new[n]) for n in old if n.endswith("weight"))
    if mode == "key-init":
        keys = load_keys("paper8").keys
        w = before.stages[0].blocks[0].conv_dw.weight.detach()[:, 0]
        assert float((w[:, None] - keys[None]).flatten(2).abs().amax(2).amin(1).max()) < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_frozen_keys_train_on_cuda_with_bf16_and_channels_last(tiny: TrainConfig, tmp_path: Path) -> None:
    config = tiny.replace(mode="frozen", keys="paper8", device="cuda", epochs=2)
    before = initial_model(config)
    result = train(config, tmp_path / "run")
    assert result.summary["device"] == torch.cuda.get_device_name(0)
    assert math.isfinite(result.summary["train_loss"]) and result.summary["steps"] == 6
    for (_, old), (_, new) in zip(key_layers(before), key_layers(result.model), strict=True):
        assert torch.equal(old.key, new.key.cpu()), "a frozen key changed"
        assert not torch.equal(old.offset, new.offset.cpu()), "the offsets b did not train"
    exported = create_model(config.model, weights=tmp_path / "run" / "model.safetensors", **config.model_kwargs)
    assert all(torch.isfinite(p).all() for p in exported.parameters())


def test_run_directory_follows_the_contract_and_exports_plain_timm(tiny: TrainConfig, tmp_path: Path) -> None:
    config = tiny.replace(mode="frozen", epochs=2, mixup=0.8, cutmix=1.0, ema_decay=0.9, learn_scale=True)
    out = tmp_path / "run"
    result = train(config, out)
    assert not partial_dir(out).exists()
    names = {p.name for p in out.iterdir()}
    assert {"run.json", "metrics.csv", "metrics.jsonl", "summary.json", CHECKPOINT, "model.safetensors"} <= names
    assert "model_ema.safetensors" in names
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "train" and info["config"]["mode"] == "frozen"
    assert info["config"]["model_kwargs"]["num_classes"] == 10 and info["config"]["normalize"] == "cifar10"
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns[: len(EPOCH_COLUMNS)]) == EPOCH_COLUMNS
    assert metrics["epoch"].tolist() == [1, 2] and metrics["step"].tolist() == [3, 6]
    assert {"ema_test_top1", "images_per_second"} <= set(metrics.columns)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "test_top1" not in r] == [1, 2, 3, 4, 5, 6]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_top1"] == pytest.approx(metrics["test_top1"].iloc[-1])
    assert summary["mode"] == "frozen" and summary["keys"] == "paper8" and summary["world_size"] == 1
    # The export is a plain timm state dict: masterkey.networks.models / timm load it strictly and compute the same.
    plain = create_model(weights=out / "model.safetensors", dims=[8, 16, 24, 32], depths=[1, 1, 1, 1])
    x = torch.randn(2, 3, 32, 32)
    result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), result.model(x))
    # Schedule: linear warm-up over half an epoch (2 steps), then cosine to 0 at step 6.
    assert lr_factor(0, 2, 6, 0.0) == 0.5 and lr_factor(1, 2, 6, 0.0) == 1.0
    assert lr_factor(4, 2, 6, 0.0) == pytest.approx(0.5) and lr_factor(6, 2, 6, 0.0) == pytest.approx(0.0)
    assert [r["lr"] for r in rows if "test_top1" not in r][:4] == pytest.approx(
        [1.5e-3, 3e-3, 3e-3, 3e-3 * 0.5 * (1 + math.cos(math.pi / 4))]
    )


_KILLED_RUN = """
import os, signal, sys
import torch
torch.set_num_threads(int(sys.argv[4]))
from masterkey.train import TrainConfig, train
config = TrainConfig.from_dict({k: v for k, v in __import__("json").loads(sys.argv[1]).items()})
kill_at = int(sys.argv[3])
def on_step(epoch, step):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind, as in a crash
train(config, sys.argv[2], on_step=on_step)
"""


def _killed_run(config: TrainConfig, tmp_path: Path) -> Path:
    """Train ``config`` in a subprocess killed with SIGKILL after 5 steps; returns its output path."""
    out = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(_KILLED_RUN)
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(config.to_dict()), str(out), "5", str(torch.get_num_threads())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return out


@pytest.mark.kill
def test_a_run_killed_mid_epoch_resumes_to_identical_weights(tiny: TrainConfig, tmp_path: Path) -> None:
    config = tiny.replace(mode="frozen", epochs=2, mixup=0.5, model_kwargs={**tiny.model_kwargs, "drop_path_rate": 0.1})
    out = _killed_run(config, tmp_path)
    partial = partial_dir(out)
    assert not out.exists() and (partial / CHECKPOINT).is_file() and not (partial / "summary.json").exists()
    assert torch.load(partial / CHECKPOINT, weights_only=True)["epoch"] == 1  # killed in epoch 2 (steps 4-6)

    with pytest.raises(MasterkeyError, match=r"different config: lr: 0\.003 \(checkpoint\) vs 0\.001 \(now\)"):
        train(config.replace(lr=1e-3), out, resume=True)
    with pytest.raises(MasterkeyError, match="interrupted run: pass resume=True"):
        train(config, out)
    resumed = train(config, out, resume=True)
    reference = train(config, tmp_path / "uninterrupted")

    a = load_file(out / "model.safetensors")
    b = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    ma, mb = (pd.read_csv(d / "metrics.csv") for d in (out, tmp_path / "uninterrupted"))
    same = [c for c in ma.columns if c not in ("seconds", "images_per_second")]
    pd.testing.assert_frame_equal(ma[same], mb[same])
    assert resumed.summary["test_top1"] == reference.summary["test_top1"]
    with pytest.raises(MasterkeyError, match="already complete"):
        train(config, out, resume=True)


def test_an_in_memory_run_killed_mid_epoch_resumes_bitwise_ema_included(tiny: TrainConfig, tmp_path: Path) -> None:
    """In memory (batches drawn on the device), with EMA, mixup and drop-path, checkpointing every 2 steps: killed
    by SIGKILL at step 5, after the checkpoint of step 4 (epoch 2, step 1 of 3), it resumes from that step to the
    weights *and the EMA weights* of an uninterrupted run (a resume that restarted the epoch, or rebuilt the EMA
    from the model, would not)."""
    config = tiny.replace(epochs=2, data_mode="memory", checkpoint_every=2, ema_decay=0.5, mixup=0.5, drop_path=0.1)
    out = _killed_run(config, tmp_path)
    ckpt = torch.load(partial_dir(out) / CHECKPOINT, weights_only=True)
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["step"]) == (1, 1, 4) and ckpt["ema"] is not None
    resumed = train(config, out, resume=True)
    reference = train(config, tmp_path / "uninterrupted")
    assert resumed.summary["data_mode"] == "memory" and resumed.summary["steps"] == reference.summary["steps"] == 6
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(out / name), load_file(tmp_path / "uninterrupted" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), f"resumed {name} differs from the uninterrupted run's"
    ma, mb = (pd.read_csv(d / "metrics.csv") for d in (out, tmp_path / "uninterrupted"))
    same = ["epoch", "step", "lr", "train_loss", "test_loss", "test_top1", "ema_test_loss", "ema_test_top1"]
    pd.testing.assert_frame_equal(ma[same], mb[same], check_exact=True)


def test_bad_inputs_give_clear_errors(tiny: TrainConfig, tmp_path: Path) -> None:
    with pytest.raises(MasterkeyError, match="'convnext_nope': not a timm or torchvision model name"):
        train(tiny.replace(model="convnext_nope"))
    small_kernels = {**tiny.model_kwargs, "kernel_sizes": 3}
    with pytest.raises(MasterkeyError, match=r"conv_dw: keys 'paper8' are 7x7 but 3x3.*resize=True"):
        train(tiny.replace(mode="frozen", model_kwargs=small_kernels), tmp_path / "kernels")
    with pytest.raises(MasterkeyError, match="num_classes=100 but .* has 10 classes"):
        train(tiny.replace(model_kwargs={**tiny.model_kwargs, "num_classes": 100}))
    with pytest.raises(MasterkeyError, match="convnext_atto.*bad keyword arguments"):
        train(tiny.replace(model_kwargs={**tiny.model_kwargs, "wings": 2}))
    with pytest.raises(MasterkeyError, match="batch size 64 exceeds the 60 training images"):
        train(tiny.replace(batch_size=64))
    with pytest.raises(MasterkeyError, match="expected DATA/train and DATA/test"):
        train(tiny.replace(data=str(Path(tiny.data) / "test")))
    with pytest.raises(MasterkeyError, match="lr=-1.0: expected a finite number >= 0"):
        tiny.replace(lr=-1.0)
    with pytest.raises(MasterkeyError, match="unknown option"):
        TrainConfig.from_dict({"data": "x", "learning_rate": 1})
    with pytest.raises(MasterkeyError, match="nothing to resume"):
        train(tiny, tmp_path / "never", resume=True)
    (tmp_path / "taken").mkdir()
    with pytest.raises(MasterkeyError, match="already exists"):
        train(tiny, tmp_path / "taken")
    if not torch.cuda.is_available():
        with pytest.raises(MasterkeyError, match="CUDA is not available"):
            train(tiny.replace(device="cuda"))
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    assert os.listdir(tmp_path / "taken") == []


@pytest.mark.kill
def test_a_streamed_run_killed_after_a_mid_epoch_checkpoint_resumes_bitwise(tiny: TrainConfig, tmp_path: Path) -> None:
    """Streamed, with per-image timm augmentation in a loader worker, drop-path and mixup: killed at step 5 after the
    checkpoint of step 4 (epoch 2, step 1 of 3), it resumes from there to the weights of an uninterrupted run."""
    config = tiny.replace(
        epochs=2, mixup=0.5, data_mode="stream", workers=1, checkpoint_every=2, image_size=32, train_crop="rrc",
        auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, drop_path=0.1,
    )  # fmt: skip
    out = _killed_run(config, tmp_path)
    ckpt = torch.load(partial_dir(out) / CHECKPOINT, weights_only=True)
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["step"]) == (1, 1, 4)
    resumed = train(config, out, resume=True)
    reference = train(config, tmp_path / "uninterrupted")
    a = load_file(out / "model.safetensors")
    b = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    ma, mb = (pd.read_csv(d / "metrics.csv") for d in (out, tmp_path / "uninterrupted"))
    same = ["epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_top1", "test_top5"]
    pd.testing.assert_frame_equal(ma[same], mb[same], check_exact=True)
    assert resumed.summary["data_mode"] == "stream" and reference.summary["test_top1"] == resumed.summary["test_top1"]


def test_a_finished_run_continues_with_more_epochs(
    tiny: TrainConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    first = train(tiny, out)
    before = pd.read_csv(out / "metrics.csv")
    with pytest.raises(MasterkeyError, match=r"already complete \(1 epochs\); nothing to resume \(pass epochs=N"):
        train(tiny, out, resume=True)
    with caplog.at_level(logging.WARNING, logger="masterkey"):
        longer = train(tiny.replace(epochs=3), out, resume=True)
    warning = next(r.getMessage() for r in caplog.records if "continuing a run planned for 1 epochs" in r.getMessage())
    assert "recomputed over 3 epochs from step 3" in warning and "from 0% to 95% of its peak" in warning
    assert longer.summary["epochs"] == 3 and longer.summary["steps"] == 9 and not partial_dir(out).exists()
    after = pd.read_csv(out / "metrics.csv")
    assert after["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(after.iloc[:1][list(before.columns)], before, check_exact=True)
    # The schedule goes on from step 3 under the 3-epoch cosine: lr factor of step 3 of 9 (warm-up 2 steps).
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lr4 = next(r["lr"] for r in rows if r["step"] == 4 and "test_top1" not in r)
    assert lr4 == pytest.approx(tiny.lr * lr_factor(3, 2, 9, 0.0))
    assert first.summary["test_top1"] == after["test_top1"].iloc[0]
    with pytest.raises(MasterkeyError, match=r"already complete \(3 epochs\)"):
        train(tiny.replace(epochs=2), out, resume=True)


# ---------------------------------------------------------------------- span, scale-space and transfer modes
def _source_weights(config: TrainConfig, path: Path) -> Path:
    """A "trained" model of the tiny architecture (random, seeded) saved as a plain state_dict file."""
    from safetensors.torch import save_file

    torch.manual_seed(123)
    model = build_model(config.replace(mode="trainable"))[0]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _newer_mode_configs(tiny: TrainConfig, tmp_path: Path) -> dict[str, TrainConfig]:
    kwargs = {**tiny.model_kwargs, "num_classes": 10}
    source = _source_weights(tiny.replace(model_kwargs=kwargs), tmp_path / "source.safetensors")
    return {
        "span": tiny.replace(mode="span", keys="paper8"),
        "scalespace-key": tiny.replace(mode="scalespace", keys="scalespace8", sigma_scope="key"),
        "scalespace-channel": tiny.replace(mode="scalespace", keys="scalespace8", sigma_scope="channel"),
        "transfer-frozen": tiny.replace(mode="transfer-frozen", filters_from=str(source)),
        "transfer-init": tiny.replace(mode="transfer-init", filters_from=str(source)),
    }


@pytest.mark.parametrize("arm", ["span", "scalespace-key", "scalespace-channel", "transfer-frozen", "transfer-init"])
def test_newer_modes_train_log_what_they_learn_and_export(tiny: TrainConfig, tmp_path: Path, arm: str) -> None:
    config = _newer_mode_configs(tiny, tmp_path)[arm].replace(epochs=2)
    before = initial_model(config)
    out = tmp_path / "run"
    result = train(config, out)
    after = result.model
    summary = json.loads((out / "summary.json").read_text())
    metrics = pd.read_csv(out / "metrics.csv")
    if arm == "span":
        for (_, old), (_, new) in zip(key_layers(before), key_layers(after), strict=True):
            assert torch.equal(old.basis, new.basis), "a key changed"
            assert not torch.equal(old.alpha, new.alpha), "the mixing weights did not train"
        assert summary["parameters"]["depthwise_trainable_per_channel"] == 9
        assert {f"dw_alpha_k{j}" for j in range(1, 9)} | {"dw_alpha_own"} <= set(metrics.columns)
        assert len(summary["depthwise_layers"][0]["mean_abs_alpha"]) == 8
    elif arm.startswith("scalespace"):
        for (_, old), (_, new) in zip(key_layers(before), key_layers(after), strict=True):
            assert not torch.equal(old.log_sigma_x, new.log_sigma_x), "σ did not train"
        assert summary["sigma_scope"] == config.sigma_scope
        assert {"dw_sigma_x_k8", "dw_sigma_y_k8", "dw_gamma_k7"} <= set(metrics.columns)
        assert metrics["dw_sigma_x_k8"].iloc[0] != metrics["dw_sigma_x_k8"].iloc[1]  # a trajectory, per epoch
    else:
        source = load_file(config.filters_from)
        frozen = arm == "transfer-frozen"
        for name, p in after.named_parameters():
            if name.endswith("conv_dw.weight"):
                assert p.requires_grad is not frozen
                assert torch.equal(p.detach(), source[name]) is frozen, name
                if frozen:
                    assert p.grad is None, "a frozen transferred filter got a gradient"
        assert summary["filters_from"] == config.filters_from and summary["keys"] is None
        assert summary["parameters"]["depthwise_trainable"] == (0 if frozen else 80 * 49)
        assert not any(c.startswith("dw_") for c in metrics.columns)
    plain = create_model(weights=out / "model.safetensors", dims=[8, 16, 24, 32], depths=[1, 1, 1, 1])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), after.eval()(x))


class _Crash(Exception):
    pass


@pytest.mark.parametrize("arm", ["span", "scalespace-channel", "transfer-frozen"])
def test_newer_modes_resume_to_bitwise_the_weights_of_an_uninterrupted_run(
    tiny: TrainConfig, tmp_path: Path, arm: str
) -> None:
    config = _newer_mode_configs(tiny, tmp_path)[arm].replace(epochs=2)
    out = tmp_path / "crashed"

    def crash(epoch: int, step: int) -> None:
        if step == 5:
            raise _Crash

    with pytest.raises(_Crash):
        train(config, out, on_step=crash)
    assert torch.load(partial_dir(out) / CHECKPOINT, weights_only=True)["epoch"] == 1
    train(config, out, resume=True)
    train(config, tmp_path / "uninterrupted")
    a = load_file(out / "model.safetensors")
    b = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    ma, mb = (pd.read_csv(d / "metrics.csv") for d in (out, tmp_path / "uninterrupted"))
    same = [c for c in ma.columns if c not in ("seconds", "images_per_second")]
    pd.testing.assert_frame_equal(ma[same], mb[same])


def test_newer_modes_refuse_bad_options(tiny: TrainConfig, tmp_path: Path) -> None:
    with pytest.raises(MasterkeyError, match="mode transfer-frozen copies .* filters_from=WEIGHTS"):
        tiny.replace(mode="transfer-frozen")
    with pytest.raises(MasterkeyError, match="filters_from=.*expected none unless mode is transfer-frozen"):
        tiny.replace(mode="frozen", filters_from="x.safetensors")
    with pytest.raises(MasterkeyError, match="sigma_scope='layer': expected key | channel"):
        tiny.replace(mode="scalespace", sigma_scope="layer")
    with pytest.raises(MasterkeyError, match="new_head=True: expected false unless weights are given"):
        tiny.replace(new_head=True)
    femto = _source_weights(
        tiny.replace(model_kwargs={**tiny.model_kwargs, "dims": [8, 16, 24, 40]}), tmp_path / "w.safetensors"
    )
    with pytest.raises(MasterkeyError, match=r"layer 'stages\.3\.blocks\.0\.conv_dw' is \(40, 1, 7, 7\) there"):
        train(tiny.replace(mode="transfer-init", filters_from=str(femto)), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not partial_dir(tmp_path / "out").exists()


def test_full_network_transfer_keeps_everything_but_a_fresh_classifier(tiny: TrainConfig, models_dir: Path) -> None:
    weights = models_dir / "mobilenet_v2_imagenet.pth"
    imagenet = torch.load(weights, map_location="cpu", weights_only=True)
    config = tiny.replace(model="torchvision:mobilenet_v2", model_kwargs={"num_classes": 10}, weights=str(weights))
    with pytest.raises(MasterkeyError, match="the weights have 1000 classes, the model 10.*pass new_head=True"):
        build_model(config)
    model = initial_model(config.replace(new_head=True))
    state = model.state_dict()
    assert state["classifier.1.weight"].shape == (10, 1280)
    assert all(torch.equal(state[k], v) for k, v in imagenet.items() if not k.startswith("classifier"))
    again = initial_model(config.replace(new_head=True))
    assert torch.equal(again.state_dict()["classifier.1.weight"], state["classifier.1.weight"])  # a seeded init


def _ddp_rank(rank: int, port: int, config_json: str, out: str, dump: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1"})
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    result = train(TrainConfig.from_dict(json.loads(config_json)), out)
    torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()}, f"{dump}/rank{rank}.pt")


@pytest.mark.parametrize("arm", ["scalespace-key", "span", "transfer-frozen"])
def test_newer_modes_train_under_ddp_like_one_process(tiny: TrainConfig, tmp_path: Path, arm: str) -> None:
    import socket

    import torch.multiprocessing as mp

    config = _newer_mode_configs(tiny, tmp_path)[arm]
    single = train(config).model.state_dict()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    args = (port, json.dumps(config.to_dict()), str(tmp_path / "ddp"), str(tmp_path))
    mp.start_processes(_ddp_rank, args=args, nprocs=2, join=True, start_method="fork")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks ended with different weights"
    for name, value in rank0.items():  # the same global batch: equal up to the order of float sums
        torch.testing.assert_close(value, single[name], rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2


def test_train_runs_with_its_thread_count_and_restores_the_callers(tiny: TrainConfig) -> None:
    """``threads`` holds for the whole run (masterkey.threads.torch_threads at the stage's boundary) and the caller's
    setting comes back afterwards, also when the run fails."""
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 1
    seen: list[int] = []
    train(tiny.replace(threads=wanted), on_step=lambda epoch, step: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {wanted}
    assert torch.get_num_threads() == before
    with pytest.raises(MasterkeyError):
        train(tiny.replace(threads=wanted, model="no-such-model"))
    assert torch.get_num_threads() == before
