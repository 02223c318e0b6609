"""What a network with keys holds and learned: parameter counts, per-epoch statistics, per-layer summaries."""

from __future__ import annotations

import pytest

from masterkey.nn import convert_to_keys, depthwise_epoch_stats, depthwise_summary, parameter_counts

from .conftest import tiny_convnext


def test_parameter_counts_say_what_each_mode_trains_per_channel() -> None:
    per_channel, totals = {}, {}
    for mode, keys, extra in [
        ("trainable", "paper8", {}),
        ("frozen", "paper8", {}),
        ("frozen", "paper8", {"learn_scale": True}),
        ("span", "paper8", {}),
        ("scalespace", "scalespace8", {"sigma_scope": "channel"}),
    ]:
        model = tiny_convnext()
        convert_to_keys(model, keys, mode, "uniform", **extra)
        counts = parameter_counts(model)
        assert counts["depthwise_channels"] == 80
        per_channel[(mode, bool(extra))] = counts["depthwise_trainable_per_channel"]
        totals[(mode, bool(extra))] = counts
    assert per_channel[("trainable", False)] == 49 and per_channel[("frozen", False)] == 1
    assert per_channel[("frozen", True)] == 2 and per_channel[("span", False)] == 9
    # channel scope: σx, σy and b per channel, and γ for the centre-surround channels (1 in 8 with uniform)
    assert per_channel[("scalespace", True)] == pytest.approx(3 + (1 + 2 + 3 + 4) / 80)
    trainable, frozen = totals[("trainable", False)], totals[("frozen", False)]
    assert trainable["total"] - frozen["total"] == 80 * 49 - 80  # kernels gone, one offset per channel
    assert frozen["frozen_key_values"] == 80 * 49 and trainable["frozen_key_values"] == 0


def test_epoch_stats_and_summary_report_mixing_weights_and_sigmas() -> None:
    span = tiny_convnext()
    convert_to_keys(span, "paper8", "span", "uniform", key_gain=2.0)
    stats = depthwise_epoch_stats(span)
    assert stats["dw_alpha_own"] == 1.0
    assert sum(stats[f"dw_alpha_k{j}"] for j in range(1, 9)) == pytest.approx(2.0)  # one 2.0 per channel, 8 keys
    summary = depthwise_summary(span)
    assert len(summary) == 4 and len(summary[0]["mean_abs_alpha"]) == 8
    scales = tiny_convnext()
    convert_to_keys(scales, "scalespace8", "scalespace", "uniform")
    stats = depthwise_epoch_stats(scales)
    assert stats["dw_sigma_x_k5"] == pytest.approx(1.0972, abs=1e-6) and stats["dw_gamma_k7"] == pytest.approx(0.7572)
    assert "dw_gamma_k8" not in stats
    layer = depthwise_summary(scales)[3]
    assert layer["sigma_y"][3] == pytest.approx(0.3412, abs=1e-6) and layer["gamma"][6] == pytest.approx(0.7572)
    assert depthwise_epoch_stats(tiny_convnext()) == {} and depthwise_summary(tiny_convnext()) == []
