import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.bank import open_bank
from masterkey.errors import MasterkeyError
from masterkey.fit import fit_affine, fit_bank, fit_report, summarize
from masterkey.keys import KeySet, load_keys


def lstsq_fit(y: np.ndarray, key: np.ndarray) -> tuple[float, float, float]:
    """a, b and residual norm of y ≈ a*key + b by numpy.linalg.lstsq with design matrix [key, 1]."""
    design = np.stack([key, np.ones_like(key)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(a), float(b), float(np.linalg.norm(y - design @ np.array([a, b])))


@st.composite
def banks_and_keys(draw):
    k = draw(st.sampled_from([3, 5, 7]))
    n_keys = draw(st.integers(1, 12))
    n = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n_keys, k * k))
    if draw(st.booleans()) and n_keys > 1:
        keys[1] = -keys[0]  # a key and its negative: an exact tie in |a|
    scale = draw(st.sampled_from([1e-2, 1.0, 50.0]))
    filters = rng.standard_normal((n, k * k)) * scale
    kind = draw(st.sampled_from(["random", "exact", "constant", "mixed"]))
    if kind in ("exact", "mixed"):
        # filters that are exactly a*key + b, with negative a allowed
        kn = KeySet("k", torch.from_numpy(keys.reshape(n_keys, k, k))).keys.reshape(n_keys, -1).double().numpy()
        idx = rng.integers(0, n_keys, n)
        a = rng.uniform(-5, 5, n)
        b = rng.uniform(-3, 3, n)
        exact = a[:, None] * kn[idx] + b[:, None]
        filters = exact if kind == "exact" else np.where(rng.random((n, 1)) < 0.5, exact, filters)
    if kind in ("constant", "mixed"):
        filters[: max(1, n // 3)] = rng.uniform(-2, 2, (max(1, n // 3), 1))
    return filters.astype(np.float32), keys.astype(np.float32), k


@settings(max_examples=80, deadline=None)
@given(banks_and_keys(), st.sampled_from([1, 7, 4096]))
def test_fit_agrees_with_lstsq(data, chunk_size):
    filters, keys, k = data
    keyset = KeySet("k", torch.from_numpy(keys.reshape(-1, k, k)))
    fit = fit_affine(torch.from_numpy(filters), keyset, chunk_size=chunk_size)
    kn = keyset.keys.reshape(len(keyset), -1).double().numpy()
    for i, y in enumerate(filters.astype(np.float64)):
        tol = 1e-5 * max(1.0, float(np.abs(y).max()))
        a, b, res = lstsq_fit(y, kn[fit.key[i]])
        assert abs(float(fit.a[i]) - a) <= tol
        assert abs(float(fit.b[i]) - b) <= tol
        assert abs(float(fit.residual[i]) - res) <= tol
        # the chosen key is (one of) the best: no key gives a smaller residual
        best = min(lstsq_fit(y, key)[2] for key in kn)
        assert float(fit.residual[i]) <= best + tol
        centred = y - y.mean()
        energy = float(centred @ centred)
        scale = max(1.0, float(np.abs(y).max()))
        if energy > 1e-6 * scale**2:
            # float32 centring errs by ~eps * scale per value, so cos² errs by ~sqrt(d) * eps * scale / |centred|
            assert abs(float(fit.cos2[i]) - a * a / energy) <= 1e-4 + 1e-5 * scale / energy**0.5
        assert 0.0 <= float(fit.cos2[i]) <= 1.0


def test_ties_go_to_the_lower_key_index_and_negative_a():
    key = torch.randn(1, 3, 3)
    keys = torch.cat([key, -key, key])
    y = (-2.5 * KeySet("k", key).keys + 4.0).reshape(1, 3, 3)
    fit = fit_affine(y, keys)
    assert int(fit.key[0]) == 0
    assert float(fit.a[0]) == pytest.approx(-2.5, abs=1e-5)
    assert float(fit.b[0]) == pytest.approx(4.0, abs=1e-5)
    assert float(fit.cos2[0]) == pytest.approx(1.0, abs=1e-6)


def test_constant_filter_is_fitted_exactly_by_b():
    fit = fit_affine(torch.full((2, 5, 5), 0.7), load_keys("paper8").resized(5))
    assert torch.allclose(fit.a, torch.zeros(2), atol=1e-6)
    assert torch.allclose(fit.b, torch.full((2,), 0.7))
    assert torch.allclose(fit.residual, torch.zeros(2), atol=1e-6)
    assert torch.equal(fit.cos2, torch.ones(2))


def test_float64_and_chunking_give_the_same_assignment():
    gen = torch.Generator().manual_seed(0)
    filters = torch.randn(3000, 7, 7, generator=gen)
    keys = load_keys("random:20:1", kernel_size=7)
    f32 = fit_affine(filters, keys, chunk_size=512)
    f64 = fit_affine(filters, keys, dtype=torch.float64)
    assert (f32.key == f64.key).float().mean() > 0.999
    assert torch.allclose(f32.cos2.double(), f64.cos2, atol=1e-5)


def test_paper8_explains_real_filters_better_than_random_keys():
    bank = open_bank(None).query("kernel_size == 3")
    real = fit_bank(bank, "paper8", resize=True)
    rand = fit_bank(bank, "random:8:0", resize=True)
    assert len(real.table) == 9760 - bank.excluded_counts()["zero"]
    assert real.table["cos2"].mean() > rand.table["cos2"].mean() + 0.1
    summary = summarize(real.table, 8, ["source"])
    assert set(summary["source"]) == {"mobilenet_v2_imagenet", "efficientnet_lite0_imagenet"}
    assert np.allclose(summary[[f"p_{i}" for i in range(1, 9)]].sum(axis=1), 1.0)
    report = fit_report(real, rand)
    assert report["overall"]["ref_mean_cos2"] < report["overall"]["mean_cos2"]
    assert report["n_fitted"] == len(real.table)


def test_excluded_filters_are_counted_not_fitted():
    bank = open_bank(None).query("source == 'efficientnet_lite0_imagenet'")
    fit = fit_bank(bank, "paper8", resize=True)
    assert fit.excluded["zero"] == 65
    assert len(fit.table) == len(bank) - 65
    assert np.isfinite(fit.table["cos2"]).all()


def test_kernel_size_mismatch_is_a_clear_error():
    bank = open_bank(None).query("kernel_size == 3")
    with pytest.raises(MasterkeyError, match=r"kernel-size mismatch.*3x3.*7x7.*resize=True"):
        fit_bank(bank, "paper8")
    mixed = fit_bank(open_bank(None).query("kernel_size in [3, 7]"), "paper8")
    assert mixed.skipped_kernels == [3] and list(mixed.keysets) == [7]


def test_non_finite_filters_give_nan_fits_not_errors():
    filters = torch.randn(4, 3, 3)
    filters[1, 0, 0] = float("nan")
    filters[2, 1, 1] = float("inf")
    fit = fit_affine(filters, load_keys("random:5:0", kernel_size=3))
    assert fit.key.min() >= 0 and fit.key.max() < 5
    assert torch.isfinite(fit.cos2[[0, 3]]).all() and not torch.isfinite(fit.a[1])
    # What the docstring promises: the last key, nothing finite to mistake for a fit (a NaN cos² was once 1.0).
    assert fit.key[[1, 2]].tolist() == [4, 4]
    assert torch.isnan(fit.cos2[[1, 2]]).all() and torch.isnan(fit.residual[[1, 2]]).all()
    assert not torch.isfinite(fit.a[[1, 2]]).any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_agrees_with_the_cpu():
    bank = open_bank(None).query("kernel_size == 7")
    filters = bank.filters(7)
    keys = load_keys("paper8")
    on_cpu = fit_affine(filters, keys, chunk_size=1000)
    on_gpu = fit_affine(filters, keys, chunk_size=1000, device="cuda")
    assert on_gpu.key.device.type == "cpu"  # results come back to the host
    same = on_cpu.key == on_gpu.key
    assert float(same.double().mean()) > 0.999  # only near-ties may differ
    assert torch.allclose(on_cpu.cos2, on_gpu.cos2, atol=1e-4, equal_nan=True)
    assert torch.allclose(on_cpu.a[same], on_gpu.a[same], rtol=1e-3, atol=1e-5)
    assert torch.allclose(on_cpu.b[same], on_gpu.b[same], rtol=1e-3, atol=1e-5)


def test_chunk_size_follows_the_device():
    from masterkey.fit import FIT_CHUNK, FIT_CHUNK_CUDA, fit_chunk_size

    assert fit_chunk_size(None) == fit_chunk_size("cpu") == FIT_CHUNK
    assert fit_chunk_size("cuda") == fit_chunk_size(torch.device("cuda", 0)) == FIT_CHUNK_CUDA > FIT_CHUNK
    filters = torch.randn(3000, 3, 3, generator=torch.Generator().manual_seed(0))
    keys = load_keys("random:4:0", kernel_size=3)
    whole, chunked = fit_affine(filters, keys), fit_affine(filters, keys, chunk_size=700)
    assert torch.equal(whole.key, chunked.key) and torch.allclose(whole.a, chunked.a)
