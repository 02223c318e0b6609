from __future__ import annotations

import numpy as np
import pytest
import torch

from masterkey.discover import AutoencoderConfig, DiscoverConfig, leave_one_source_out
from masterkey.errors import MasterkeyError
from masterkey.normalize import center_norm


def test_shared_keys_transfer_and_foreign_keys_do_not(make_filters, make_keys) -> None:
    shared_keys = make_keys(4, 5, seed=21)
    foreign_keys = make_keys(4, 5, seed=22)
    parts = [make_filters(shared_keys, 300, seed=1)[0], make_filters(shared_keys, 300, seed=2)[0]]
    parts.append(make_filters(foreign_keys, 300, seed=3)[0])
    filters = center_norm(torch.cat(parts))
    sources = np.repeat(["a", "b", "odd"], 300)
    config = DiscoverConfig(
        n_keys=4, n_candidates=16, rounds=1, autoencoder=AutoencoderConfig(hidden=32, steps=200, batch_size=128)
    )
    table = leave_one_source_out(filters, sources, config, progress=False)
    assert list(table.columns[:4]) == ["keys_from", "fitted_to", "objective", "own_objective"]
    assert len(table) == 3 * 3  # per target: all-but-target, and each of the two other sources
    pair = table.set_index(["keys_from", "fitted_to"])
    for name in ("a", "b", "odd"):
        assert pair.loc[(f"all but {name}", name), "own_objective"] > 0.9
    # Keys of one source explain another source made from the same keys as well as that source's own keys ...
    for src, dst in (("a", "b"), ("b", "a")):
        assert pair.loc[(src, dst), "objective"] > pair.loc[(src, dst), "own_objective"] - 0.03
        assert pair.loc[(src, dst), "kmeans_objective"] > 0.9
    # ... but not a source made from other keys, nor the other way round.
    for src, dst in (("a", "odd"), ("odd", "a"), ("all but odd", "odd")):
        assert pair.loc[(src, dst), "objective"] < pair.loc[(src, dst), "own_objective"] - 0.5
    # Held-out keys from a mixture of both kinds explain each kind partly: between foreign and own.
    mixed = pair.loc[("all but b", "b"), "objective"]
    assert pair.loc[("odd", "b"), "objective"] < mixed < pair.loc[("all but b", "b"), "own_objective"]


def test_two_sources_give_pairwise_rows_only(make_filters, make_keys) -> None:
    filters = center_norm(make_filters(make_keys(2, 3, seed=5), 200, seed=5)[0])
    config = DiscoverConfig(
        n_keys=2, n_candidates=8, rounds=1, autoencoder=AutoencoderConfig(hidden=16, steps=150, batch_size=64)
    )
    table = leave_one_source_out(filters, np.repeat(["p", "q"], 100), config, progress=False)
    assert table[["keys_from", "fitted_to"]].values.tolist() == [["q", "p"], ["p", "q"]]


def test_needs_two_sources() -> None:
    x = center_norm(torch.randn(20, 3, 3))
    with pytest.raises(MasterkeyError, match="at least two sources"):
        leave_one_source_out(x, ["a"] * 20, DiscoverConfig(n_keys=2, n_candidates=4), progress=False)
