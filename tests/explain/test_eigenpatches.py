"""Eigen-patches of natural images and patch-by-patch reconstruction (masterkey.explain.eigenpatches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.errors import MasterkeyError
from masterkey.explain.eigenpatches import (
    BUILTIN_IMAGES,
    abs_cos_matrix,
    builtin_image,
    compare_with_keys,
    eigen_patches,
    extract_patches,
    gaussian_window,
    load_gray_images,
    pca_basis,
    random_reference,
    reconstruct,
    reconstruction_scores,
    reconstruction_table,
    summarize_reconstruction,
)
from masterkey.keys import load_keys
from masterkey.stats import mean_ci95


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return builtin_image("camera")


@pytest.fixture(scope="module")
def camera_eigen(camera):
    return eigen_patches({"camera": camera}, patch_size=7, n_components=12, stride=3, max_patches=20_000)


def test_builtin_images_are_grayscale_in_unit_range() -> None:
    images = load_gray_images("camera,china")
    assert list(images) == ["camera", "china"]
    for image in images.values():
        assert image.ndim == 2 and image.dtype == np.float64
        assert 0 <= image.min() < 0.2 and 0.8 < image.max() <= 1
    assert "flower" in BUILTIN_IMAGES


def test_image_folder_is_read_recursively(tmp_path) -> None:
    from PIL import Image

    (tmp_path / "a").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "y.jpg")
    images = load_gray_images(tmp_path)
    assert sorted(images) == ["a/x.png", "y.jpg"]
    assert images["a/x.png"].shape == (20, 30)
    assert load_gray_images(tmp_path, max_images=1).keys() <= images.keys()
    single = load_gray_images(tmp_path / "y.jpg")
    assert list(single) == ["y.jpg"] and single["y.jpg"].shape == (16, 16)


def test_bad_image_sources_raise(tmp_path) -> None:
    with pytest.raises(MasterkeyError, match="no images found"):
        load_gray_images(tmp_path)
    with pytest.raises(MasterkeyError, match="not a built-in image"):
        load_gray_images("no_such_image")
    with pytest.raises(MasterkeyError, match="not a built-in image"):
        load_gray_images("download_all")  # a skimage.data function, but not an image that ships offline
    with pytest.raises(MasterkeyError, match="no such image file or folder"):
        load_gray_images(str(tmp_path / "missing" / "dir"))
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(MasterkeyError, match="cannot decode image"):
        load_gray_images(tmp_path / "bad.png")


@given(st.integers(3, 11), st.floats(0.3, 3.0))
def test_gaussian_window_is_normalised_and_symmetric(size: int, sigma: float) -> None:
    w = gaussian_window(size, sigma)
    assert w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])


def test_extract_patches_counts_and_values() -> None:
    image = np.arange(100, dtype=float).reshape(10, 10)
    patches = extract_patches(image, 3, stride=2)
    assert patches.shape == (16, 3, 3)  # positions 0, 2, 4, 6 in each direction
    np.testing.assert_array_equal(patches[1], image[0:3, 2:5])
    with pytest.raises(MasterkeyError, match="smaller"):
        extract_patches(image, 11)


def test_eigen_patches_are_the_principal_axes_of_windowed_patches(camera) -> None:
    """Compare with an independent eigendecomposition of the windowed-patch covariance."""
    crop = camera[100:200, 100:200]
    eigen = eigen_patches({"crop": crop}, patch_size=5, n_components=6, window_sigma=1.0, stride=1, max_patches=10**9)
    x = extract_patches(crop, 5).reshape(-1, 25) * gaussian_window(5, 1.0).reshape(-1)
    x = x - x.mean(0)
    values, vectors = np.linalg.eigh(x.T @ x)
    top = vectors[:, ::-1][:, :6].T
    cos = np.abs((eigen.components.reshape(6, -1) * top).sum(1))
    np.testing.assert_allclose(cos, 1, atol=1e-6)
    np.testing.assert_allclose(eigen.explained_variance_ratio, values[::-1][:6] / values.sum(), rtol=1e-6)
    assert eigen.n_patches == len(x)
    gram = eigen.components.reshape(6, -1) @ eigen.components.reshape(6, -1).T
    np.testing.assert_allclose(gram, np.eye(6), atol=1e-10)


def test_abs_cos_matrix_is_affine_and_sign_invariant() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 7, 7))
    np.testing.assert_allclose(np.diag(abs_cos_matrix(a, -3 * a + 5)), 1, atol=1e-12)
    assert abs_cos_matrix(np.ones((1, 9)), a.reshape(4, 49)[:, :9]).tolist() == [[0, 0, 0, 0]]


def test_derivative_keys_resemble_eigen_patches_of_a_real_image(camera_eigen) -> None:
    """The paper's claim on the cameraman: keys 5-8 have close eigen-patches; random keys do not."""
    table = compare_with_keys(camera_eigen, load_keys("paper8"))
    assert list(table.columns) == [
        "key_index",
        "key_number",
        "label",
        "best_component",
        "abs_cos",
        "component_variance",
    ]
    assert (table["abs_cos"].iloc[4:] > 0.75).all(), table
    random_best = random_reference(camera_eigen, 8, seeds=range(4))["mean_best_abs_cos"]
    assert random_best.max() < 0.45 < table["abs_cos"].mean()
    # Key 8 (a Gaussian blob) is closest to the first eigen-patch (the window: the patch's mean intensity).
    assert table["best_component"].iloc[7] == 1


