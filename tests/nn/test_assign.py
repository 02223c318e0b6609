"""Which key each channel holds: proportions, the ``auto`` rule, fit tables and trained models."""

from __future__ import annotations

import pandas as pd
import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from masterkey.bank import open_bank
from masterkey.errors import MasterkeyError
from masterkey.fit import fit_affine, fit_bank
from masterkey.keys import load_keys
from masterkey.networks.models import read_state_dict
from masterkey.nn import (
    PUBLISHED_PROPORTIONS,
    assign_by_proportions,
    assign_from_fit_table,
    assign_from_model,
    assign_uniform,
    convert_to_keys,
    counts_from_proportions,
    is_paper_keys,
    key_layers,
    make_assigner,
    resolve_assignment,
)

from .conftest import tiny_convnext


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 500),
    p=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=12).filter(lambda v: sum(v) > 1e-6),
)
def test_counts_from_proportions_sum_and_round(n: int, p: list[float]) -> None:
    counts = counts_from_proportions(n, p)
    assert int(counts.sum()) == n
    exact = torch.tensor(p, dtype=torch.float64) * n / sum(p)
    assert bool(((counts.double() - exact).abs() < 1 + 1e-9).all())
    assert bool((counts >= 0).all())


def test_assign_by_published_proportions_is_exact_and_seeded() -> None:
    p = PUBLISHED_PROPORTIONS["convnextv2-b"]
    assert sum(p) == pytest.approx(100)
    a = assign_by_proportions(1000, p, torch.Generator().manual_seed(3))
    b = assign_by_proportions(1000, p, torch.Generator().manual_seed(3))
    c = assign_by_proportions(1000, p, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    counts = torch.bincount(a, minlength=8)
    assert counts.tolist() == [28, 37, 33, 36, 31, 63, 242, 530]  # 10 x the percentages, rounded to sum 1000
    assert torch.bincount(assign_uniform(10, 4), minlength=4).tolist() == [3, 3, 2, 2]


# ---------------------------------------------------------------------- auto: published proportions for paper8 only
def test_auto_gives_the_published_proportions_only_to_the_papers_own_keys(tmp_path) -> None:
    load_keys("paper8").save(tmp_path / "copy.safetensors")
    assert (
        is_paper_keys("paper8") and is_paper_keys("scalespace8") and is_paper_keys(str(tmp_path / "copy.safetensors"))
    )
    assert (
        not is_paper_keys("random:8:0") and not is_paper_keys("impulse") and not is_paper_keys(load_keys("random:8:1"))
    )
    assert resolve_assignment("auto", "paper8") == "convnextv2-b"
    assert resolve_assignment("auto", "random:8:0") == "uniform"
    assert resolve_assignment("hornet-t", "random:8:0") == "hornet-t"  # asked for: kept
    # The case: random:8:0 on a 16-channel layer got [0, 1, 1, 1, 0, 1, 4, 8]; now equal counts.
    conversion = convert_to_keys(tiny_convnext(), "random:8:0", "frozen")
    assert conversion.assignment == "uniform" and conversion.layers[1].channels == 16
    assert conversion.layers[1].counts == [2] * 8
    paper = convert_to_keys(tiny_convnext(), "paper8", "frozen")
    assert paper.assignment == "convnextv2-b"
    assert paper.layers[1].counts == counts_from_proportions(16, PUBLISHED_PROPORTIONS["convnextv2-b"]).tolist()
    asked = convert_to_keys(tiny_convnext(), "random:8:0", "frozen", "convnextv2-b")
    assert asked.assignment == "convnextv2-b" and asked.layers[1].counts == [0, 1, 1, 1, 0, 1, 4, 8]


def test_bad_assignment_specs() -> None:
    with pytest.raises(MasterkeyError, match="unknown"):
        make_assigner("by-magic")
    with pytest.raises(MasterkeyError, match="numbers"):
        make_assigner("proportions:a,b")
    with pytest.raises(MasterkeyError, match="non-negative"):
        make_assigner("proportions:1,-1")
    with pytest.raises(MasterkeyError, match="resolve it first"):
        make_assigner("auto")
    with pytest.raises(MasterkeyError, match="8 proportions but key set 'random:3:0' has 3 keys"):
        convert_to_keys(tiny_convnext(), "random:3:0", "frozen", "convnextv2-b")


# ---------------------------------------------------------------------- assignment from real fits and models
def test_assignment_from_a_trained_model_reproduces_its_best_fits(cifar_convnexts: list) -> None:
    weights = next(p for p in cifar_convnexts if p.name == "convnext_atto_s0_e20.safetensors")
    state, _ = read_state_dict(weights)
    keys = load_keys("paper8")
    model = timm.create_model("convnext_atto", num_classes=10, patch_size=1)
    conversion = convert_to_keys(model, keys, "frozen", f"model:{weights}")
    assert conversion.assignment == f"model:{weights}"
    layers = key_layers(model)
    assert len(layers) == 12
    for name, layer in layers:
        trained = state[f"{name}.weight"].float()
        fit = fit_affine(trained[:, 0], keys)
        assert torch.equal(layer.key_index, fit.key)
        # The frozen kernel is the best affine fit a*key+b: its residual is the fit's.
        residual = (trained - layer.kernel().detach()).flatten(1).norm(dim=1)
        torch.testing.assert_close(residual, fit.residual, rtol=1e-4, atol=1e-5)
    direct = assign_from_model(state["stages.0.blocks.0.conv_dw.weight"], keys)
    assert torch.equal(direct.key_index, layers[0][1].key_index)
    # With a learnable scale the fitted a goes into the scale, the unit key into the buffer.
    scaled = timm.create_model("convnext_atto", num_classes=10, patch_size=1)
    convert_to_keys(scaled, keys, "frozen", f"model:{weights}", learn_scale=True)
    a, b = key_layers(scaled)[0][1], layers[0][1]
    torch.testing.assert_close(a.scale, direct.scale)
    torch.testing.assert_close(a.kernel(), b.kernel())
    with pytest.raises(MasterkeyError, match=r"is \(40, 1, 7, 7\) there but \(48, 1, 7, 7\) in the model"):
        convert_to_keys(timm.create_model("convnext_femto", num_classes=10), keys, "frozen", f"model:{weights}")
    deeper = timm.create_model("convnext_atto", num_classes=10, depths=(2, 2, 7, 2))
    with pytest.raises(MasterkeyError, match=r"no weight for layer 'stages\.2\.blocks\.6\.conv_dw'"):
        convert_to_keys(deeper, keys, "frozen", f"model:{weights}")


def _model_without_keys() -> nn.Module:
    return timm.create_model("convnext_atto", num_classes=10, patch_size=1)


def test_assignment_from_a_fit_table_of_the_default_bank(tmp_path) -> None:
    bank = open_bank(None).query("source == 'convnext_atto_s1_e20'")
    fit = fit_bank(bank, "paper8")
    fit.table.to_parquet(tmp_path / "fits.parquet")
    load_keys("paper8").save(tmp_path / "keys_k7.safetensors")
    conversion = convert_to_keys(_model_without_keys(), "paper8", "frozen", f"fit:{tmp_path}")
    for info in conversion.layers:
        rows = fit.table[fit.table["layer"] == info.name]
        p = torch.bincount(torch.as_tensor(rows["key_index"].to_numpy().copy()), minlength=8).double() / len(rows)
        assert info.counts == counts_from_proportions(info.channels, p.tolist()).tolist()
        direct = assign_from_fit_table(fit.table, info.name, info.channels, 8, torch.Generator().manual_seed(0))
        assert torch.bincount(direct, minlength=8).tolist() == info.counts
    with pytest.raises(MasterkeyError, match="not with the training keys"):
        convert_to_keys(_model_without_keys(), "random:8:1", "frozen", f"fit:{tmp_path}")
    other = pd.DataFrame({"layer": ["elsewhere"], "key": [0]})  # a table written before key_index still reads
    other.to_parquet(tmp_path / "other.parquet")
    with pytest.raises(MasterkeyError, match="no fits for layer 'stages.0.blocks.0.conv_dw'"):
        convert_to_keys(_model_without_keys(), "paper8", "frozen", f"fit:{tmp_path / 'other.parquet'}")
