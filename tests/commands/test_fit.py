"""``masterkey fit`` on a raw state_dict, whose layer names (``features.N``) do not say the stage."""

from __future__ import annotations

import json
from pathlib import Path

from masterkey.cli import main


def test_stages_the_layer_names_do_not_give_are_shown_as_unknown(models_dir: Path, tmp_path: Path, capsys) -> None:
    bank = tmp_path / "bank"
    assert main(["harvest", str(models_dir / "mobilenet_v2_imagenet.pth"), "-o", str(bank)]) == 0
    capsys.readouterr()
    args = ["fit", str(bank), "--keys", "paper8", "--resize-keys", "--reference", "none", "-o", str(tmp_path / "f")]
    assert main(args) == 0
    out = capsys.readouterr().out
    by_stage = out[out.index("by stage:") :].splitlines()
    assert by_stage[3].startswith("unknown  7,136 ") and " -1 " not in out
    assert "stage 'unknown': the layer names do not say the stage" in out
    report = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert [row["stage"] for row in report["by_stage"]] == [-1]  # JSON keeps the number readers expect
    assert "unknown  7,136" in (tmp_path / "f" / "summary.md").read_text()
