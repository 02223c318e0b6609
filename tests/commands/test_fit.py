"""``masterkey fit`` on raw state_dicts, whose layer names (``features.N``) do not say the stage: a recognised
architecture (MobileNetV2) gives the stages swap infers; an unknown one is shown as stage 'unknown'."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from masterkey.cli import main


def _fit(bank: Path, out: Path, capsys) -> str:
    capsys.readouterr()
    args = ["fit", str(bank), "--keys", "paper8", "--resize-keys", "--reference", "none", "-o", str(out)]
    assert main(args) == 0
    return capsys.readouterr().out


def test_a_recognised_state_dict_gets_the_stages_swap_infers(models_dir: Path, tmp_path: Path, capsys) -> None:
    bank = tmp_path / "bank"
    assert main(["harvest", str(models_dir / "mobilenet_v2_imagenet.pth"), "-o", str(bank)]) == 0
    out = _fit(bank, tmp_path / "f", capsys)
    assert "unknown" not in out
    report = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert [row["stage"] for row in report["by_stage"]] == [0, 1, 2, 3, 4]
    assert sum(row["n"] for row in report["by_stage"]) == 7136


def test_stages_nothing_gives_are_shown_as_unknown(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    state = {f"features.{i}.conv.weight": torch.randn(16, 1, 3, 3) for i in range(1, 4)}
    save_file(state, str(tmp_path / "mine.safetensors"))  # no architecture matches it
    bank = tmp_path / "bank"
    assert main(["harvest", str(tmp_path / "mine.safetensors"), "-o", str(bank)]) == 0
    out = _fit(bank, tmp_path / "f", capsys)
    by_stage = out[out.index("by stage:") :].splitlines()
    assert by_stage[3].startswith("unknown  48 ") and " -1 " not in out
    assert "stage 'unknown': neither the layer names" in out
    report = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert [row["stage"] for row in report["by_stage"]] == [-1]  # JSON keeps the number readers expect
    assert "unknown  48" in (tmp_path / "f" / "summary.md").read_text()
