"""The third round of hostile and careless input (issue 25): queries that try to run code, outputs that hold the
user's own files, files that never end or block (devices, FIFOs), nesting that breaks parsers, files that are not
what their name says, and altered banks whose numbers would silently be wrong. Each case checks what every
robustness case checks (exit status, one line on stderr, no traceback, nothing left behind, every file of the
workspace byte-identical) and, for the numbers, the right number or a refusal.

``{ws}`` is the session workspace (conftest.py), ``{h}`` the hostile inputs built here, ``{out}`` an output path
that must never appear.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from masterkey.files import safetensors_bytes

from .conftest import assert_clean_failure, run_cli, snapshot

H = "{h}"
M = "{ws}/model.safetensors"
DATA = "{ws}/data"
SWAP = ["swap", "--keys", "paper8", "--data", f"{DATA}/test"]
TRAIN = [
    "train", "--model", "convnext_atto", "--model-kwargs", "num_classes=10,patch_size=1", "--data", DATA,
    "--batch-size", "4", "-o", "{out}",
]  # fmt: skip
DEEP = "[" * 5000 + "]" * 5000


def _altered_bank(bank: Path, dest: Path, change) -> None:
    """A copy of ``bank`` whose 7x7 filters ``change`` altered, with the manifest's size and sha256 updated to
    match (so every checksum verifies): only the data says something is wrong."""
    shutil.copytree(bank, dest)
    tensor = dest / "filters_k7.safetensors"
    filters = change(load_file(str(tensor))["filters"].clone())
    tensor.write_bytes(safetensors_bytes({"filters": filters.contiguous()}, {"format": "masterkey-bank"}))
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["files"][tensor.name] = {
        "bytes": tensor.stat().st_size,
        "sha256": hashlib.sha256(tensor.read_bytes()).hexdigest(),
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _nan_rows(filters: torch.Tensor) -> torch.Tensor:
    filters[:5, 0, 0] = float("nan")
    return filters


def _huge_rows(filters: torch.Tensor) -> torch.Tensor:
    filters[10:13] *= 1e30
    return filters


@pytest.fixture(scope="session")
def hostile(workspace: Path) -> Path:
    """Hostile inputs beside the workspace's real ones (inside it, so that every case checks them too)."""
    h = workspace / "hostile"
    h.mkdir()
    bank = workspace / "bank"
    os.mkfifo(h / "fifo.pth")
    os.mkfifo(h / "fifo.txt")
    os.mkfifo(h / "fifo.json")
    (h / "loop").symlink_to(h / "loop")
    (h / "dangling.pth").symlink_to(h / "nothing.pth")
    (h / "zero.pth").symlink_to("/dev/zero")
    # banks whose manifest never ends, blocks, nests too deep or is a folder; whose metadata is a FIFO
    for name, make in {
        "zero_manifest": lambda m: m.symlink_to("/dev/zero"),
        "fifo_manifest": lambda m: os.mkfifo(m),
        "deep_manifest": lambda m: m.write_text(DEEP),
        "dir_manifest": lambda m: m.mkdir(),
    }.items():
        shutil.copytree(bank, h / name)
        (h / name / "manifest.json").unlink()
        make(h / name / "manifest.json")
    shutil.copytree(bank, h / "fifo_metadata")
    (h / "fifo_metadata" / "metadata.parquet").unlink()
    os.mkfifo(h / "fifo_metadata" / "metadata.parquet")
    # run folders whose run.json never ends, blocks or nests too deep
    for name, make in {
        "zero_run": lambda r: r.symlink_to("/dev/zero"),
        "fifo_run": lambda r: os.mkfifo(r),
        "deep_run": lambda r: r.write_text('{"kind": "fit", "config": ' + DEEP + "}"),
    }.items():
        (h / name).mkdir()
        make(h / name / "run.json")
    # folders that merely name a masterkey kind, and real outputs with the user's files inside
    (h / "fake_fit").mkdir()
    (h / "fake_fit" / "run.json").write_text(json.dumps({"kind": "fit"}))
    (h / "fake_fit" / "thesis.tex").write_text("my only copy")
    (h / "fake_bank").mkdir()
    (h / "fake_bank" / "manifest.json").write_text(json.dumps({"format": "masterkey-bank"}))
    (h / "fake_bank" / "data.csv").write_text("1,2\n")
    shutil.copytree(workspace / "fit", h / "fit_with_notes")
    (h / "fit_with_notes" / "notes.txt").write_text("my notes")
    shutil.copytree(workspace / "fit", h / "fit_with_hidden")
    (h / "fit_with_hidden" / ".ideas").write_text("hidden, still mine")
    shutil.copytree(bank, h / "bank_with_notes")
    (h / "bank_with_notes" / "notes.txt").write_text("my notes")
    # files named as weights that are not PyTorch pickles, and one that would need code to unpickle
    (h / "json.pth").write_text('{"state_dict": {}}')
    np.save(h / "array.npy", np.zeros(3))
    (h / "array.npy").rename(h / "array.pth")
    (h / "gzip.pth").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(64)))
    with zipfile.ZipFile(h / "zip.pth", "w") as z:
        z.writestr("readme.txt", "not a checkpoint")
    torch.save({"conv.weight": torch.zeros(4, 1, 3, 3), "extra": np.zeros(2)}, h / "numpy_inside.pth")
    (h / "pickled_object.pth").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    # altered banks: NaN and absurdly large filters with matching checksums; every filter NaN
    _altered_bank(bank, h / "nan_bank", _nan_rows)
    _altered_bank(bank, h / "huge_bank", _huge_rows)
    _altered_bank(bank, h / "scaled_bank", lambda f: f * 1e38)
    _altered_bank(bank, h / "all_nan_bank", lambda f: torch.full_like(f, float("nan")))
    # images with nothing to explain
    from PIL import Image

    (h / "flat").mkdir()
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(h / "flat" / "grey.png")
    (h / "deep.json").write_text(DEEP)
    return h


