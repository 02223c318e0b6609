"""The report: run readers, sections, the self-contained HTML page and Markdown, the report and explain commands,
and a headless-Chromium check that every figure of the page loads."""

from __future__ import annotations

import base64
import html as html_lib
import json
import os
import re
import shutil
import subprocess
import unicodedata
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from masterkey.cli import main
from masterkey.errors import MasterkeyError
from masterkey.report import build_report, load_run, read_run
from masterkey.report.html import Folded, Section, render_html, render_markdown, write_report
from masterkey.report.runs import DiscoverRun, ExperimentRun, ExplainRun, FitRun, SwapRun, TrainRun
from masterkey.report.sections import ReportOptions
from masterkey.report.sections.discover import discovered_key_labels
from masterkey.tables import markdown_table

CHROMIUM = Path("/usr/bin/chromium")
ORDER = ("fit", "discover", "swap", "train", "experiment", "explain")


@pytest.fixture(scope="session")
def report_dir(run_dirs, build_once) -> Path:
    def make(out: Path) -> None:
        build_report([run_dirs[k] for k in ORDER], out, title="test report", options=ReportOptions(samples=4))

    return build_once("report/out", make)


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
    assert list(swap.summary["keys"]) == ["none", "paper8", "random:8"] and list(swap.summary["n_seeds"]) == [1, 1, 2]
    assert set(swap.sensitivity["unit"]) == {"stage"} and len(swap.sensitivity) == 4  # ConvNeXt-Atto: 4 stages
    fit = load_run(run_dirs["fit"])
    assert set(fit.keysets) == {7} and len(fit.fits) == 1840
    train = load_run(run_dirs["train"])
    assert len(train.metrics) == 2 and len(train.steps) == 6 and "test_top1" not in train.steps  # 3 steps an epoch
    experiment = load_run(run_dirs["experiment"])
    assert len(experiment.runs) == 4 and set(experiment.table["mode"]) == {"trainable", "frozen-paper8"}
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


def test_missing_and_malformed_files_are_noted_not_fatal(run_copy) -> None:
    run = run_copy("train")
    (run / "metrics.csv").unlink()
    (run / "summary.json").write_text("{broken")
    loaded = load_run(run)
    assert loaded.metrics is not None and len(loaded.metrics) == 2  # recovered from metrics.jsonl
    assert any("summary.json is not valid JSON" in n for n in loaded.run.notes)
    assert any("metrics.csv is missing" in n for n in loaded.run.notes)

    swap = run_copy("swap")
    (swap / "sensitivity.csv").unlink()
    pd.DataFrame({"keys": ["paper8"], "accuracy": [1.0]}).to_csv(swap / "results.csv", index=False)
    loaded = load_run(swap)
    assert loaded.sensitivity is None and loaded.results is not None  # fell back to results.json
    assert len(loaded.results) == 4  # none, paper8, random:8:0, random:8:1
    assert any(n.startswith("results.csv lacks the columns") and "top1" in n for n in loaded.run.notes)


def test_discover_run_with_one_directory_per_kernel_size(tmp_path, run_dirs) -> None:
    run = run_dirs["discover_per_kernel"]
    loaded = load_run(run)
    assert isinstance(loaded, DiscoverRun) and list(loaded.parts) == ["k3", "k7"]
    assert loaded.parts["k3"].keys.kernel_size == 3 and loaded.summary["kernel_sizes"] == [3, 7]
    assert loaded.run.notes == []
    out = build_report([run], tmp_path / "r")
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [
        "r1-discover-candidates-k3.png",
        "r1-discover-candidates-k7.png",
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


def test_toc_names_the_kind_once_and_configs_fold_whole() -> None:
    config = "\n".join(f"setting_{i} = {i}" for i in range(40))
    named_like_kind = Section("discover-2 — 8 keys 7x7", "r1-discover", kind="discover")
    named_apart = Section("mnv2 — mobilenet_v2", "r2-swap", [("config", Folded("40 settings", config))], kind="swap")
    assert named_like_kind.toc_label() == "discover-2 — 8 keys 7x7"
    assert named_apart.toc_label() == "swap mnv2 — mobilenet_v2"
    assert Section("fit run-a — 8 keys", "r3-fit").heading() == ("fit", "run-a — 8 keys")  # no kind: first word
    page = render_html([named_like_kind, named_apart], "t")
    assert re.findall(r'<li><a href="#[^"]+">([^<]*)</a></li>', page) == [
        "discover-2 — 8 keys 7x7",
        "swap mnv2 — mobilenet_v2",
    ]
    assert '<span class="kind">swap</span>mnv2 — mobilenet_v2</h2>' in page
    assert f"<details><summary>40 settings</summary><pre>{config}</pre></details>" in page
    md = render_markdown([named_like_kind, named_apart], "t")
    assert "## swap mnv2 — mobilenet_v2" in md and f"config:\n\n```\n{config}\n```" in md


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
    result = chromium(["--virtual-time-budget=10000", "--dump-dom"], page, tmp_path / "profile")
    found = re.search(r"IMGCHECK (\d+) (\d+)", result.stdout)
    assert found, f"chromium printed no check result (rc {result.returncode}): {result.stderr[-800:]}"
    return int(found.group(1)), int(found.group(2))


@pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="/usr/bin/chromium is absent (Debian package 'chromium'; CI installs it, and there the test must run)",
)
@pytest.mark.browser
def test_every_figure_loads_in_headless_chromium(report_dir, tmp_path) -> None:
    html = (report_dir / "report.html").read_text()
    n_images, broken = chromium_image_check(html, tmp_path / "good")
    assert n_images == len(list(report_dir.glob("*.png"))) > 10
    assert broken == 0
    # The check itself catches a figure that does not decode.
    damaged = html.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1)
    assert chromium_image_check(damaged, tmp_path / "bad") == (n_images, 1)


