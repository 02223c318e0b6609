"""One stage label: bank, fit and swap tables of MobileNetV2 join on (layer, stage), every row matching.

torchvision's ``features.N`` names do not say the stage; harvest takes it from the network's strides (as swap
does), and from the architecture a raw state_dict loads into, so the stage is the same whichever way the weights
are given."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from masterkey.bank import open_bank
from masterkey.cli import main


@pytest.mark.slow  # about 80 s on 2 CPU cores: 17 one-layer swaps evaluated
def test_bank_fit_and_swap_join_on_layer_and_stage(shared: Path, tmp_path: Path, capsys) -> None:
    weights = shared / "models" / "mobilenet_v2_imagenet.pth"
    assert main(["harvest", f"torchvision:mobilenet_v2@{weights}", "-o", str(tmp_path / "bank")]) == 0
    assert main(["harvest", str(weights), "-o", str(tmp_path / "raw")]) == 0  # a raw state_dict
    fit = ["fit", str(tmp_path / "bank"), "--keys", "paper8", "--resize-keys", "--reference", "none"]
    assert main([*fit, "-o", str(tmp_path / "fit")]) == 0
    swap = ["swap", "--weights", str(weights), "--keys", "paper8", "--resize-keys", "--max-images", "10"]
    swap += ["--data", str(shared / "data" / "imagenet-samples" / "val"), "--sensitivity", "layer"]
    assert main([*swap, "-o", str(tmp_path / "swap")]) == 0
    capsys.readouterr()

    def layers(table: pd.DataFrame) -> pd.DataFrame:
        return table[["layer", "stage"]].drop_duplicates().reset_index(drop=True)

    bank = layers(open_bank(str(tmp_path / "bank")).metadata)
    raw = layers(open_bank(str(tmp_path / "raw")).metadata)
    fits = layers(pd.read_parquet(tmp_path / "fit" / "fits.parquet"))
    swapped = layers(pd.read_csv(tmp_path / "swap" / "sensitivity.csv").rename(columns={"name": "layer"}))
    assert len(bank) == 17 and sorted(bank["stage"].unique()) == [0, 1, 2, 3, 4]
    # The stages swap infers from the strides: a new stage at every strided depthwise conv after the first.
    assert bank.groupby("stage")["layer"].first().tolist() == [
        "features.1.conv.0.0",
        "features.2.conv.1.0",
        "features.4.conv.1.0",
        "features.7.conv.1.0",
        "features.14.conv.1.0",
    ]
    for other in (raw, fits, swapped):
        joined = bank.merge(other, on=["layer", "stage"], how="outer", indicator=True)
        assert (joined["_merge"] == "both").all(), joined[joined["_merge"] != "both"]
    per_stage = pd.read_csv(tmp_path / "swap" / "per_stage.csv")
    first = bank.groupby("stage")["layer"].first()
    assert dict(zip(per_stage["stage"], per_stage["first_layer"], strict=True)) == first.to_dict()
    summary = pd.read_json(tmp_path / "fit" / "summary.json", typ="series")
    assert sorted(row["stage"] for row in summary["by_stage"]) == [0, 1, 2, 3, 4]