INJECTIONS = [
    "@self.path.joinpath('metadata.parquet').unlink() is None",
    "kernel_size == 7 and @self.path.parent.joinpath('owned.txt').write_text('owned') > 0",
    "__import__('os').system('touch {ws}/owned.txt') == 0",
    "source.str.startswith('convnext')",
    "kernel_size.__class__.__mro__[1].__subclasses__() == 1",
    "kernel_size == 7 or (lambda: open('{ws}/owned.txt', 'w'))() is None",
]
QUERY_COMMANDS = {
    "bank-query": lambda q: ["bank", "query", "{ws}/bank", q, "-o", "{out}"],
    "fit": lambda q: ["fit", "{ws}/bank", "--query", q, "-o", "{out}"],
    "discover": lambda q: ["discover", "{ws}/bank", "--query", q, "-o", "{out}"],
}

CASES: list[tuple[str, list[str], str]] = [
    *[
        (f"{cmd}-injection-{i}", make(q), "invalid query")
        for cmd, make in QUERY_COMMANDS.items()
        for i, q in enumerate(INJECTIONS)
    ],
    *[
        (f"{cmd}-not-boolean", make("kernel_size"), "the column 'kernel_size' alone is not a condition")
        for cmd, make in QUERY_COMMANDS.items()
    ],
    ("fit-query-literal", ["fit", "{ws}/bank", "--query", "7"], "the value 7 alone is not a condition"),
    ("fit-query-text-vs-number", ["fit", "{ws}/bank", "--query", "source > 3"], "source holds text"),
    ("bank-query-arithmetic", ["bank", "query", "{ws}/bank", "stage + 1 > 2"], "no arithmetic"),
    ("bank-query-deep", ["bank", "query", "{ws}/bank", "(" * 200 + "stage == 1" + ")" * 200], "nested more than"),
    ("bank-query-long", ["bank", "query", "{ws}/bank", "stage == 1 or " * 2000 + "stage == 2"], "more than 10,000"),
    # ------------------------------------------------------------------ reads that never end, block or recurse
    ("bank-info-zero-manifest", ["bank", "info", f"{H}/zero_manifest"], "manifest.json: a device, not a bank manifest"),
    ("bank-info-fifo-manifest", ["bank", "info", f"{H}/fifo_manifest"], "a named pipe (FIFO), not a bank manifest"),
    ("bank-info-deep-manifest", ["bank", "info", f"{H}/deep_manifest"], "JSON nested more than 100 levels deep"),
    ("bank-info-dir-manifest", ["bank", "info", f"{H}/dir_manifest"], "manifest.json: a folder, not a bank manifest"),
    ("fit-deep-manifest", ["fit", f"{H}/deep_manifest"], "JSON nested more than 100 levels deep"),
    ("bank-verify-fifo-metadata", ["bank", "verify", f"{H}/fifo_metadata"], "a named pipe (FIFO), not a bank file"),
    ("report-zero-run", ["report", f"{H}/zero_run", "-o", "{out}"], "run.json: a device, not a run description"),
    ("report-fifo-run", ["report", f"{H}/fifo_run", "-o", "{out}"], "a named pipe (FIFO), not a run description"),
    ("report-deep-run", ["report", f"{H}/deep_run", "-o", "{out}"], "run.json: JSON nested more than 100 levels"),
    ("collect-deep-run", ["train", "--collect", f"{H}/deep_run", "-o", "{out}"], "JSON nested more than 100"),
    ("keys-fifo", ["keys", "show", f"{H}/fifo.txt"], "fifo.txt: a named pipe (FIFO), not a key file"),
    ("keys-device", ["keys", "show", "/dev/zero"], "/dev/zero: a device, not a key file"),
    ("keys-loop", ["keys", "show", f"{H}/loop"], "a loop of symbolic links, not a key file"),
    ("keys-dangling", ["keys", "show", f"{H}/dangling.pth"], "a link to"),
    ("fit-keys-fifo", ["fit", "{ws}/bank", "--keys", f"{H}/fifo.txt"], "a named pipe (FIFO), not a key file"),
    ("harvest-fifo", ["harvest", f"{H}/fifo.pth", "-o", "{out}"], "fifo.pth: a named pipe (FIFO), not a weights file"),
    ("harvest-device", ["harvest", f"{H}/zero.pth", "-o", "{out}"], "zero.pth: a device, not a weights file"),
    ("harvest-loop", ["harvest", f"{H}/loop", "-o", "{out}"], "a loop of symbolic links"),
    ("harvest-dangling", ["harvest", f"{H}/dangling.pth", "-o", "{out}"], "dangling.pth: a link to"),
    ("swap-weights-fifo", ["swap", "--weights", f"{H}/fifo.pth", *SWAP[1:]], "a named pipe (FIFO), not a weights"),
    ("swap-weights-device", ["swap", "--weights", f"{H}/zero.pth", *SWAP[1:]], "a device, not a weights file"),
    ("train-experiment-fifo", [*TRAIN, "--experiment", f"{H}/fifo.json"], "a named pipe (FIFO), not an experiment"),
    ("train-experiment-deep", [*TRAIN, "--experiment", f"{H}/deep.json"], "JSON nested more than 100 levels"),
    (
        "train-kwargs-deep",
        [*TRAIN[:3], "--model-kwargs", "{{" + '"a":{{' * 3000 + "1" + "}}" * 3001, *TRAIN[5:]],
        "--model-kwargs: not a JSON object (JSON nested more than 100 levels deep",
    ),
    # ------------------------------------------------------------------ files that are not what they are named
    ("harvest-json-pth", ["harvest", f"{H}/json.pth", "-o", "{out}"], "(a JSON text, not a PyTorch file)"),
    ("harvest-npy-pth", ["harvest", f"{H}/array.pth", "-o", "{out}"], "(a NumPy .npy array, not a PyTorch file)"),
    ("harvest-gzip-pth", ["harvest", f"{H}/gzip.pth", "-o", "{out}"], "(a gzip archive, not a PyTorch file)"),
    ("harvest-zip-pth", ["harvest", f"{H}/zip.pth", "-o", "{out}"], "a zip archive that is not a PyTorch checkpoint"),
    ("harvest-numpy-inside", ["harvest", f"{H}/numpy_inside.pth", "-o", "{out}"], "holds Python objects besides"),
    ("swap-json-weights", ["swap", "--weights", f"{H}/json.pth", *SWAP[1:]], "(a JSON text, not a PyTorch file)"),
    # ------------------------------------------------------------------ outputs that hold the user's files
    ("fit-out-fake-run", ["fit", "{ws}/bank", "-o", f"{H}/fake_fit", "--overwrite"], "fake_fit is not a masterkey"),
    ("harvest-out-fake-bank", ["harvest", M, "-o", f"{H}/fake_bank", "--overwrite"], "fake_bank is not a masterkey"),
    (
        "fit-out-with-notes",
        ["fit", "{ws}/bank", "-o", f"{H}/fit_with_notes", "--overwrite"],
        "fit_with_notes holds files masterkey did not write (notes.txt)",
    ),
    (
        "fit-out-with-hidden",
        ["fit", "{ws}/bank", "-o", f"{H}/fit_with_hidden", "--overwrite"],
        "holds files masterkey did not write (.ideas)",
    ),
    (
        "bank-query-out-with-notes",
        ["bank", "query", "{ws}/bank", "stage == 0", "-o", f"{H}/bank_with_notes", "--overwrite"],
        "bank_with_notes holds files masterkey did not write (notes.txt)",
    ),
    (
        "harvest-out-with-notes",
        ["harvest", M, "-o", f"{H}/bank_with_notes", "--overwrite"],
        "holds files masterkey did not write (notes.txt)",
    ),
    ("fit-out-loop", ["fit", "{ws}/bank", "-o", f"{H}/loop", "--overwrite"], "a loop of symbolic links"),
    # ------------------------------------------------------------------ numbers that would be silently wrong
    ("fit-scaled-bank", ["fit", f"{H}/scaled_bank"], "every one is excluded (1,840 out of range)"),
    ("fit-all-nan-bank", ["fit", f"{H}/all_nan_bank"], "every one is excluded (1,840 nonfinite)"),
    (
        "fit-all-flagged",
        ["fit", "default", "--query", "filter_flags == 2", "--resize-keys"],
        "every one is excluded (65 zero",
    ),
    ("report-fifo-as-run", ["report", f"{H}/fifo.json", "-o", "{out}"], "a named pipe (FIFO), not a run directory"),
    ("report-loop-as-run", ["report", f"{H}/loop", "-o", "{out}"], "a loop of symbolic links"),
    ("train-lr-and-base-lr", [*TRAIN, "--lr", "0.1", "--base-lr", "0.1"], "--lr 0.1 and --base-lr 0.1 conflict"),
    ("explain-flat-image", ["explain", "--images", f"{H}/flat"], "grey.png is flat (no variation within 7x7"),
    # ------------------------------------------------------------------ counts
    ("swap-workers-huge", ["swap", "--weights", M, *SWAP[1:], "--workers", "10000"], "from 0 to 64, got 10,000"),
    ("train-workers-huge", [*TRAIN, "--workers", "5000"], "argument --workers: expected an integer from 0 to 64"),
]


