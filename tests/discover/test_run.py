"""The discover stage's run level: protocols, the job built from options, strict JSON, what the summaries say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masterkey.cli import main
from masterkey.discover.run import DiscoverJob, run_discover
from masterkey.discover.settings import PAPER_AUTOENCODER, PAPER_DISCOVERY, DiscoverConfig, protocol_config
from masterkey.errors import MasterkeyError

FAST = {"ae_steps": 150, "ae_hidden": 16, "candidates": 16, "random_seeds": 2, "compare_k": [2, 4]}


def _strict(text: str) -> object:
    """json.loads that refuses NaN and Infinity, as JSON.parse and jq do."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_the_paper_protocol_changes_what_the_paper_does_differently() -> None:
    paper, ours = protocol_config("paper"), protocol_config()
    assert ours == DiscoverConfig()
    for name, value in PAPER_DISCOVERY.items():
        assert getattr(paper, name) == value
    for name, value in PAPER_AUTOENCODER.items():
        assert getattr(paper.autoencoder, name) == value
    assert (paper.protocol, paper.stop, paper.dedupe, paper.spacing) == ("paper", "elbow", None, "unit")
    # What the paper does not specify stays masterkey's.
    assert (paper.n_candidates, paper.rounds, paper.autoencoder.steps) == (50, 2, ours.autoencoder.steps)
    # Overrides win, and an autoencoder dict changes the protocol's autoencoder rather than replacing it.
    mixed = protocol_config("paper", spacing="range", autoencoder={"spread": 1.0})
    assert (mixed.spacing, mixed.stop, mixed.autoencoder.spread, mixed.autoencoder.symmetric) == (
        "range", "elbow", 1.0, False,
    )  # fmt: skip
    with pytest.raises(MasterkeyError, match="protocol"):
        protocol_config("nips")


def test_a_job_from_command_line_options() -> None:
    job = DiscoverJob.from_options({"protocol": "paper", "spacing": "range", "dedupe": 0, "ae_steps": 99, "seed": 3})
    assert (job.config.protocol, job.config.spacing, job.config.dedupe, job.config.stop) == (
        "paper",
        "range",
        None,
        "elbow",
    )
    assert (job.config.autoencoder.steps, job.config.seed, job.accuracy) == (99, 3, None)
    assert job.options["protocol"] == "paper"
    plain = DiscoverJob.from_options({"encoder": "plain", "keep_round": "last", "path_to": 2})
    assert (plain.config.autoencoder.symmetric, plain.config.keep_round, plain.config.floor) == (False, "last", 2)
    with pytest.raises(MasterkeyError, match="unknown option 'colour'"):
        DiscoverJob.from_options({"colour": "red"})
    with pytest.raises(MasterkeyError, match="needs weights"):
        DiscoverJob.from_options({"objective": "accuracy", "data": "x/train"})
    with pytest.raises(MasterkeyError, match="test split"):
        DiscoverJob.from_options({"objective": "accuracy", "weights": "w.safetensors", "data": "cifar10/test"})
    accuracy = DiscoverJob.from_options({"objective": "accuracy", "weights": "w.safetensors", "data": "d/train"})
    assert accuracy.config.compare_k == (8,) and accuracy.accuracy.held_out == 5000


def test_paper_protocol_run_stops_at_the_elbow_in_path_order(tiny_bank: Path, tmp_path: Path) -> None:
    options = {**FAST, "bank": str(tiny_bank), "protocol": "paper", "out": tmp_path / "paper", "kernel_size": [5]}
    result = run_discover(DiscoverJob.from_options(options))
    disc = result.discoveries[5]
    assert len(disc.keys) == disc.elbows[disc.final_round] and disc.final_round == len(disc.paths)
    latents = disc.keys.provenance["latents"]
    assert latents == sorted(latents)  # path order: candidates are decoded at increasing latents
    assert all(len(c) == 16 for c in disc.candidates[:1])  # no de-duplication
    info = _strict((tmp_path / "paper" / "run.json").read_text())
    assert info["config"]["protocol"] == "paper" and info["config"]["discover"]["stop"] == "elbow"
    summary = _strict((tmp_path / "paper" / "summary.json").read_text())
    assert summary["protocol"] == "paper" and summary["n_keys"] == len(disc.keys)
    assert "the elbow" in (tmp_path / "paper" / "summary.md").read_text()


def test_outputs_are_strict_json_and_say_what_they_exclude(tmp_path: Path, capsys) -> None:
    """The main job's files parse with a parser that refuses NaN; the terminal and summary.md give the
    excluded-filter counts; the 3x3 one-key-vs-mix table is flagged as degenerate, the 5x5 one is not. (What
    ``--json`` prints is each size's summary.json, checked strict for every command in
    tests/robustness/test_strict_json.py.)"""
    args = ["discover", "--kernel-size", "3,5", "--ae-steps", "300", "--candidates", "24", "--random-seeds", "2"]
    assert main([*args, "--rounds", "1", "--no-progress", "-o", str(tmp_path / "run")]) == 0
    for path in (tmp_path / "run").rglob("*.json"):
        _strict(path.read_text())
    k3, k5 = (_strict((tmp_path / "run" / f"k{k}" / "summary.json").read_text()) for k in (3, 5))
    assert k3["excluded"] == {"nonfinite": 0, "zero": 18, "constant": 0}
    assert k3["span_degenerate"] and not k5["span_degenerate"]
    assert k3["comparison"][-1]["pca"] is None  # K = 16 > 8 directions: null, and "nulls" says why
    assert "comparison" in k3["nulls"]
    out = capsys.readouterr().out
    assert "3x3: 9,742 filters from 2 source(s), excluded: 18 zero;" in out
    assert "5x5: 6,289 filters from 1 source(s), excluded: 47 zero;" in out
    text = (tmp_path / "run" / "summary.md").read_text()
    assert "- excluded 3x3 filters: 18 zero" in text
    k3, k5 = text.split("## Discovered keys, 5x5")
    assert "**Degenerate:** 8 keys plus a constant span every 3x3 filter" in k3 and "Degenerate" not in k5
