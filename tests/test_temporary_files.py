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


def test_a_session_removes_what_its_processes_left_and_keeps_a_failing_tests_folder(tmp_path: Path) -> None:
    """Two sessions of tests/session_probe.py (its test writes a file in its tmp_path and has a child process make
    a folder in the temporary directory), one passing and one failing, side by side."""
    sessions = {}
    for fails in (False, True):
        work = tmp_path / ("fails" if fails else "passes")
        (work / "tmp").mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}  # a main process, not a worker
        env |= {"TMPDIR": str(work / "tmp"), "MASTERKEY_SESSION_PROBE": str(work / "root.txt")}
        env.pop("TORCHINDUCTOR_CACHE_DIR")
        if fails:
            env["MASTERKEY_SESSION_PROBE_FAILS"] = "1"
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/session_probe.py"]
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        sessions[fails] = (work, process)
    for fails, (work, process) in sessions.items():
        output = process.communicate(timeout=120)[0].decode()
        assert process.returncode == (1 if fails else 0), output
        root = Path((work / "root.txt").read_text())
        assert root.parent == work / "tmp" and root.name.startswith("masterkey-tests-")
        assert [p.name for p in (work / "tmp").iterdir()] == [f"pytest-of-{getpass.getuser()}"], output
        kept = list((work / "tmp").glob("pytest-of-*/pytest-*/test_writes*/made-by-the-test"))
        assert bool(kept) == fails, output  # pytest's tmp_path_retention_policy = "failed"