def test_every_command_that_takes_a_query_is_covered():
    from masterkey.cli import build_parser

    parser = build_parser()
    takes = set()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        actions = [a for a in sub._actions if "--query" in a.option_strings]
        nested = [a for a in sub._actions if hasattr(a, "choices") and isinstance(a.choices, dict)]
        if actions:
            takes.add(name)
        for action in nested:
            for child, parser_ in action.choices.items():
                if any(a.dest == "expr" for a in parser_._actions):
                    takes.add(f"{name}-{child}")
    assert takes == set(QUERY_COMMANDS)


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_one_clean_line_and_changes_nothing(workspace, hostile, capsys, argv, expected, one_thread):
    before = snapshot(workspace)
    args = [a.format(ws=workspace, h=hostile, out=workspace / "out") for a in argv]
    outcome = run_cli(capsys, args)
    assert_clean_failure(outcome, expected.format(ws=workspace, h=hostile))
    assert snapshot(workspace) == before
    assert not (workspace / "owned.txt").exists() and not (workspace / "bank" / "owned.txt").exists()


# ---------------------------------------------------------------------- numbers: right, or refused
def _fit_summary(capsys, argv: list[str]) -> dict:
    outcome = run_cli(capsys, [*argv, "--json", "--reference", "none", "--no-progress"])
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out)


