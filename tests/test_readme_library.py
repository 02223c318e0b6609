"""The README's library snippet, run as a reader runs it: twice in the same folder (the second run replaces what
the first wrote instead of failing with "banks/mnv2 already exists"). The first run is a fresh interpreter
(``python -c``); the second runs in the test's process (a second interpreter start would add only its imports).

Smaller settings than the README's, so the test stays short (each says why it is safe to shrink):
:data:`SMALLER` maps the README's text to the text run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: README text -> the text run: fewer autoencoder steps and candidates (the discovery's API is what is shown) and
#: fewer training images (one epoch of frozen training on 500 images is the same code path as on 100).
SMALLER = {
    "mk.DiscoverConfig(n_keys=8)": (
        "mk.DiscoverConfig(n_keys=8, n_candidates=16, rounds=1, compare_k=(8,), random_seeds=1, "
        "autoencoder=mk.discover.AutoencoderConfig(hidden=32, steps=100))"
    ),
    "max_train_images=500, max_test_images=500": "max_train_images=100, max_test_images=100",
}


def library_snippet() -> str:
    """The first Python block of the README's "## Library" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_library_snippet_runs_twice(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = library_snippet()
    for old, new in SMALLER.items():
        assert old in code, f"README no longer says {old!r}: update SMALLER"
        code = code.replace(old, new)
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").symlink_to(shared)  # the snippet's ../shared
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"run 1:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
    bank_file = next((work / "banks" / "mnv2").glob("filters_k3*"))
    first_bank = bank_file.stat().st_mtime_ns
    monkeypatch.chdir(work)
    exec(compile(code, "README.md (library snippet)", "exec"), {"__name__": "__main__"})  # run 2
    assert bank_file.stat().st_mtime_ns > first_bank  # written again, not left as it was
    assert (work / "banks" / "mnv2").is_dir() and (work / "runs" / "frozen-500" / "summary.json").is_file()
