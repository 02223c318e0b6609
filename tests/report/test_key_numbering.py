"""One key numbering: every table that names one key per row has ``key_index`` (from 0, a position in the key set)
and ``key_number`` (from 1, what the terminal, the report and key labels show). Fit, train and explain runs of the
same keys (paper8) read side by side name each key the same way; files written before still read.

Swap's files name key sets, never single keys, so they have no key column to agree on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from masterkey.keys import KeySet, load_keys
from masterkey.report.runs import load_run
from masterkey.runformats import KEY_COLUMNS


def test_fit_train_and_explain_name_each_key_alike(run_dirs, tmp_path: Path) -> None:
    paper8 = load_keys("paper8")
    labels = paper8.key_labels()
    fits = pd.read_parquet(run_dirs["fit"] / "fits.parquet")
    assert "key" not in fits and set(KEY_COLUMNS) <= set(fits)
    assert (fits["key_number"] == fits["key_index"] + 1).all()
    assert (fits["key_label"] == np.asarray(labels, dtype=object)[fits["key_index"]]).all()
    assert fits["key_label"].str.split(" ").str[0].astype(int).tolist() == fits["key_number"].tolist()
    # key_index is a position in the run's own key file: the key that explains the filter best.
    keys = KeySet.load(run_dirs["fit"] / "keys_k7.safetensors").keys.reshape(8, -1).double()
    from masterkey.bank import open_bank

    bank = open_bank("default").query("source == 'convnext_atto_s0_e20' and layer_index == 0")
    filters = bank.filters(7).reshape(len(bank), -1).double()
    filters = filters - filters.mean(dim=1, keepdim=True)
    best = (filters @ keys.T).abs().argmax(dim=1).numpy()
    first = fits[(fits["source"] == "convnext_atto_s0_e20") & (fits["layer_index"] == 0)].sort_values("index")
    assert first["key_index"].tolist() == best.tolist()

    by_number = dict(zip(fits["key_number"], fits["key_label"], strict=False))
    train = json.loads((run_dirs["train"] / "summary.json").read_text())
    used = pd.DataFrame(train["keys_used"])
    assert used["key_index"].tolist() == list(range(8)) and (used["key_number"] == used["key_index"] + 1).all()
    assert used["channels"].tolist() == train["key_counts"]  # key_counts is indexed by key_index
    for table in (used.rename(columns={"key_label": "label"}), pd.read_csv(run_dirs["explain"] / "scalespace.csv")):
        assert (table["key_number"] == table["key_index"] + 1).all()
        assert all(by_number[n] == label for n, label in zip(table["key_number"], table["label"], strict=True))

    # Runs written before: fits.parquet's 0-based 'key', explain's 1-based 'key', read as the same numbers.
    old_fit = Path(shutil.copytree(run_dirs["fit"], tmp_path / "fit"))
    fits.drop(columns=["key_index", "key_number"]).assign(key=fits["key_index"]).to_parquet(old_fit / "fits.parquet")
    old_explain = Path(shutil.copytree(run_dirs["explain"], tmp_path / "explain"))
    for name in ("scalespace.csv", "eigenpatches.csv"):
        table = pd.read_csv(old_explain / name)
        table.drop(columns=["key_index", "key_number"]).assign(key=table["key_number"]).to_csv(old_explain / name)
    for new, old in ((run_dirs["fit"], old_fit), (run_dirs["explain"], old_explain)):
        fresh, older = load_run(new), load_run(old)
        assert any("an older" in n for n in older.run.notes) and not any("an older" in n for n in fresh.run.notes)
        for field in ("fits", "scalespace", "eigenpatches"):
            if hasattr(fresh, field):
                a, b = getattr(fresh, field), getattr(older, field)
                assert a["key_index"].tolist() == b["key_index"].tolist()
                assert a["key_number"].tolist() == b["key_number"].tolist()