@pytest.mark.parametrize(
    ("bank", "bad_rows", "counted"), [("nan_bank", range(5), "nonfinite"), ("huge_bank", range(10, 13), "out_of_range")]
)
def test_altered_filters_are_excluded_counted_and_the_means_are_those_of_the_rest(
    workspace, hostile, capsys, bank, bad_rows, counted
):
    """Filters altered after the bank was written (its checksums updated to match, its flags not) are found in the
    data, excluded and counted; the summary equals the fit of the other filters, which pins the right number."""
    before = snapshot(workspace)
    altered = _fit_summary(capsys, ["fit", str(hostile / bank)])
    rest = " and ".join(f"index != {i}" for i in bad_rows)
    clean = _fit_summary(capsys, ["fit", str(workspace / "bank"), "--query", rest])
    assert altered["excluded"][counted] == len(bad_rows)
    assert altered["n_fitted"] == clean["n_fitted"] == 1840 - len(bad_rows)
    assert altered["overall"]["mean_cos2"] == pytest.approx(clean["overall"]["mean_cos2"], rel=1e-6)
    assert np.isfinite(altered["overall"]["mean_cos2"])
    assert snapshot(workspace) == before


def test_report_reads_nothing_outside_its_run_folders(workspace, hostile, tmp_path, capsys):
    """A run folder whose files are links to files outside it (a summary naming a secret, another key set): the
    report follows none of them, says so, and embeds nothing of them."""
    run, outside = tmp_path / "fit", tmp_path / "outside"
    shutil.copytree(workspace / "fit", run)
    outside.mkdir()
    summary = json.loads((run / "summary.json").read_text())
    summary["bank"] = "TOP-SECRET-OUTSIDE-THE-RUN"
    (outside / "summary.json").write_text(json.dumps(summary))
    shutil.copy(run / "keys_k7.safetensors", outside / "keys.safetensors")
    for name, target in (("summary.json", "summary.json"), ("keys_k7.safetensors", "keys.safetensors")):
        (run / name).unlink()
        (run / name).symlink_to(outside / target)
    before = snapshot(tmp_path)
    outcome = run_cli(capsys, ["report", str(run), "--samples", "2", "-o", str(tmp_path / "report")])
    assert outcome.code == 0, outcome.err
    page = (tmp_path / "report" / "report.html").read_text()
    assert "TOP-SECRET" not in page and "TOP-SECRET" not in (tmp_path / "report" / "report.md").read_text()
    for name in ("summary.json", "keys_k7.safetensors"):
        assert f"{name} is a link leading outside the run folder; not read" in page
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("report")} == before


