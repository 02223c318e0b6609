"""Experiments: files, the modes x seeds matrix, mean ± 95% CI (Student t), curves, and the CLI."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from masterkey.cli import main
from masterkey.errors import MasterkeyError
from masterkey.stats import mean_ci
from masterkey.train import TrainConfig, train
from masterkey.train.collect import collect_experiments
from masterkey.train.experiment import Arm, Experiment, load_experiment, standard_arms
from masterkey.train.runner import run_experiment
from masterkey.train.summary import summarize_runs


def test_mean_ci_is_the_student_t_interval() -> None:
    mean, std, half = mean_ci([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert half == pytest.approx(4.302652729911275 / math.sqrt(3))  # t(0.975, df=2) = 4.3027
    assert math.isnan(mean_ci([5.0])[2]) and mean_ci([5.0])[0] == 5.0
    assert all(math.isnan(v) for v in mean_ci([]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=12))
def test_mean_ci_agrees_with_scipy(values: list[float]) -> None:
    mean, _, half = mean_ci(values)
    sem = stats.sem(values)
    if sem == 0 or not math.isfinite(sem):
        assert half == pytest.approx(0.0, abs=1e-9)
        return
    low, high = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / len(values), scale=sem)
    assert mean - half == pytest.approx(low, rel=1e-9, abs=1e-9)
    assert mean + half == pytest.approx(high, rel=1e-9, abs=1e-9)


def test_summaries_give_mean_ci_and_paired_differences() -> None:
    rows = [
        {"mode": arm, "train_mode": m, "keys": k, "seed": s, "test_top1": v, "train_loss": 1.0}
        for arm, m, k, values in [
            ("trainable", "trainable", None, [80.0, 82.0, 81.0]),
            ("frozen-paper8", "frozen", "paper8", [79.0, 80.0, 80.5]),
        ]
        for s, v in enumerate(values)
    ]
    summary = summarize_runs(rows)
    assert summary["trainable"]["n"] == 3 and summary["trainable"]["mean"] == pytest.approx(81.0)
    assert summary["trainable"]["keys"] is None and summary["frozen-paper8"]["keys"] == "paper8"
    assert summary["frozen-paper8"]["ci95"] == pytest.approx(mean_ci([79.0, 80.0, 80.5])[2])
    delta = summary["frozen-paper8"]["delta_test_top1"]
    assert delta["mean"] == pytest.approx(-1.1666666) and delta["ci95"] == pytest.approx(mean_ci([-1, -2, -0.5])[2])


def test_experiment_files(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "keys.txt").write_text("Filter 1:\n1 0 0\n0 0 0\n0 0 -1\n")
    path = tmp_path / "exp.toml"
    path.write_text(
        'seeds = [3, 4]\n[base]\ndata = "data"\nepochs = 2\nmodel_kwargs = { patch_size = 2 }\n'
        '[[arms]]\nname = "trainable"\nmode = "trainable"\n'
        '[[arms]]\nname = "mine"\nmode = "frozen"\nkeys = "keys.txt"\nassignment = "uniform"\n'
        '[[arms]]\nname = "rand"\nmode = "frozen"\nkeys = "random:4:1"\nassignment = "uniform"\n'
    )
    exp = load_experiment(path)
    assert exp.seeds == [3, 4] and [a.name for a in exp.arms] == ["trainable", "mine", "rand"]
    config = exp.config(exp.arms[1], 4)
    assert config.data == str(tmp_path / "data") and config.keys == str(tmp_path / "keys.txt")
    assert config.seed == 4 and config.epochs == 2 and config.model_kwargs == {"patch_size": 2}
    assert exp.config(exp.arms[2], 3).keys == "random:4:1"  # built-in specs are not paths
    assert [a.name for a in exp.select(["rand"]).arms] == ["rand"]
    with pytest.raises(MasterkeyError, match=r"no arm named nope \(arms: trainable, mine, rand\)"):
        exp.select(["nope"])
    json_path = tmp_path / "exp.json"
    json_path.write_text(json.dumps({"base": {"data": "data"}}))
    assert [a.name for a in load_experiment(json_path).arms] == [a.name for a in standard_arms()]
    for text, message in [
        ('[base]\ndata = "d"\nlearning_rate = 1\n', "unknown option.*'learning_rate'"),
        ('seeds = [1, 1]\n[base]\ndata = "d"\n', "repeat a seed"),
        ('seeds = "0,1"\n[base]\ndata = "d"\n', "seeds must be a non-empty list"),
        ('[base]\ndata = "d"\n[[arms]]\nname = "a"\n[[arms]]\nname = "a"\n', "arm names repeat"),
        ('[base]\ndata = "d"\n[[arms]]\nname = "a"\nmode = "half"\n', "arm 'a': mode='half'"),
        ("[base\n", "not valid TOML"),
        ('extra = 1\n[base]\ndata = "d"\n', "unknown top-level entries"),
    ]:
        path.write_text(text)
        with pytest.raises(MasterkeyError, match=message):
            load_experiment(path)


def test_an_experiment_runs_the_matrix_and_summarises_it(tiny: TrainConfig, tmp_path: Path) -> None:
    base = {k: v for k, v in tiny.to_dict().items() if k != "seed"}
    experiment = Experiment(
        base,
        [Arm("trainable", {"mode": "trainable"}), Arm("frozen-paper8", {"mode": "frozen", "keys": "paper8"})],
        [0, 1],
    )
    out = tmp_path / "exp"
    summary = run_experiment(experiment, out)
    names = {p.name for p in out.iterdir()}
    assert {"run.json", "summary.csv", "summary.json", "summary.md", "curves.png", "runs"} <= names
    assert json.loads((out / "run.json").read_text())["kind"] == "experiment"
    runs = sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith("."))  # not the lock files
    assert runs == ["frozen-paper8-s0", "frozen-paper8-s1", "trainable-s0", "trainable-s1"]
    table = pd.read_csv(out / "summary.csv")
    assert {"mode", "seed", "test_top1", "test_top5", "test_loss", "train_loss"} <= set(table.columns)
    for _, row in table.iterrows():
        run = json.loads((out / row["run"] / "summary.json").read_text())
        assert run["test_top1"] == pytest.approx(row["test_top1"]) and run["seed"] == row["seed"]
        assert json.loads((out / row["run"] / "run.json").read_text())["kind"] == "train"
    frozen = summary["arms"]["frozen-paper8"]
    values = table[table["mode"] == "frozen-paper8"]["test_top1"].tolist()
    assert frozen["n"] == 2 and frozen["mean"] == pytest.approx(sum(values) / 2)
    assert frozen["ci95"] == pytest.approx(mean_ci(values)[2], nan_ok=True)
    assert json.loads((out / "summary.json").read_text())["arms"]["frozen-paper8"]["n"] == 2
    assert "| frozen-paper8 | frozen | paper8 | 2 |" in (out / "summary.md").read_text()
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(MasterkeyError, match="already complete"):
        run_experiment(experiment, out, resume=True)


def test_cli_trains_one_run_and_a_seed_matrix(tiny: TrainConfig, tmp_path: Path, capsys) -> None:
    common = [
        "train",
        "--model-kwargs",
        json.dumps(tiny.model_kwargs),
        "--data",
        tiny.data,
        "--max-train-images",
        "60",
        "--max-test-images",
        "40",
        "--batch-size",
        "30",
        "--epochs",
        "1",
        "--no-progress",
    ]
    assert main([*common, "--mode", "frozen", "--keys", "paper8", "--learn-scale", "-o", str(tmp_path / "one")]) == 0
    printed = capsys.readouterr().out
    assert "convnext_atto frozen keys paper8 (convnextv2-b) seed 0" in printed and "test top-1" in printed
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["learn_scale"] is True and summary["batch_size"] == 30
    assert main([*common, "--mode", "key-init", "--seeds", "0,1", "-o", str(tmp_path / "two"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["arms"]) == ["key-init-paper8"] and result["arms"]["key-init-paper8"]["n"] == 2
    # bad input: one line, exit status 2
    assert main([*common, "--model", "convnext_nope", "-o", str(tmp_path / "bad")]) == 2
    assert "masterkey: error: model 'convnext_nope'" in capsys.readouterr().err
    assert main([*common, "-o", str(tmp_path / "one")]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert main([*common, "--seed", "1", "--seeds", "0,1", "-o", str(tmp_path / "x")]) == 2
    assert main([*common, "--seeds", "0,x", "-o", str(tmp_path / "x")]) == 2
    assert "expected integers" in capsys.readouterr().err


class Crash(Exception):
    pass


def test_an_interrupted_experiment_resumes_run_by_run(tiny: TrainConfig, tmp_path: Path) -> None:
    base = {k: v for k, v in tiny.to_dict().items() if k != "seed"}
    experiment = Experiment(base | {"epochs": 2}, [Arm("frozen", {"mode": "frozen"})], [0, 1])
    out = tmp_path / "exp"

    def crash_in_second_run(epoch: int, step: int) -> None:
        if (out.with_name("exp.partial") / "runs" / "frozen-s0").exists() and step == 5:
            raise Crash

    with pytest.raises(Crash):
        run_experiment(experiment, out, on_step=crash_in_second_run)
    partial = tmp_path / "exp.partial" / "runs"
    assert (partial / "frozen-s0" / "summary.json").is_file()  # the first run completed
    assert (partial / "frozen-s1.partial" / "checkpoint.pt").is_file()  # the second stopped in epoch 2
    with pytest.raises(MasterkeyError, match="interrupted experiment: pass resume=True"):
        run_experiment(experiment, out)
    changed = Experiment(base | {"epochs": 2, "lr": 1e-3}, experiment.arms, [0, 1])
    with pytest.raises(MasterkeyError, match=r"frozen-s0 was trained with a different config \(lr: 0\.003"):
        run_experiment(changed, out, resume=True)
    summary = run_experiment(experiment, out, resume=True)
    assert summary["arms"]["frozen"]["n"] == 2
    again = train(experiment.config(experiment.arms[0], 1))
    assert again.summary["test_top1"] == summary["runs"][1]["test_top1"]  # the resumed run matches a fresh one


def test_runs_trained_side_by_side_match_runs_trained_one_after_another(tiny: TrainConfig, tmp_path: Path) -> None:
    base = {k: v for k, v in tiny.to_dict().items() if k != "seed"} | {"threads": 1}
    arms = [Arm("trainable", {"mode": "trainable"}), Arm("frozen", {"mode": "frozen", "keys": "paper8"})]
    one = run_experiment(Experiment(base, arms, [0, 1]), tmp_path / "one")
    # The CLI as a user runs it (python -m masterkey: its spawned workers must not re-run the command).
    spec = {"seeds": [0, 1], "base": base, "arms": [{"name": a.name, **a.overrides} for a in arms]}
    (tmp_path / "exp.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "masterkey", "train", "--experiment", str(tmp_path / "exp.json"), "--jobs", "2"]
    done = subprocess.run([*cmd, "-o", str(tmp_path / "two"), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    two = json.loads(done.stdout)
    assert [r["test_top1"] for r in two["runs"]] == [r["test_top1"] for r in one["runs"]]
    assert [r["train_loss"] for r in two["runs"]] == [r["train_loss"] for r in one["runs"]]
    assert two["arms"]["frozen"]["n"] == 2
    # Every line names its run once: a worker process training its second run must not stack the first's prefix.
    lines = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert lines and not [line for line in lines if "] [" in line]
    # Two processes share the pipe: a piece another one wrote without its newline yet (a C++ warning comes in
    # several writes) can land first on a physical line, so each run's epoch line is looked for anywhere.
    epoch_lines = sorted(re.findall(r"(\[[\w-]+\]) epoch 1/1", done.stderr))
    assert epoch_lines == ["[frozen-s0]", "[frozen-s1]", "[trainable-s0]", "[trainable-s1]"], done.stderr[-3000:]
    notes = re.findall(r"\[[\w-]+\] masterkey: data: memory", done.stderr)  # library notes carry the prefix too
    assert len(notes) == 4, done.stderr[-3000:]
    with pytest.raises(MasterkeyError, match="jobs=0: expected a positive number"):
        run_experiment(Experiment(base, arms, [0, 1]), tmp_path / "three", jobs=0)
    with pytest.raises(MasterkeyError, match="on_step needs jobs=1"):
        run_experiment(Experiment(base, arms, [0, 1]), tmp_path / "three", jobs=2, on_step=lambda e, s: None)


def test_experiments_trained_apart_are_collected_into_one(tiny: TrainConfig, tmp_path: Path, capsys) -> None:
    base = {k: v for k, v in tiny.to_dict().items() if k != "seed"}
    trainable, frozen = Arm("trainable", {"mode": "trainable"}), Arm("frozen", {"mode": "frozen", "keys": "paper8"})
    together = run_experiment(Experiment(base, [trainable, frozen], [0, 1]), tmp_path / "together")
    run_experiment(Experiment(base, [frozen], [0, 1]), tmp_path / "a")
    run_experiment(Experiment(base, [trainable], [0]), tmp_path / "b")
    train(tiny.replace(seed=1), tmp_path / "c")  # a single run joins as arm 'trainable', seed 1
    out = tmp_path / "all"
    assert (
        main(["train", "--collect", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c"), "-o", str(out)]) == 0
    )
    assert "trainable" in capsys.readouterr().out
    collected = json.loads((out / "summary.json").read_text())
    assert list(collected["arms"]) == ["trainable", "frozen"] and collected["seeds"] == [0, 1]
    for arm in ("trainable", "frozen"):
        assert collected["arms"][arm]["test_top1"]["values"] == together["arms"][arm]["test_top1"]["values"]
    delta = collected["arms"]["frozen"]["delta_test_top1"]
    assert delta == pytest.approx(together["arms"]["frozen"]["delta_test_top1"], nan_ok=True)
    assert (out / "curves.png").is_file() and (out / "runs" / "frozen-s1" / "model.safetensors").is_file()
    assert not (out / "runs" / "frozen-s1" / "checkpoint.pt").exists()
    assert json.loads((out / "run.json").read_text())["config"]["collected_from"][0].endswith("a")
    # refused: the same arm and seed twice, runs trained differently, not a run directory, OUT taken
    with pytest.raises(MasterkeyError, match="arm 'frozen' seed 0 is in both"):
        collect_experiments([tmp_path / "a", tmp_path / "together"], tmp_path / "x")
    train(tiny.replace(seed=5, epochs=2), tmp_path / "longer")
    with pytest.raises(MasterkeyError, match="trained differently and cannot be compared: epochs: 1"):
        collect_experiments([tmp_path / "a", tmp_path / "longer"], tmp_path / "x")
    with pytest.raises(MasterkeyError, match="not an experiment or train run directory"):
        collect_experiments([tmp_path / "nothing"], tmp_path / "x")
    with pytest.raises(MasterkeyError, match="already exists"):
        collect_experiments([tmp_path / "a"], out)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
    (tmp_path / "a").rename(tmp_path / "cut.partial")  # an experiment cut short: its finished runs count
    assert collect_experiments([tmp_path / "cut"], tmp_path / "y")["arms"]["frozen"]["n"] == 2


# ---------------------------------------------------------------------- data-efficiency sweeps
def test_a_sweep_trains_every_arm_at_every_size_on_nested_balanced_subsets(
    tiny: TrainConfig, tmp_path: Path, capsys
) -> None:
    from masterkey.data.training import load_train_data

    base = {k: v for k, v in tiny.to_dict().items() if k not in ("seed", "max_train_images")}
    arms = [Arm("trainable", {"mode": "trainable"}), Arm("frozen", {"mode": "frozen", "keys": "paper8"})]
    experiment = Experiment(base, arms, [0, 1], None, [20, 40])
    out = tmp_path / "sweep"
    crashed = []

    def crash_once(epoch: int, step: int) -> None:  # in the third run (trainable, 40 images, seed 0)
        runs = out.with_name("sweep.partial") / "runs"
        if not crashed and (runs / "trainable-n20-s1").exists() and step == 2:
            crashed.append(True)
            raise Crash

    with pytest.raises(Crash):
        run_experiment(experiment, out, on_step=crash_once)
    summary = run_experiment(experiment, out, resume=True)
    runs = sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith("."))
    assert runs == [f"{a}-n{n}-s{s}" for a in ("frozen", "trainable") for n in (20, 40) for s in (0, 1)]
    for name in runs:  # each run trained on its size: class-balanced, 2 or 4 images per class
        run = json.loads((out / "runs" / name / "summary.json").read_text())
        assert run["n_train"] == int(name.split("-n")[1].split("-")[0])
    assert list(summary["arms"]) == ["trainable-n20", "trainable-n40", "frozen-n20", "frozen-n40"]
    assert summary["train_sizes"] == [20, 40] and summary["arms"]["frozen-n40"]["delta_test_top1"]["n"] == 2
    table = pd.read_csv(out / "efficiency.csv")
    assert table[["arm", "train_size", "n"]].values.tolist() == [
        ["trainable", 20, 2], ["trainable", 40, 2], ["frozen", 20, 2], ["frozen", 40, 2]
    ]  # fmt: skip
    per_run = pd.read_csv(out / "summary.csv")
    frozen40 = per_run[(per_run["mode"] == "frozen") & (per_run["train_size"] == 40)]["test_top1"]
    assert table.iloc[3]["test_top1"] == pytest.approx(frozen40.mean())
    assert "## Data efficiency" in (out / "summary.md").read_text() and (out / "efficiency.png").is_file()
    # the resumed run equals one trained without interruption
    again = train(experiment.config(arms[0], 0, 40))
    assert again.summary["test_top1"] == per_run[per_run["run"] == "runs/trainable-n40-s0"]["test_top1"].item()
    # the subsets are nested and balanced, and the same for every arm and seed (max_train_images is the size)
    small, large = (load_train_data(tiny.data, max_train_images=n) for n in (20, 40))
    for c in range(10):
        a, b = small.train.images[small.train.labels == c], large.train.images[large.train.labels == c]
        assert len(a) == 2 and len(b) == 4 and torch.equal(a, b[:2])
    assert {experiment.config(arm, s, 20).max_train_images for arm in arms for s in (0, 1)} == {20}
    # another arm trained apart joins the sweep with --collect
    extra = Experiment(base, [Arm("span", {"mode": "span", "keys": "paper8"})], [0, 1], None, [20, 40])
    run_experiment(extra, tmp_path / "extra")
    assert main(["train", "--collect", str(out), str(tmp_path / "extra"), "-o", str(tmp_path / "all")]) == 0
    printed = capsys.readouterr().out
    assert "train_size" in printed and "span" in printed
    joined = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert list(joined["arms"])[:2] == ["trainable-n20", "trainable-n40"] and "span-n40" in joined["arms"]
    assert joined["arms"]["frozen-n40"]["test_top1"] == summary["arms"]["frozen-n40"]["test_top1"]


def test_training_set_sizes_are_checked_before_anything_trains(tiny: TrainConfig, tmp_path: Path) -> None:
    base = {k: v for k, v in tiny.to_dict().items() if k not in ("seed", "max_train_images")}
    arms = [Arm("trainable", {"mode": "trainable"})]
    for sizes, message in [
        ([25], "train size 25: not a multiple of the 10 classes"),
        ([50_010], "train size 50010: .* gives at most 50000 class-balanced images"),
    ]:
        with pytest.raises(MasterkeyError, match=message):
            run_experiment(Experiment(base, arms, [0], None, sizes), tmp_path / "x")
    with pytest.raises(MasterkeyError, match="max_train_images and train sizes both given"):
        run_experiment(Experiment(base | {"max_train_images": 60}, arms, [0], None, [20]), tmp_path / "x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
    path = tmp_path / "exp.toml"
    path.write_text('seeds = [0]\ntrain_sizes = [2000, 500]\n[base]\ndata = "d"\n')
    assert load_experiment(path).train_sizes == [500, 2000]
    for text, message in [
        ("train_sizes = [500, 500]\n", "repeat a size"),
        ("train_sizes = [0]\n", "positive integers"),
        ('train_sizes = "500"\n', "positive integers"),
    ]:
        path.write_text(text + '[base]\ndata = "d"\n')
        with pytest.raises(MasterkeyError, match=message):
            load_experiment(path)


def test_cli_sweeps_one_arm_over_sizes(tiny: TrainConfig, tmp_path: Path, capsys) -> None:
    common = ["train", "--model-kwargs", json.dumps(tiny.model_kwargs), "--data", tiny.data, "--max-test-images", "40"]
    common += ["--batch-size", "20", "--epochs", "1", "--no-progress", "--mode", "frozen"]
    assert main([*common, "--train-sizes", "40,20", "--seeds", "0,1", "-o", str(tmp_path / "s"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["arms"]) == ["frozen-paper8-n20", "frozen-paper8-n40"] and result["train_sizes"] == [20, 40]
    assert main([*common, "--train-sizes", "20,x", "-o", str(tmp_path / "bad")]) == 2
    assert "--train-sizes '20,x': expected sizes separated by commas" in capsys.readouterr().err
