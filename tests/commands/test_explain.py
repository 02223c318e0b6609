"""``masterkey explain`` on 3x3 keys of a real discover run: the default fits the kernel size, a degenerate
reconstruction and fits at the bounds of their search range are said where they are shown."""

from __future__ import annotations

import json
from pathlib import Path

from masterkey.cli import main
from masterkey.scalespace import GAMMA_MAX, SIGMA_MAX, at_bound

FAST = ["--images", "camera", "--seeds", "2", "--max-patches", "2000", "--stride", "4"]


def test_3x3_keys_work_with_the_default_components_and_are_not_flagged(discover_run: Path, capsys) -> None:
    assert main(["explain", str(discover_run / "k3" / "keys.safetensors"), *FAST, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kernel_size"] == 3 and len(summary["eigenpatches"]) == 4
    assert summary["reconstruction_degenerate"] is False
    keys = next(r for r in summary["reconstruction"] if r["kind"] == "keys")
    assert 0.1 < keys["explained"] < 0.99 and keys["psnr"] < 80


def test_a_full_basis_is_flagged_degenerate(discover_run: Path, tmp_path: Path, capsys) -> None:
    paper8_3x3 = discover_run / "k3" / "baseline_keys" / "paper8.safetensors"  # 8 keys + DC = all 9 values
    assert main(["explain", str(paper8_3x3), *FAST, "-o", str(tmp_path / "ex")]) == 0
    out = capsys.readouterr().out
    assert "degenerate: any 8 independent keys + a constant span all 9 values of a 3x3 patch" in out
    summary = json.loads((tmp_path / "ex" / "summary.json").read_text())
    assert summary["reconstruction_degenerate"] is True
    assert all(r["explained"] > 0.999 for r in summary["reconstruction"] if r["kind"] != "scalespace")
    assert "**Degenerate: any 8 independent keys" in (tmp_path / "ex" / "summary.md").read_text()


def test_parameters_at_a_bound_are_named() -> None:
    assert at_bound(0.0, 1.0, float("nan")) == "σx=0"
    assert at_bound(1.2, SIGMA_MAX * 0.995, float("nan")) == "σy=max"
    assert at_bound(SIGMA_MAX, 0.01, -GAMMA_MAX) == "σx=max, σy=0, |γ|=max"
    assert at_bound(0.5, 3.5, 2.0) == ""
