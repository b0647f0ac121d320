"""benchmarks/ablation.py: the locally averaged features and one variant trained and tested end to end.

The harness's figures are in docs/ablation.md; here it runs on random features shaped like lite0's, small
enough for CI.
"""

from dataclasses import replace

import pytest
import torch

from .conftest import load_script

ablation = load_script("benchmarks/ablation.py")
CHANNELS = {"blocks.1": 24, "blocks.2": 40, "blocks.4": 112, "blocks.6": 320}
STRIDES = {"blocks.1": 4, "blocks.2": 8, "blocks.4": 16, "blocks.6": 32}
SIDE = 64


def test_aggregate_averages_each_neighbourhood_over_the_positions_that_exist() -> None:
    features = torch.zeros(1, 2, 5, 5)
    features[0, 0, 2, 2] = 9.0  # an impulse in the middle of channel 0
    features[0, 1, 0, 0] = 4.0  # and one in the corner of channel 1

    averaged = ablation.aggregate(features, 3)

    assert averaged.shape == features.shape
    assert torch.equal(ablation.aggregate(features, 1), features)
    # The middle impulse spreads as 9 / 9 over its 3 x 3 neighbourhood and nowhere else.
    assert torch.allclose(averaged[0, 0, 1:4, 1:4], torch.ones(3, 3))
    assert averaged[0, 0].sum() == pytest.approx(9.0)
    # A corner position has 4 neighbours inside the grid: padding is not counted.
    assert averaged[0, 1, 0, 0] == pytest.approx(1.0)
    assert averaged[0, 1, 1, 1] == pytest.approx(4.0 / 9.0)
    with pytest.raises(ValueError, match="must be odd"):
        ablation.aggregate(features, 2)


def test_feature_window_applies_only_to_the_named_views_and_levels() -> None:
    variant = ablation.Variant(
        "w",
        layers=ablation.LEVELS,
        feature_window=3,
        feature_window_views=("high",),
        feature_window_levels=("blocks.4", "blocks.6"),
    )
    assert ablation.feature_window(variant, "high", "blocks.4") == 3
    assert ablation.feature_window(variant, "high", "blocks.2") == 1
    assert ablation.feature_window(variant, "low", "blocks.6") == 1
    everywhere = replace(variant, feature_window_views=("high", "low"), feature_window_levels=())
    assert {ablation.feature_window(everywhere, v, lvl) for v in ("high", "low") for lvl in ablation.LEVELS} == {3}


def _fake_split(num_images: int, generator: torch.Generator, defective: bool) -> dict:
    """Random features of every cached view and level, with labels and square defect masks."""
    features = {}
    for level, channels in CHANNELS.items():
        for view, factor in (("high", 1), *((f"low{f}", f) for f in ablation.FACTORS)):
            side = max(SIDE // (factor * STRIDES[level]), 1)
            features[f"{view}/{level}"] = torch.rand(num_images, channels, side, side, generator=generator)
    labels = torch.zeros(num_images, dtype=torch.long)
    masks = torch.zeros(num_images, SIDE, SIDE, dtype=torch.bool)
    if defective:
        labels[num_images // 2 :] = 1
        masks[num_images // 2 :, 16:40, 16:40] = True
        # The defects' high-resolution features move, so a trained model has something to find.
        for level in ablation.LEVELS:
            features[f"high/{level}"][num_images // 2 :] += 2.0
    return {"features": features, "labels": labels, "masks": masks}


def test_a_variant_trains_on_cached_features_and_reports_every_metric() -> None:
    generator = torch.Generator().manual_seed(0)
    data = {"train": _fake_split(8, generator, defective=False), "test": _fake_split(6, generator, defective=True)}
    base = ablation.Variant(
        "tiny defaults",
        layers=ablation.LEVELS,
        misalignment="standardised_rms_cosine",
        hidden_channels=8,
        prior_channels=2,
        score_reductions=ablation.SCORES,
        epochs=(1, 2),
    )

    plain = ablation.run_variant(data, base, seed=0, size=(SIDE, SIDE))
    averaged = ablation.run_variant(data, replace(base, feature_window=3), seed=0, size=(SIDE, SIDE))

    for results in (plain, averaged):
        assert set(results) == {1, 2, "train_s"}
        for epoch in (1, 2):
            metrics = results[epoch]
            assert set(metrics) == {
                "train_loss",
                "pixel_AUROC",
                "pixel_AUPRO",
                "image_AUROC/max",
                "image_AUROC/topk_mean",
            }
            assert all(0.0 <= metrics[key] <= 1.0 for key in metrics if key != "train_loss")
        # Defects whose features all moved by 2 standard-ish units are found by any trained variant.
        assert results[2]["image_AUROC/topk_mean"] == 1.0
    # Averaging changes what the heads see and are trained on.
    assert plain[2]["train_loss"] != pytest.approx(averaged[2]["train_loss"])
