"""The report: run readers, sections, the self-contained HTML page and Markdown, the report and explain commands,
and a headless-Chromium check that every figure of the page loads."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from masterkey.cli import main
from masterkey.errors import MasterkeyError
from masterkey.report import build_report, load_run, read_run
from masterkey.report.html import Section, markdown_table, render_html, write_report
from masterkey.report.runs import DiscoverRun, ExperimentRun, ExplainRun, FitRun, SwapRun, TrainRun
from masterkey.report.sections import ReportOptions

CHROMIUM = Path("/usr/bin/chromium")
ORDER = ("fit", "discover", "swap", "train", "experiment", "explain")


@pytest.fixture(scope="session")
def report_dir(run_dirs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    build_report([run_dirs[k] for k in ORDER], out, title="test report", options=ReportOptions(samples=4))
    return out


# ---------------------------------------------------------------------- readers
def test_runs_are_recognised_by_kind(run_dirs) -> None:
    expected = {
        "fit": FitRun,
        "discover": DiscoverRun,
        "swap": SwapRun,
        "train": TrainRun,
        "experiment": ExperimentRun,
        "explain": ExplainRun,
    }
    for kind, cls in expected.items():
        loaded = load_run(run_dirs[kind])
        assert isinstance(loaded, cls)
        assert loaded.run.kind == kind
        assert loaded.run.notes == [], (kind, loaded.run.notes)
    swap = load_run(run_dirs["swap"])
    assert len(swap.summary) == 5 and set(swap.sensitivity["unit"]) == {"layer"}
    fit = load_run(run_dirs["fit"])
    assert set(fit.keysets) == {7} and len(fit.fits) == 1840
    train = load_run(run_dirs["train"])
    assert len(train.metrics) == 6 and len(train.steps) == 84 and "test_top1" not in train.steps
    experiment = load_run(run_dirs["experiment"])
    assert len(experiment.runs) == 6
    explain = load_run(run_dirs["explain"])
    assert {p.stem for p in explain.figures} >= {"scalespace", "eigenpatches", "eigen_vs_keys", "reconstruction"}


def test_run_json_is_required_and_strict(tmp_path) -> None:
    with pytest.raises(MasterkeyError, match="no such run directory"):
        read_run(tmp_path / "missing")
    with pytest.raises(MasterkeyError, match="not a run directory"):
        read_run(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(MasterkeyError, match="not valid JSON"):
        read_run(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"kind": "bake"}))
    with pytest.raises(MasterkeyError, match=r"unknown run kind 'bake' \(known: fit, discover"):
        read_run(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"kind": "fit", "config": []}))
    with pytest.raises(MasterkeyError, match="'config'"):
        read_run(tmp_path)


def test_missing_and_malformed_files_are_noted_not_fatal(tmp_path, run_factories) -> None:
    run = run_factories["train"](tmp_path / "train")
    (run / "metrics.csv").unlink()
    (run / "summary.json").write_text("{broken")
    loaded = load_run(run)
    assert loaded.metrics is not None and len(loaded.metrics) == 6  # recovered from metrics.jsonl
    assert any("summary.json is not valid JSON" in n for n in loaded.run.notes)
    assert any("metrics.csv is missing" in n for n in loaded.run.notes)

    swap = run_factories["swap"](tmp_path / "swap", with_sensitivity=False)
    pd.DataFrame({"keys": ["paper8"], "accuracy": [1.0]}).to_csv(swap / "results.csv", index=False)
    loaded = load_run(swap)
    assert loaded.sensitivity is None and loaded.results is not None  # fell back to results.json
    assert len(loaded.results) == 9
    assert any("results.csv lacks the columns top1" in n for n in loaded.run.notes)


def test_discover_run_with_one_directory_per_kernel_size(tmp_path, run_factories) -> None:
    run = run_factories["discover_per_kernel"](tmp_path / "discover")
    loaded = load_run(run)
    assert isinstance(loaded, DiscoverRun) and list(loaded.parts) == ["k3", "k7"]
    assert loaded.parts["k3"].keys.kernel_size == 3 and loaded.summary["kernel_sizes"] == [3, 7]
    assert loaded.run.notes == []
    out = build_report([run], tmp_path / "r")
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [
        "r1-discover-keys-k3.png",
        "r1-discover-keys-k7.png",
        "r1-discover-path-k3.png",
        "r1-discover-path-k7.png",
    ]


# ---------------------------------------------------------------------- the page
def test_report_holds_every_run_and_figure(report_dir, run_dirs) -> None:
    html = (report_dir / "report.html").read_text()
    pngs = sorted(p.name for p in report_dir.glob("*.png"))
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(pngs) == html.count("<img ")
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    # Self-contained: no external resources at all.
    assert not re.search(r'(src|href)="(?!data:|#)', html)
    sections = re.findall(r'<section id="r(\d+)-(\w+)">', html)
    assert sections == [(str(i + 1), kind) for i, kind in enumerate(ORDER)]
    names = {p.split("-", 2)[1] + "-" + p.split("-", 2)[2].removesuffix(".png") for p in pngs}
    for expected in (
        "fit-keys",
        "fit-proportions",
        "fit-cos2",
        "fit-samples-k7",
        "discover-path",
        "discover-keys",
        "discover-universality",
        "swap-accuracy",
        "swap-sensitivity",
        "train-curves",
        "experiment-curves",
        "experiment-top1",
        "explain-scalespace",
        "explain-reconstruction",
    ):
        assert expected in names, (expected, names)
    assert "masterkey fit" in html or "fit" in html
    assert "Scale-space models (least-squares fits)" in html


def test_markdown_references_the_figures_beside_it(report_dir) -> None:
    md = (report_dir / "report.md").read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(refs) == sorted(p.name for p in report_dir.glob("*.png"))
    assert "| key | label | family |" in md
    assert md.startswith("# test report")


def test_fit_section_numbers(report_dir) -> None:
    html = (report_dir / "report.html").read_text()
    assert "1,840 filters fitted" in html
    assert "random:8:0" in html


def test_report_refuses_to_overwrite_and_leaves_nothing_half_written(run_dirs, tmp_path) -> None:
    out = tmp_path / "r"
    build_report([run_dirs["train"]], out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(MasterkeyError, match="already exists"):
        build_report([run_dirs["swap"]], out)
    assert sorted(p.name for p in out.iterdir()) == before
    (tmp_path / "notes").mkdir()
    with pytest.raises(MasterkeyError, match="not a run directory"):
        build_report([run_dirs["swap"], tmp_path / "notes"], tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(MasterkeyError, match="lies inside the input"):
        build_report([run_dirs["swap"], tmp_path], tmp_path / "never")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "r"]  # no lock or temporary file either
    build_report([run_dirs["swap"]], out, overwrite=True)
    assert "swap" in (out / "report.html").read_text()


def test_fit_report_without_the_bank_skips_samples_with_a_note(run_dirs, tmp_path) -> None:
    run = tmp_path / "fit"
    shutil.copytree(run_dirs["fit"], run)
    info = json.loads((run / "run.json").read_text())
    info["config"]["bank"] = str(tmp_path / "gone")
    (run / "run.json").write_text(json.dumps(info))
    out = build_report([run], tmp_path / "r")
    names = {p.name for p in out.glob("*.png")}
    assert "r1-fit-cos2.png" in names and not any("samples" in n for n in names)
    assert "bank unavailable" in (out / "report.html").read_text()


def test_tables_render_in_html_and_markdown() -> None:
    table = pd.DataFrame({"name": ["a|b", "c"], "value": [1.23456, float("nan")], "n": [1000, 2]})
    md = markdown_table(table, {"value": 2})
    assert md.splitlines()[1] == "|:---|---:|---:|"
    assert "| a\\|b | 1.23 | 1,000 |" in md and "| c | – | 2 |" in md
    section = Section("fit <x>", "r1-fit", [("k", "<v>")])
    section.table("T", table)
    html = render_html([section], "t & t")
    assert "&lt;v&gt;" in html and "t &amp; t" in html and "1.235" in html


def test_write_report_rejects_duplicate_figure_names(tmp_path) -> None:
    section = Section("x y", "r1-x")
    section.figure("a", "A", b"png")
    section.figure("a", "A", b"png")
    with pytest.raises(ValueError, match="unique"):
        write_report([section], tmp_path / "o")


# ---------------------------------------------------------------------- commands
def test_report_command(run_dirs, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["report", str(run_dirs["train"]), "-o", str(out), "--title", "T", "--samples", "0"]) == 0
    html = (out / "report.html").read_text()
    assert "<title>T</title>" in html and "1 run" in html
    closing = capsys.readouterr().err  # the closing list of written files, on stderr
    assert f"masterkey: wrote {out}/ (" in closing and "report.html" in closing and "report.md" in closing
    assert main(["report", str(run_dirs["train"]), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "x")]) == 2


def test_explain_command_writes_a_run_the_report_reads(tmp_path, capsys) -> None:
    from PIL import Image

    from masterkey.explain.eigenpatches import builtin_image

    images = tmp_path / "images"
    images.mkdir()
    crop = builtin_image("camera")[200:328, 180:308]
    Image.fromarray((255 * crop).round().astype("uint8")).save(images / "camera-crop.png")
    out = tmp_path / "explain"
    args = [
        "explain",
        "scalespace8",
        "--images",
        str(images),
        "--components",
        "8",
        "--stride",
        "1",
        "--seeds",
        "2",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "scale-space models of scalespace8" in printed
    assert json.loads((out / "run.json").read_text())["kind"] == "explain"
    scalespace = pd.read_csv(out / "scalespace.csv")
    assert (scalespace["cosine"] > 0.999).all()  # the scale-space models of the models are the models
    assert list(pd.read_csv(out / "eigenpatches.csv").columns)[:4] == ["key", "label", "best_component", "abs_cos"]
    reconstruction = pd.read_csv(out / "reconstruction.csv")
    assert set(reconstruction["kind"]) == {"keys", "random", "pca", "scalespace"}
    assert set(reconstruction["image"]) == {"camera-crop.png"}
    assert "## Scale-space models" in (out / "summary.md").read_text()
    loaded = load_run(out)
    assert isinstance(loaded, ExplainRun) and loaded.run.notes == []
    assert {p.stem for p in loaded.figures} == {
        "scalespace",
        "eigenpatches",
        "eigen_vs_keys",
        "cos_matrix",
        "reconstruction",
    }
    assert main(["explain", "paper8", "--images", str(images), "--components", "0"]) == 2
    assert "argument --components: expected an integer from 1" in capsys.readouterr().err
    assert main(["explain", "paper8", "--images", str(images), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


# ---------------------------------------------------------------------- headless Chromium
_CHECK = """<script>window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var out = document.createElement('pre'); out.id = 'imgcheck';
  out.textContent = 'IMGCHECK ' + imgs.length + ' ' + broken;
  document.body.appendChild(out);
});</script>"""


def chromium_image_check(html: str, tmp_path: Path) -> tuple[int, int]:
    """Load ``html`` in headless Chromium; return (images, images that did not load)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    page = tmp_path / "page.html"
    page.write_text(html.replace("</body>", _CHECK + "</body>"))
    profile = tmp_path / "profile"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r"IMGCHECK (\d+) (\d+)", result.stdout)
    assert found, f"chromium printed no check result (rc {result.returncode}): {result.stderr[-800:]}"
    return int(found.group(1)), int(found.group(2))


@pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="/usr/bin/chromium is absent (Debian package 'chromium'; CI installs it, and there the test must run)",
)
def test_every_figure_loads_in_headless_chromium(report_dir, tmp_path) -> None:
    html = (report_dir / "report.html").read_text()
    n_images, broken = chromium_image_check(html, tmp_path / "good")
    assert n_images == len(list(report_dir.glob("*.png"))) > 10
    assert broken == 0
    # The check itself catches a figure that does not decode.
    damaged = html.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1)
    assert chromium_image_check(damaged, tmp_path / "bad") == (n_images, 1)
