"""Every ``--json`` output of every command is strict JSON (issue 23): a parser that refuses NaN / Infinity, as
``JSON.parse`` and ``jq`` do, reads it. Commands that compute numbers which can be NaN (discover's objectives,
fits of degenerate groups) are run too, so a NaN written bare would fail here."""

from __future__ import annotations

import json

import pytest

from masterkey.jsonio import NONFINITE_FIELD

from .conftest import run_cli

M = "{ws}/model.safetensors"
TINY_TRAIN = [
    *("train", "--model", "convnext_atto", "--model-kwargs", "num_classes=10,patch_size=1", "--data", "{ws}/data"),
    *("--epochs", "1", "--batch-size", "4", "--eval-batch-size", "8", "--threads", "1", "-o", "{tmp}/train"),
]
COMMANDS = {
    "bank-info": ["bank", "info", "{ws}/bank"],
    "bank-query": ["bank", "query", "{ws}/bank", "stage >= 2 and channel < 8"],
    "bank-merge": ["bank", "merge", "{ws}/bank", "-o", "{tmp}/merged"],
    "harvest": ["harvest", M, "-o", "{tmp}/bank"],
    "keys-show": ["keys", "show", "scalespace8"],
    "fit": ["fit", "{ws}/bank", "--keys", "paper8"],
    "fit-query": ["fit", "{ws}/bank", "--query", "layer_index == 0", "--keys", "random:4:1"],
    "discover": [
        *("discover", "{ws}/bank", "-k", "2", "--candidates", "16", "--rounds", "1", "--ae-steps", "300"),
        *("--baselines", "kmeans,random", "--compare-k", "2", "--random-seeds", "2", "-o", "{tmp}/disc"),
    ],
    "swap": ["swap", "--weights", M, "--keys", "paper8", "--keys", "random:8", "--data", "{ws}/data/test"],
    "explain": ["explain", "--images", "camera", "--max-patches", "500", "--seeds", "2", "--stride", "8"],
    "train": TINY_TRAIN,
    "cache-info": ["cache", "info"],
}


def strict_loads(text: str) -> object:
    def refuse(token: str) -> None:
        raise AssertionError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _nonfinite_records(value: object) -> list[dict]:
    if isinstance(value, dict):
        own = [value[NONFINITE_FIELD]] if NONFINITE_FIELD in value else []
        return own + [r for v in value.values() for r in _nonfinite_records(v)]
    if isinstance(value, list):
        return [r for v in value for r in _nonfinite_records(v)]
    return []


@pytest.mark.parametrize("argv", list(COMMANDS.values()), ids=list(COMMANDS))
def test_every_json_output_is_strict(workspace, tmp_path, capsys, one_thread, argv):
    args = [a.format(ws=workspace, tmp=tmp_path) for a in argv] + ["--json", "--no-progress"]
    outcome = run_cli(capsys, args)
    assert outcome.code == 0, outcome.err
    document = strict_loads(outcome.out)
    assert isinstance(document, dict) and document
    for record in _nonfinite_records(document):  # every null that stands for NaN / Infinity says so
        assert record and all(v in ("NaN", "Infinity", "-Infinity") for v in record.values())
