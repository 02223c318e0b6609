"""explain's figures: the reconstruction panels share one grey scale, so a reconstruction is as bright as the
original wherever it matches it."""

from __future__ import annotations

import numpy as np

from masterkey.explain.run import explain_figures, explain_keys


def test_the_reconstruction_panels_share_one_grey_scale() -> None:
    expl = explain_keys("paper8", images="camera", n_components=8, stride=4, seeds=range(2))
    fig = explain_figures(expl)["reconstruction"]
    shown = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(shown) == 5  # the crop, paper8, the scale-space models, random keys, PCA
    assert {(im.norm.vmin, im.norm.vmax) for im in shown} == {(0.0, 1.0)}
    assert "one grey scale" in fig._suptitle.get_text()
    original, *recon = (np.asarray(im.get_array(), dtype=float) for im in shown)
    pca = recon[-1]  # explains most of the crop: its brightness matches the original's, percentile by percentile
    for q in (10, 50, 90):
        assert abs(np.percentile(pca, q) - np.percentile(original, q)) < 0.05
    assert all(abs(r.mean() - original.mean()) < 0.05 for r in recon)  # least squares keeps each tile's mean
