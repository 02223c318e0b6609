"""Progress bars: drawn on stderr only when enabled, whatever stderr is; never invisible on a terminal that
reports no size."""

from __future__ import annotations

import fcntl
import os
import struct
import sys
import termios

import pytest

from masterkey.progress import FALLBACK_COLUMNS, FALLBACK_ROWS, _columns, progress_bar


def test_disabled_bars_write_nothing(capsys: pytest.CaptureFixture) -> None:
    assert list(progress_bar(range(5), desc="quiet", enabled=False)) == [0, 1, 2, 3, 4]
    bar = progress_bar(total=3, desc="quiet too", enabled=False)
    bar.update(3)
    bar.close()
    assert capsys.readouterr() == ("", "")


def test_enabled_bars_go_to_stderr_even_on_a_pipe(capsys: pytest.CaptureFixture) -> None:
    assert sum(progress_bar(range(4), desc="counting", unit="thing", enabled=True, leave=True)) == 6
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "counting:" in captured.err and "4/4" in captured.err and "thing/s" in captured.err


def test_a_terminal_without_a_size_gets_a_fallback_width(monkeypatch: pytest.MonkeyPatch) -> None:
    leader, follower = os.openpty()
    try:
        with os.fdopen(os.dup(follower), "w") as terminal:
            monkeypatch.setattr(sys, "stderr", terminal)
            assert _columns() == FALLBACK_COLUMNS  # a bare pseudo-terminal reports 0 columns
            bar = progress_bar(desc="sized", enabled=True)
            assert (bar.ncols, bar.nrows) == (FALLBACK_COLUMNS, FALLBACK_ROWS)  # tqdm would take 0 x -1: no bar
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 132, 0, 0))
            assert _columns() is None  # a real size: tqdm follows the terminal
            monkeypatch.undo()
    finally:
        os.close(leader)
        os.close(follower)
