"""``masterkey discover``: the run directory contract, the main job's wiring, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from masterkey.cli import MAIN_JOB, build_parser, main
from masterkey.keys import load_keys

FAST = ["--ae-steps", "200", "--ae-hidden", "32", "--candidates", "16", "--random-seeds", "2", "--no-progress"]
PER_KERNEL = [
    "keys.safetensors",
    "keys.png",
    "candidates.safetensors",
    "path.csv",
    "path.png",
    "baselines.csv",
    "summary.json",
    "summary.md",
]


def _check_kernel_dir(path: Path, n_keys: int, kernel_size: int) -> None:
    for name in PER_KERNEL:
        assert (path / name).is_file(), name
    keys = load_keys(path / "keys.safetensors")
    assert (len(keys), keys.kernel_size) == (n_keys, kernel_size)
    assert keys.provenance["kernel_size"] == kernel_size and "seed" in keys.provenance
    route = pd.read_csv(path / "path.csv")
    assert list(route.columns) == ["round", "n_keys", "objective", "removed", "objective_unit"]
    assert set(route["objective_unit"]) == {"cos2"} and route["objective"].between(0, 1).all()
    table = pd.read_csv(path / "baselines.csv")
    assert {"method", "n_keys", "objective", "ci95"} <= set(table.columns)
    assert {"discovered", "kmeans", "pca", "random"} <= set(table["method"])
    for method in ("kmeans", "pca", "random"):
        assert load_keys(path / "baseline_keys" / f"{method}.safetensors", kernel_size=kernel_size)
    assert (path / "keys.png").read_bytes()[:4] == b"\x89PNG"


def test_multi_kernel_run_writes_one_directory_per_size(tiny_bank: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["discover", str(tiny_bank), "-k", "4", "--compare-k", "2,4", *FAST, "-o", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "3x3:" in printed and "5x5:" in printed
    assert f"masterkey: wrote {out}/ (" in captured.err and "summary.json" in captured.err
    assert "kmeans" in printed and "paper8" in printed
    for k in (3, 5):
        _check_kernel_dir(out / f"k{k}", 4, k)
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "discover" and info["config"]["discover"]["n_keys"] == 4
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["by_kernel"]) == ["3", "5"]
    assert "## Discovered keys, 5x5" in (out / "summary.md").read_text()
    assert not (tmp_path / ".run.checkpoint").exists()  # removed once the run is complete
    # The keys feed the other commands.
    from masterkey.bank import open_bank
    from masterkey.fit import fit_bank

    fit = fit_bank(open_bank(tiny_bank), str(out / "k5" / "keys.safetensors"))
    k5 = json.loads((out / "k5" / "summary.json").read_text())
    # Both 5x5 sources hold 300 filters, so the source-weighted objective is the plain mean cos² of the fit.
    assert float(fit.table["cos2"].mean()) == pytest.approx(k5["objective_at_k"], abs=1e-4)


def test_default_bank_single_kernel_is_flat(tmp_path: Path, capsys) -> None:
    out = tmp_path / "k3"
    args = ["discover", "--kernel-size", "3", "--rounds", "1", "--compare-k", "8", *FAST, "-o", str(out), "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(out) and printed["3"]["n_keys"] == 8
    _check_kernel_dir(out, 8, 3)
    table = pd.read_csv(out / "baselines.csv")
    paper8 = table[table["method"] == "paper8"]
    assert len(paper8) == 1 and 0 < float(paper8["objective"].iloc[0]) < 1  # cropped to 3x3 and scored
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sources"] == ["mobilenet_v2_imagenet", "efficientnet_lite0_imagenet"]
    assert summary["n_filters"] + sum(summary["excluded"].values()) == 9760  # every 3x3 filter, counted once


def test_main_job_is_discover_with_the_documented_defaults() -> None:
    from masterkey.discover import DiscoverConfig
    from masterkey.discover.run import DiscoverJob

    assert MAIN_JOB == "discover"
    args = build_parser().parse_args(["discover"])
    job = DiscoverJob.from_options(vars(args))
    assert (job.bank, job.accuracy, job.out, job.kernel_sizes) == ("default", None, None, None)
    assert job.config == DiscoverConfig()  # the library's defaults, nothing else


def test_default_output_gets_a_numeric_suffix(tmp_path: Path, monkeypatch) -> None:
    from masterkey.discover.run import default_out

    monkeypatch.chdir(tmp_path)
    assert default_out() == Path("masterkey-runs/discover")
    (tmp_path / "masterkey-runs" / "discover").mkdir(parents=True)
    (tmp_path / "masterkey-runs" / "discover-2").mkdir()
    assert default_out() == Path("masterkey-runs/discover-3")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--kernel-size", "7"], "has no 7x7 filters"),
        (["-k", "60"], "larger than the candidate count"),
        (["--query", "source == 'nobody'"], "holds no filters"),
        (["--objective", "accuracy"], "needs --weights"),
        (["--baselines", "kmeans,ica"], "unknown baseline"),
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_bank: Path, tmp_path: Path, capsys, extra, message) -> None:
    assert main(["discover", str(tiny_bank), *FAST, "-o", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("masterkey: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_refuses_a_test_split_and_an_existing_output(tiny_bank: Path, tmp_path: Path, shared: Path, capsys) -> None:
    weights = shared / "models" / "cifar10-convnext" / "convnext_atto_s0_e20.safetensors"
    test_split = shared / "data" / "cifar10" / "test"
    args = ["discover", "--objective", "accuracy", "--weights", str(weights), "--data", str(test_split)]
    assert main([*args, "-o", str(tmp_path / "acc")]) == 2
    assert "test split" in capsys.readouterr().err
    (tmp_path / "exists").mkdir()
    assert main(["discover", str(tiny_bank), *FAST, "-o", str(tmp_path / "exists")]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_the_accuracy_objective_streams_its_held_out_images(shared: Path, tmp_path: Path, capsys) -> None:
    """--data-mode stream: the held-out images are decoded batch by batch at every evaluation, with the same
    scores as in memory (about 30 s on 2 CPU cores)."""
    weights = shared / "models" / "cifar10-convnext" / "convnext_atto_s0_e20.safetensors"
    args = ["discover", "--objective", "accuracy", "--weights", str(weights), "--kernel-size", "7"]
    args += ["--data", str(shared / "data" / "cifar10" / "train"), "--max-per-class", "6", "--held-out", "20"]
    args += [*FAST, "--candidates", "6", "--rounds", "1", "-k", "4", "--path-to", "4", "--baselines", "paper8"]
    args += ["--json"]
    found = {}
    for mode in ("memory", "stream"):
        assert main([*args, "--data-mode", mode, "-o", str(tmp_path / mode)]) == 0
        found[mode] = json.loads(capsys.readouterr().out)["7"]
    assert found["stream"]["objective_at_k"] == found["memory"]["objective_at_k"]
    _check_percent_and_old_fractions(tmp_path / "memory", found["memory"], tmp_path / "old")
    config = json.loads((tmp_path / "stream" / "run.json").read_text())["config"]
    assert config["data_mode"] == "stream"
    budget = ["--data-mode", "memory", "--memory-budget", "1K", "-o", str(tmp_path / "refused")]
    assert main([*args, *budget]) == 2
    assert "--data-mode memory: 60 images of" in capsys.readouterr().err and not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_the_paper_protocol_scores_a_cifar_convnext_on_held_out_training_images(
    shared: Path, tmp_path: Path, capsys
) -> None:
    """--protocol paper with the accuracy objective: greedy removal scored by the reference network on a held-out split
    of the *training* images, stopped at the elbow; run.json records the protocol and the objective."""
    weights = shared / "models" / "cifar10-convnext" / "convnext_atto_s0_e20.safetensors"
    args = ["discover", "--protocol", "paper", "--objective", "accuracy", "--weights", str(weights)]
    args += ["--kernel-size", "7", "--data", str(shared / "data" / "cifar10" / "train"), "--max-per-class", "4"]
    args += ["--held-out", "20", *FAST, "--candidates", "6", "-k", "4", "--rounds", "1", "--baselines", "paper8"]
    assert main([*args, "--json", "-o", str(tmp_path / "paper")]) == 0
    printed = json.loads(capsys.readouterr().out)["7"]
    info = json.loads((tmp_path / "paper" / "run.json").read_text())
    assert info["config"]["protocol"] == "paper" and info["config"]["discover"]["stop"] == "elbow"
    assert info["config"]["objective"] == "accuracy"
    keys = load_keys(tmp_path / "paper" / "keys.safetensors")
    assert 1 <= len(keys) <= 6 and printed["n_keys"] == len(keys)


def _check_percent_and_old_fractions(run: Path, summary: dict, old: Path) -> None:
    """One accuracy unit: the accuracy objective's files hold held-out top-1 in percent (20 images: multiples of
    5, no float noise) and say so; a run written before (fractions, no objective_unit) still reads, converted."""
    import shutil

    import pandas as pd

    from masterkey.report.runs import load_run

    assert summary["objective_unit"] == "percent" and summary["accuracy"]["unswapped_objective"] > 1
    path, baselines = pd.read_csv(run / "path.csv"), pd.read_csv(run / "baselines.csv")
    for table in (path, baselines):
        assert set(table["objective_unit"]) == {"percent"}
        assert all(v % 5 == 0 and len(str(v)) <= 5 for v in table["objective"].dropna()), table["objective"]
    assert summary["objective_at_k"] == path[path["n_keys"] == 4]["objective"].iloc[0]
    shutil.copytree(run, old)
    for name in ("path.csv", "baselines.csv"):
        table = pd.read_csv(old / name).drop(columns="objective_unit")
        table["objective"] /= 100
        table.to_csv(old / name, index=False)
    data = json.loads((old / "summary.json").read_text())
    del data["objective_unit"]
    (old / "summary.json").write_text(json.dumps(data))
    fresh, older = load_run(run), load_run(old)
    note = "an older discover run: its held-out top-1 was stored as fractions, shown here in percent"
    assert note in older.run.notes and note not in fresh.run.notes
    a, b = fresh.parts[""], older.parts[""]
    assert b.path["objective"].tolist() == pytest.approx(a.path["objective"].tolist())
    assert b.baselines["objective"].tolist() == pytest.approx(a.baselines["objective"].tolist(), nan_ok=True)
