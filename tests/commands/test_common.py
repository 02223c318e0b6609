"""The options and closing lines every command shares: ``--progress / --no-progress`` (bars on stderr, by default
only on a terminal) and the closing list of written files. The terminal cases run the real CLI in a subprocess
whose stderr is a pseudo-terminal; the piped ones run it in this process, its output captured (not a terminal)."""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

import masterkey
from masterkey.cli import build_parser, main
from masterkey.commands._common import add_progress_argument, note_written, progress_enabled

SRC = Path(masterkey.__file__).resolve().parents[1]
#: A real command that is quick: fit the 3x3 filters of the embedded bank (a few thousand) to paper8.
FIT = ["fit", "--keys", "paper8", "--resize-keys", "--query", "kernel_size == 3", "--reference", "none"]
BAR = re.compile(r"fit paper8: +\d+%\|")


def _on_a_terminal(args: list[str], columns: int = 0) -> tuple[str, str]:
    """Run ``python -m masterkey ARGS`` with stderr on a fresh pseudo-terminal (``columns`` wide; 0: a bare one that
    reports no size). Returns (stdout, stderr)."""
    command = [sys.executable, "-m", "masterkey", *args]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("COLUMNS", None)
    leader, follower = os.openpty()
    if columns:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.wait(timeout=120) == 0, b"".join(chunks).decode(errors="replace")
    return stdout, b"".join(chunks).decode(errors="replace")


def _piped(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Run ``masterkey ARGS`` in this process with stdout and stderr captured, neither a terminal (as on a pipe).
    Returns (stdout, stderr)."""
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_a_terminal_shows_bars_and_a_pipe_does_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fit"
    stdout, stderr = _on_a_terminal([*FIT, "-o", str(out)])  # a bare terminal: no size reported
    assert BAR.search(stderr), stderr
    assert "filter/s" in stderr  # (a fast fit may end before tqdm redraws, so 100% need not show)
    assert "mean_cos2" in stdout and "fit paper8" not in stdout  # bars never mix with the results
    # The closing list names the directory and what it holds, every name real.
    line = next(x for x in stderr.splitlines() if x.startswith("masterkey: wrote "))
    assert line.startswith(f"masterkey: wrote {out}/ (") and "files, " in line
    names = line.split("): ", 1)[1].split(", ")
    assert "run.json" in names and "fits.parquet" in names
    for name in names:
        assert (out / name.rstrip("/")).exists(), name

    stdout_piped, stderr_piped = _piped(FIT, capsys)
    assert "fit paper8" not in stderr_piped and "\r" not in stderr_piped
    assert stdout_piped == stdout


def test_no_progress_on_a_terminal_and_progress_on_a_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    _, stderr = _on_a_terminal([*FIT, "--no-progress"], columns=100)
    assert "fit paper8" not in stderr and "%|" not in stderr
    _, stderr = _piped([*FIT, "--progress"], capsys)
    assert BAR.search(stderr)


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(parser.prog, parser)]
    return [
        leaf for a in subs for child in {id(c): c for c in a.choices.values()}.values() for leaf in _leaf_parsers(child)
    ]


def test_every_command_accepts_progress_and_no_progress() -> None:
    top = build_parser()
    (commands,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"harvest", "bank", "fit", "discover", "swap", "train", "explain", "report", "keys", "cache"} <= set(
        commands.choices
    )
    leaves = _leaf_parsers(top)
    assert len(leaves) >= len(commands.choices)
    for prog, parser in leaves:
        options = {s for a in parser._actions for s in a.option_strings}
        assert {"--progress", "--no-progress"} <= options, prog
    # Sub-actions take it after their name; the earlier spellings of discover and train still work.
    assert top.parse_args(["bank", "info", "B", "--no-progress"]).progress is False
    assert top.parse_args(["bank", "--no-progress", "info", "B"]).progress is False
    assert top.parse_args(["bank", "info", "B"]).progress is None
    assert top.parse_args(["cache", "info", "--progress"]).progress is True
    assert top.parse_args(["discover", "--no-progress"]).progress is False
    assert top.parse_args(["train", "--progress", "-o", "x"]).progress is True
    assert top.parse_args(["fit"]).progress is None


def test_progress_enabled_follows_the_option_then_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    for tty in (True, False):
        monkeypatch.setattr(sys, "stderr", Stream(tty))
        assert progress_enabled(argparse.Namespace(progress=None)) is tty
        assert progress_enabled(argparse.Namespace()) is tty
        assert progress_enabled(argparse.Namespace(progress=True)) is True
        assert progress_enabled(argparse.Namespace(progress=False)) is False


def test_add_progress_argument_reaches_nested_actions() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("one")
    sub.add_parser("two", aliases=["2"])
    add_progress_argument(parser)
    assert parser.parse_args(["one", "--progress"]).progress is True
    assert parser.parse_args(["2", "--no-progress"]).progress is False
    assert parser.parse_args(["--progress", "one"]).progress is True  # before the sub-action, too
    assert parser.parse_args(["--progress", "one", "--no-progress"]).progress is False  # the last one wins
    assert parser.parse_args(["one"]).progress is None


def test_note_written_lists_each_output_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    (run / "figures" / "a.png").write_bytes(b"x" * 1500)
    single = tmp_path / "keys.txt"
    single.write_text("1 2 3\n")
    note_written(run, None, single)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"masterkey: wrote {run}/ (2 files, 1.5 kB): summary.json, figures/",
        f"masterkey: wrote {single} (6 B)",
    ]


def test_bank_info_without_a_bank_says_it_shows_the_default_one(capsys) -> None:
    """``masterkey bank info`` alone shows the embedded bank and says so; its help names 'default'."""
    from masterkey.bank import default_bank_path
    from masterkey.cli import main

    assert main(["bank", "info"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"bank default, the embedded bank: {default_bank_path()}")
    assert main(["bank", "info", "--help"]) == 0
    assert "'default' (the embedded bank, used when BANK is left out)" in " ".join(capsys.readouterr().out.split())
