"""Error messages name options in the caller's language: keywords from Python, flags from the command line."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import masterkey
from masterkey.cli import main
from masterkey.errors import MasterkeyError, command_line_options, option
from masterkey.files import check_output

PACKAGE = Path(masterkey.__file__).parent
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-k)(?![\w-])")
#: Modules whose text may name flags: the command layer itself, and text written for people who ran a command
#: (run-format descriptions, report captions) or that quotes another project's flags (the recipes' sources).
MAY_NAME_FLAGS = ("cli.py", "commands/", "runformats.py", "report/sections/", "train/recipes.py")


def test_option_names_keywords_from_python_and_flags_from_the_command_line() -> None:
    assert option("image_size", "N") == "image_size=N"
    assert option("overwrite", True) == "overwrite=True"
    assert option("n_keys", flag="-k") == "n_keys"
    with command_line_options():
        assert option("image_size", "N") == "--image-size N"
        assert option("overwrite", True) == "--overwrite"
        assert option("n_keys", 9, flag="-k") == "-k 9"
        assert option("resize", True, flag="--resize-keys") == "--resize-keys"
    assert option("overwrite", True) == "overwrite=True"  # restored after the block


def test_processes_started_from_the_command_line_name_flags_too() -> None:
    code = "from masterkey.errors import option; print(option('data_mode', 'stream'))"
    with command_line_options():
        env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}  # what a spawned worker inherits
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert child.stdout.strip() == "--data-mode stream"


def test_one_check_speaks_both_languages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "taken.parquet"
    taken.write_text("someone's file")
    with pytest.raises(MasterkeyError, match=r"pass overwrite=True to replace it"):
        check_output(taken, "bank")
    assert main(["harvest", "resnet18", "-o", str(taken)]) == 2
    assert "(pass --overwrite to replace it)" in capsys.readouterr().err
    assert taken.read_text() == "someone's file"


def _flag_texts(path: Path) -> list[tuple[int, str]]:
    """``(line, flag)`` for every flag written in a string of ``path``, except docstrings and ``flag=`` arguments
    of :func:`option` (its command-line spelling, which only the CLI shows)."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            skip.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg == "flag":
            skip.add(id(node.value))
    return [
        (node.lineno, m.group(0))
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        for m in FLAG.finditer(node.value)
    ]


def test_library_code_writes_no_flags() -> None:
    found = [
        f"{rel}:{line}: {flag}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not (rel := path.relative_to(PACKAGE).as_posix()).startswith(MAY_NAME_FLAGS)
        for line, flag in _flag_texts(path)
    ]
    assert not found, "name options with masterkey.errors.option: " + ", ".join(found)


def test_the_flag_scan_finds_a_flag(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        '"""Docs may say --overwrite."""\n'
        "def f(x):\n"
        '    option("resize", flag="--resize-keys")\n'
        '    raise ValueError(f"{x}: pass --image-size N")\n'
    )
    assert _flag_texts(module) == [(4, "--image-size")]
