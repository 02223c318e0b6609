"""masterkey.runformats: the declared run formats against what the real writers write. It lives beside the report
tests because it checks the same real runs (tests/report/conftest.py) that the report reads."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from masterkey.report import load_run
from masterkey.runformats import RUN_FORMATS, check_run, run_format, write_table


@pytest.mark.parametrize("name", ["fit", "discover", "discover_per_kernel", "swap", "train", "experiment", "explain"])
def test_every_real_run_matches_its_declared_format(run_dirs: dict[str, Path], name: str) -> None:
    kind = name.removesuffix("_per_kernel")
    assert check_run(run_dirs[name], kind) == []
    assert load_run(run_dirs[name]).run.notes == []


def test_a_departure_is_named(run_dirs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    import pandas as pd

    run = Path(shutil.copytree(run_dirs["swap"], tmp_path / "swap"))
    (run / "summary.md").unlink()
    table = pd.read_csv(run / "results.csv").drop(columns=["top5"])
    table.to_csv(run / "results.csv", index=False)
    (run / "extra.txt").write_text("x")
    problems = check_run(run, "swap")
    assert problems == [
        f"{run / 'results.csv'}: no column top5",
        f"{run / 'summary.md'}: missing",
        f"{run / 'extra.txt'}: not declared for swap runs",
    ]


def test_every_kind_is_declared_once_with_run_json() -> None:
    assert set(RUN_FORMATS) == {"fit", "discover", "swap", "train", "experiment", "explain", "report"}
    for kind, fmt in RUN_FORMATS.items():
        assert fmt.kind == kind and fmt.file("run.json").required
    with pytest.raises(KeyError, match="unknown run kind 'bake'"):
        run_format("bake")


def test_a_writer_cannot_drop_a_declared_column(tmp_path: Path) -> None:
    path = pd.DataFrame({"n_keys": [3, 2], "objective": [0.9, 0.8], "extra": [1, 2]})
    written = write_table(tmp_path, "discover", "path.csv", path)
    assert pd.read_csv(written).equals(path)
    with pytest.raises(ValueError, match="discover run file path.csv: the writer lost the declared column"):
        write_table(tmp_path, "discover", "path.csv", path.drop(columns="objective"))
    with pytest.raises(KeyError, match="declare no file 'paths.csv'"):
        write_table(tmp_path, "discover", "paths.csv", path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["path.csv"]  # nothing half-written beside it


def test_parquet_tables_round_trip(tmp_path: Path) -> None:
    fits = pd.DataFrame({c: [0.5] for c in run_format("fit").columns("fits.parquet")})
    assert pd.read_parquet(write_table(tmp_path, "fit", "fits.parquet", fits)).equals(fits)


REAL_RUNS = ["fit", "discover", "discover_per_kernel", "swap", "train", "experiment", "explain"]


def _strict(text: str, where: object) -> object:
    """Parse as JSON.parse and jq do: a bare NaN / Infinity is an error."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{where}: {token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def json_texts(root: Path) -> list[tuple[str, str]]:
    """Every JSON text of a run folder: *.json files, each line of *.jsonl files, and the masterkey metadata inside
    every .safetensors file (key sets, exported weights)."""
    from safetensors import safe_open

    texts = []
    for path in sorted(root.rglob("*")):
        where = str(path.relative_to(root))
        if path.suffix == ".json":
            texts.append((where, path.read_text()))
        elif path.suffix == ".jsonl":
            texts += [(f"{where}:{i + 1}", line) for i, line in enumerate(path.read_text().splitlines()) if line]
        elif path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                texts += [(f"{where}[{k}]", v) for k, v in (f.metadata() or {}).items() if v[:1] in "[{"]
    return texts


@pytest.mark.parametrize("name", REAL_RUNS)
def test_every_json_of_every_real_run_is_strict(run_dirs: dict[str, Path], name: str) -> None:
    texts = json_texts(run_dirs[name])
    names = {where for where, _ in texts}
    assert "run.json" in names and names & {"summary.json", "results.json"}, names
    for where, text in texts:
        _strict(text, f"{name}/{where}")


def test_a_report_run_is_strict_json_too(run_dirs: dict[str, Path], tmp_path: Path) -> None:
    from masterkey.cli import main

    runs = [str(run_dirs["fit"]), str(run_dirs["swap"])]
    assert main(["report", *runs, "--samples", "2", "-o", str(tmp_path / "r")]) == 0
    assert check_run(tmp_path / "r", "report") == []
    for where, text in json_texts(tmp_path / "r"):
        _strict(text, where)


@pytest.mark.parametrize("name", REAL_RUNS)
def test_every_real_run_is_recognised_whole_and_may_be_replaced(run_dirs: dict[str, Path], name: str) -> None:
    """Every file a real writer writes is declared, so ``--overwrite`` recognises the run by its whole format and
    finds no file of the user's in it."""
    from masterkey.files import check_output, foreign_files, output_kind

    kind = name.removesuffix("_per_kernel")
    assert output_kind(run_dirs[name]) == kind
    assert foreign_files(run_dirs[name]) == []
    assert check_output(run_dirs[name], kind, overwrite=True) == run_dirs[name]
