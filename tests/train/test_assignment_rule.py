"""The default key assignment: the published proportions only for the paper's own keys, the rule recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masterkey.errors import MasterkeyError
from masterkey.nn import PUBLISHED_PROPORTIONS, counts_from_proportions
from masterkey.train import TrainConfig, train
from masterkey.train.experiment import Arm, Experiment
from masterkey.train.runner import _check_completed, run_experiment


@pytest.mark.parametrize(("keys", "rule"), [("random:8:0", "uniform"), ("paper8", "convnextv2-b")])
def test_auto_is_decided_by_the_keys_and_recorded_in_run_json(tiny: TrainConfig, tmp_path: Path, keys, rule) -> None:
    config = tiny.replace(mode="frozen", keys=keys)
    assert config.assignment == "auto"
    out = tmp_path / "run"
    result = train(config, out)
    run = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert run["config"]["assignment"] == summary["assignment"] == rule
    layer16 = next(layer for layer in summary["converted_layers"] if layer["channels"] == 16)
    expected = [2] * 8 if rule == "uniform" else counts_from_proportions(16, PUBLISHED_PROPORTIONS[rule]).tolist()
    assert layer16["counts"] == expected
    per_layer = [c["counts"] for c in summary["converted_layers"]]
    assert result.summary["key_counts"] == [sum(x) for x in zip(*per_layer, strict=True)]
    # Resuming with the same config (still 'auto') is the same run: the decided rule is what is compared.
    train(config.replace(epochs=2), out, resume=True)
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_a_finished_experiment_run_with_auto_is_recognised_as_the_same_run(tiny: TrainConfig, tmp_path: Path) -> None:
    arms = [Arm("paper", {"mode": "frozen", "keys": "paper8"}), Arm("random", {"mode": "frozen", "keys": "random:8:0"})]
    experiment = Experiment(tiny.to_dict(), arms, [0])
    out = tmp_path / "exp"
    run_experiment(experiment, out)
    runs = {p.name: p for p in (out / "runs").iterdir()}
    configs = {name: json.loads((p / "run.json").read_text())["config"] for name, p in runs.items()}
    assert {name: c["assignment"] for name, c in configs.items()} == {
        "paper-s0": "convnextv2-b",
        "random-s0": "uniform",
    }
    for arm in arms:  # what resuming checks before it reuses a finished run: the arm's config, 'auto' decided
        _check_completed(runs[f"{arm.name}-s0"], experiment.config(arm, 0))
    with pytest.raises(MasterkeyError, match="assignment: 'uniform' \\(checkpoint\\) vs 'hornet-t'"):
        _check_completed(
            runs["random-s0"], experiment.config(Arm("random", {**arms[1].overrides, "assignment": "hornet-t"}), 0)
        )
