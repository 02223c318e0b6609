"""The test session's temporary files (tests/conftest.py): the processes a session starts keep theirs in a folder of
the session's own, removed when it ends; pytest's own folders keep pytest's rules (a failing test's is kept)."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_processes_a_session_starts_share_a_temporary_folder_of_its_own(tmp_path: Path) -> None:
    root = Path(os.environ["TMPDIR"])
    assert root.name.startswith("masterkey-tests-") and root.is_dir()
    assert not tmp_path.is_relative_to(root)  # pytest's folders keep its retention rules
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).parent == root  # torch.compile's cache (~150 MB)
    child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"], capture_output=True)
    assert Path(os.fsdecode(child.stdout.strip())) == root


def test_a_failing_session_removes_what_its_processes_left_and_keeps_the_failed_tests_folder(tmp_path: Path) -> None:
    """A session of tests/session_probe.py, whose one test writes a file in its tmp_path, has a child process make a
    folder in the temporary directory, and fails: the child's folder goes with the session's, the test's stays for
    a look (pytest's ``tmp_path_retention_policy = "failed"``; a passing test's would go)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}  # a main process, not a worker
    env |= {"TMPDIR": str(tmp_path), "MASTERKEY_SESSION_PROBE": str(tmp_path / "root.txt")}
    env |= {"MASTERKEY_SESSION_PROBE_FAILS": "1"}
    env.pop("TORCHINDUCTOR_CACHE_DIR")
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/session_probe.py"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "failing, as asked" in done.stdout, done.stdout + done.stderr
    root = Path((tmp_path / "root.txt").read_text())
    assert root.parent == tmp_path and root.name.startswith("masterkey-tests-")
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"pytest-of-{getpass.getuser()}", "root.txt"]
    assert list(tmp_path.glob("pytest-of-*/pytest-*/test_writes*/made-by-the-test"))
