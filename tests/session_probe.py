"""Not collected by the suite (the name does not match ``test_*.py``): tests/test_temporary_files.py runs it as a
session of its own, to see what that session leaves in the temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_writes_in_its_tmp_path_and_has_a_child_write_in_the_temporary_directory(tmp_path: Path) -> None:
    Path(os.environ["MASTERKEY_SESSION_PROBE"]).write_text(os.environ["TMPDIR"])
    (tmp_path / "made-by-the-test").write_text("x")
    subprocess.run([sys.executable, "-c", "import tempfile; tempfile.mkdtemp(prefix='made-by-a-child-')"], check=True)
    assert not os.environ.get("MASTERKEY_SESSION_PROBE_FAILS"), "failing, as asked"