# ---------------------------------------------------------------------- screen (1400 px) and paper (PDF)
def make_real_discover_run(path: Path) -> Path:
    """A small real discovery (two rounds, 7x7 filters of one CIFAR-10 ConvNeXt of the default bank) written by the
    real writer."""
    from masterkey.bank import open_bank
    from masterkey.discover import AutoencoderConfig, DiscoverConfig, discover_bank, write_discover_run

    bank = open_bank("default").query("source == 'convnext_atto_s0_e20'")
    config = DiscoverConfig(
        n_keys=8, n_candidates=16, rounds=2, random_seeds=2, compare_k=(4, 8), autoencoder=AutoencoderConfig(32, 200)
    )
    found = discover_bank(bank, [7], config, progress=False)
    return write_discover_run(path, found, {"bank": "default", "n_keys": 8, "rounds": 2}, "default")


def make_one_epoch_train_run(path: Path, shared: Path) -> Path:
    """A real one-epoch training run (a ConvNeXt-Atto of 8-32 channels, 60 CIFAR-10 images)."""
    import torch

    from masterkey.train import TrainConfig, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig(
            model="convnext_atto",
            model_kwargs={"num_classes": 10, "dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "patch_size": 2},
            data=str(shared / "data" / "cifar10"),
            mode="frozen",
            keys="paper8",
            max_train_images=60,
            max_test_images=40,
            batch_size=20,
            epochs=1,
            progress=False,
        )
        train(config, path)
    finally:
        torch.set_num_threads(threads)
    return path


def make_real_swap_run(path: Path, shared: Path) -> Path:
    """A real swap: a CIFAR-10 ConvNeXt-Atto with paper8 and two random key sets, per-stage sensitivity."""
    weights = shared / "models" / "cifar10-convnext" / "convnext_atto_s0_e20.safetensors"
    args = ["swap", "--weights", str(weights), "--keys", "paper8", "--keys", "random:8", "--seeds", "2"]
    args += ["--data", str(shared / "data" / "cifar10" / "test"), "--max-per-class", "2", "--sensitivity", "stage"]
    assert main([*args, "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def real_report(run_dirs, shared, tmp_path_factory) -> Path:
    """A report of real runs: discover, swap and a one-epoch train run made here, the fit and explain runs of
    conftest (real), and its experiment run (every table kind of the report)."""
    root = tmp_path_factory.mktemp("real")
    runs = [
        make_real_discover_run(root / "discover"),
        make_real_swap_run(root / "swap", shared),
        make_one_epoch_train_run(root / "train-1-epoch", shared),
        run_dirs["fit"],
        run_dirs["experiment"],
        run_dirs["explain"],
    ]
    return build_report(runs, root / "report", title="real runs", options=ReportOptions(samples=2))


class _Tables(HTMLParser):
    """The text of every row of every ``<table>`` of a page (cells as the reader sees them)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(html: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def _squeeze(text: str) -> str:
    """Text without whitespace, ligatures unfolded (the PDF's "ﬁ" is "fi")."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def chromium(args: list[str], page: Path, profile: Path) -> subprocess.CompletedProcess[str]:
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
        *args,
        page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def missing_rows_in_pdf(html: str, tmp_path: Path) -> tuple[int, list[str]]:
    """Print ``html`` to PDF in headless Chromium (A4, as a reader would) and return (rows of every table,
    the rows whose text is not in the PDF's text)."""
    from pypdf import PdfReader

    tmp_path.mkdir(parents=True, exist_ok=True)
    page, pdf = tmp_path / "page.html", tmp_path / "page.pdf"
    page.write_text(html)
    result = chromium(["--no-pdf-header-footer", f"--print-to-pdf={pdf}"], page, tmp_path / "profile")
    assert pdf.is_file(), f"chromium wrote no PDF (rc {result.returncode}): {result.stderr[-800:]}"
    text = _squeeze("".join(p.extract_text() for p in PdfReader(pdf).pages))
    rows = [row for table in table_rows(html) for row in table]
    return len(rows), [" | ".join(row) for row in rows if _squeeze("".join(row)) not in text]


_LAYOUT = """<script>window.addEventListener('load', function () {
  var clipped = [], wide = [];
  document.querySelectorAll('table').forEach(function (table, i) {
    if (!table.offsetParent && !table.closest('details')) { clipped.push(i + ': hidden'); }
    for (var el = table; el && el !== document.body; el = el.parentElement) {
      var style = getComputedStyle(el);
      if (style.overflowY !== 'visible' && el.scrollHeight > el.clientHeight + 1) { clipped.push(i + ': rows'); }
      if (style.overflowX === 'visible' && el.scrollWidth > el.clientWidth + 1) { wide.push(i); }
    }
  });
  var out = document.createElement('pre'); out.id = 'layout';
  out.textContent = 'LAYOUT ' + JSON.stringify({tables: document.querySelectorAll('table').length,
    clipped: clipped, wide: wide, page: document.documentElement.scrollWidth});
  document.body.appendChild(out);
});</script>"""


def screen_layout(html: str, tmp_path: Path, width: int = 1400) -> dict[str, object]:
    """Lay ``html`` out in headless Chromium ``width`` px wide: tables whose rows a box cuts off (``clipped``), tables
    running out of a box that does not scroll (``wide``), the page's width."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    page = tmp_path / "page.html"
    page.write_text(html.replace("</body>", _LAYOUT + "</body>"))
    result = chromium([f"--window-size={width},1000", "--virtual-time-budget=10000", "--dump-dom"], page, tmp_path)
    found = re.search(r"LAYOUT (\{.*\})", result.stdout)
    assert found, f"chromium printed no layout (rc {result.returncode}): {result.stderr[-800:]}"
    return json.loads(html_lib.unescape(found.group(1)))


def _needs_browser() -> None:
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip("/usr/bin/chromium is absent (Debian package 'chromium'; CI installs it, and there it must run)")


@pytest.mark.browser
@pytest.mark.slow
def test_every_table_row_is_on_screen_at_1400_px_and_on_paper(real_report, tmp_path) -> None:
    _needs_browser()
    if not os.environ.get("CI"):
        pytest.importorskip("pypdf", reason="pypdf reads the printed PDF (pip install -e '.[test]')")
    html = (real_report / "report.html").read_text()
    tables = table_rows(html)
    assert len(tables) >= 20 and sum(map(len, tables)) > 150  # every kind of table of the report is there
    layout = screen_layout(html, tmp_path / "screen")
    assert layout["tables"] == len(tables) and layout["clipped"] == [] and layout["wide"] == []
    assert layout["page"] <= 1400  # wide tables scroll inside their box; the page itself never does
    n_rows, missing = missing_rows_in_pdf(html, tmp_path / "pdf")
    assert n_rows == sum(map(len, tables)) and missing == []
    # The checks catch what they are for: a fixed-height scroll box on paper, a folded table that stays folded.
    boxed = html.replace(".scroll { overflow: visible; }", ".scroll { overflow: auto; max-height: 80px; }", 1)
    assert boxed != html
    assert len(missing_rows_in_pdf(boxed, tmp_path / "boxed")[1]) > 20
    assert screen_layout(
        html.replace(".scroll { overflow-x: auto; }", ".scroll { overflow: auto; max-height: 80px; }"),
        tmp_path / "screen-boxed",
    )["clipped"]


@pytest.mark.slow
def test_report_of_real_runs_reads_right(real_report) -> None:
    html = (real_report / "report.html").read_text()
    toc = re.findall(r'<li><a href="#r\d+-\w+">([^<]*)</a></li>', html)
    assert toc[0].startswith("discover — 8 keys 7x7") and toc[2].startswith("train-1-epoch")
    assert not any(entry.split()[0] == entry.split()[1] for entry in toc if len(entry.split()) > 1)
    assert "…" not in html  # nothing cut: configs fold, whole
    assert html.count("<details>") >= 6 and "rounds = 2" in html
    assert "top1 %" in html and "test_top1 %" in html and ">top1<" not in html
    md = (real_report / "report.md").read_text()
    assert "## discover — 8 keys 7x7" in md and "rounds = 2" in md
    keys = load_run(real_report.parent / "discover").parts[""].keys
    labels = discovered_key_labels(keys)
    shares = [float(re.fullmatch(rf"{i + 1}: (\d+\.\d)% of filters", label).group(1)) for i, label in enumerate(labels)]
    assert shares == sorted(shares, reverse=True) and 99.5 < sum(shares) < 100.5