def test_compare_rejects_mismatched_sizes(camera_eigen) -> None:
    with pytest.raises(MasterkeyError, match="3x3"):
        compare_with_keys(camera_eigen, load_keys("paper8", kernel_size=3, resize=True))


def test_reconstruction_with_a_complete_basis_is_exact(camera) -> None:
    image = camera[:50, :64]
    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((25, 25)))[0].T.reshape(25, 5, 5)
    approx = reconstruct(image, basis)
    assert approx.shape == (50, 60)  # cropped to whole tiles
    np.testing.assert_allclose(approx, image[:50, :60], atol=1e-10)
    assert reconstruction_scores(image, approx, 5)["explained"] == pytest.approx(1.0)


def test_reconstruction_with_dc_only_keeps_tile_means(camera) -> None:
    image = camera[:49, :49]
    approx = reconstruct(image, np.zeros((0, 7, 7)))
    tile_means = image.reshape(7, 7, 7, 7).mean(axis=(1, 3))
    np.testing.assert_allclose(approx.reshape(7, 7, 7, 7).mean(axis=(1, 3)), tile_means)
    np.testing.assert_allclose(approx.reshape(7, 7, 7, 7).std(axis=(1, 3)), 0, atol=1e-12)
    assert reconstruction_scores(image, approx, 7)["explained"] == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 6), st.integers(0, 1000))
def test_more_basis_vectors_never_explain_less(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.random((35, 35))
    basis = rng.standard_normal((n + 1, 5, 5))
    few = reconstruction_scores(image, reconstruct(image, basis[:n]), 5)["explained"]
    more = reconstruction_scores(image, reconstruct(image, basis), 5)["explained"]
    assert 0 <= few <= more + 1e-12 <= 1 + 1e-12


def test_keys_reconstruct_better_than_random_and_pca_bounds_both(camera) -> None:
    table = reconstruction_table({"camera": camera[128:384, 128:384]}, load_keys("paper8"), seeds=range(3))
    assert set(table["kind"]) == {"keys", "random", "pca"}
    assert len(table) == 5
    explained = table.groupby("kind")["explained"].max()
    assert table.loc[table["kind"] == "random", "explained"].max() < explained["keys"] < explained["pca"]
    summary = summarize_reconstruction(table)
    random_row = summary[summary["kind"] == "random"].iloc[0]
    assert random_row["n_seeds"] == 3 and random_row["explained_ci95"] > 0
    pca = pca_basis(camera, 7, 8)
    assert pca.shape == (8, 7, 7)


def test_mean_ci95() -> None:
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302653 * 1 / np.sqrt(3), rel=1e-5)
    assert np.isnan(mean_ci95([1.0])[1])


def test_eigen_patches_as_keyset(camera_eigen) -> None:
    keyset = camera_eigen.as_keyset()
    assert len(keyset) == 12 and keyset.kernel_size == 7
    assert keyset.key_labels()[0] == "PC1"
    assert torch.allclose(keyset.keys.reshape(12, -1).mean(1), torch.zeros(12), atol=1e-6)