def test_a_flat_image_is_left_out_with_a_note(workspace, hostile, tmp_path, capsys):
    from PIL import Image

    from masterkey.explain.eigenpatches import builtin_image

    images = tmp_path / "images"
    shutil.copytree(hostile / "flat", images)
    Image.fromarray((255 * builtin_image("camera")[:96, :96]).round().astype(np.uint8)).save(images / "camera.png")
    argv = ["explain", "--images", str(images), "--seeds", "2", "--max-patches", "2000", "--json", "--no-progress"]
    outcome = run_cli(capsys, argv)
    assert outcome.code == 0, outcome.err
    assert "left out grey.png: flat" in outcome.err
    summary = json.loads(outcome.out)
    assert summary["images"] == ["camera.png"] and summary["flat_images_left_out"] == ["grey.png"]
    assert all(0 <= row["explained"] <= 1 for row in summary["reconstruction"])


# ---------------------------------------------------------------------- standard output
def _subprocess(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    return subprocess.run([sys.executable, "-m", "masterkey", *argv], env=env, timeout=600, **kwargs)


def test_a_full_stdout_is_named_and_fit_leaves_no_run(workspace, tmp_path):
    out = tmp_path / "fit"
    with open("/dev/full", "w") as full:
        proc = _subprocess(
            ["fit", str(workspace / "bank"), "--reference", "none", "--no-progress", "-o", str(out)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "masterkey: error: cannot write standard output: no space left on device"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_closed_stdout_is_one_line_before_any_work(workspace, tmp_path):
    proc = _subprocess(
        ["bank", "query", str(workspace / "bank"), "stage == 0", "-o", str(tmp_path / "b")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.close(1),
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "masterkey: error: standard output is closed; redirect it to a file or to /dev/null instead of closing it"
    ]
    assert list(tmp_path.iterdir()) == []
