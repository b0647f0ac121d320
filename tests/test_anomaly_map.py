"""Anomaly map, image score and alignment loss on hand-made features."""

import pytest
import torch
from kornia.filters import GaussianBlur2d
from torch.nn import functional as F  # noqa: N812

from anomalib_hlgfa import AlignmentLoss, AnomalyMapGenerator
from anomalib_hlgfa.anomaly_map import misalignment_map, rms_cosine_map


def _features_with_one_mismatch(row: int, col: int) -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.ones(1, 4, 8, 8)
    prediction = target.clone()
    prediction[0, :, row, col] = -1  # opposite direction: cosine distance 2 at this cell only
    return prediction, target


def test_map_peaks_at_the_misaligned_cell_and_has_input_size() -> None:
    prediction, target = _features_with_one_mismatch(row=2, col=5)
    anomaly_map, score = AnomalyMapGenerator(sigma=2)([prediction], [target], (64, 64))
    assert anomaly_map.shape == (1, 1, 64, 64)
    peak_row, peak_col = divmod(int(anomaly_map.flatten().argmax()), 64)
    # Cell (2, 5) of an 8 x 8 grid covers pixels rows 16-23, columns 40-47.
    assert 16 <= peak_row <= 23
    assert 40 <= peak_col <= 47
    assert score.item() == pytest.approx(anomaly_map.max().item())


@pytest.mark.parametrize(
    ("sigma", "sizes", "height", "width"),
    [(4.0, [(8, 6), (4, 3)], 64, 48), (1.5, [(3, 5)], 9, 20), (0.0, [(5, 7), (2, 2)], 30, 31)],
)
def test_fusion_is_bilinear_upsampling_mean_and_kornias_reflect_gaussian(
    sigma: float, sizes: list[tuple[int, int]], height: int, width: int
) -> None:
    """The matrix form of fuse equals what it replaces: torch's bilinear upsampling, the mean, kornia's blur."""
    level_maps = [torch.rand(3, 2, h, w) for h, w in sizes]
    generator = AnomalyMapGenerator(sigma=sigma)
    upsampled = [F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False) for m in level_maps]
    expected = torch.stack(upsampled).mean(dim=0)
    if sigma > 0:
        side = 2 * generator.blur_radius + 1
        expected = GaussianBlur2d((side, side), (sigma, sigma), border_type="reflect", separable=True)(expected)
    fused = generator.fuse(level_maps, (height, width))
    assert fused.shape == (3, 2, height, width)
    assert torch.allclose(fused, expected, atol=1e-6)
    assert torch.equal(generator.fuse(level_maps, (height, width)), fused)  # the kept matrices give the same


def test_smoothing_needs_a_side_larger_than_its_radius() -> None:
    generator = AnomalyMapGenerator(sigma=4.0)  # radius 16
    with pytest.raises(ValueError, match="radius 16 needs a side of at least 17 pixels, got 16"):
        generator.fuse([torch.rand(1, 1, 4, 4)], (16, 40))


def test_aligned_features_give_a_zero_map() -> None:
    target = torch.randn(2, 4, 8, 8)
    anomaly_map, score = AnomalyMapGenerator()([target], [target], (32, 32))
    assert anomaly_map.abs().max() < 1e-5
    assert score.abs().max() < 1e-5


def test_levels_are_averaged() -> None:
    prediction, target = _features_with_one_mismatch(row=0, col=0)
    single, _ = AnomalyMapGenerator(sigma=0)([prediction], [target], (8, 8))
    pair, _ = AnomalyMapGenerator(sigma=0)([prediction, target], [target, target], (8, 8))
    assert torch.allclose(pair, single / 2, atol=1e-6)


def test_topk_mean_score() -> None:
    anomaly_map = torch.arange(100.0).reshape(1, 1, 10, 10)
    assert AnomalyMapGenerator(score_reduction="topk_mean", topk_ratio=0.05).image_score(anomaly_map).item() == 97
    assert AnomalyMapGenerator(score_reduction="topk_mean", topk_ratio=1.0).image_score(anomaly_map).item() == 49.5
    assert AnomalyMapGenerator(score_reduction="max").image_score(anomaly_map).item() == 99


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5])
def test_invalid_topk_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match="topk_ratio"):
        AnomalyMapGenerator(score_reduction="topk_mean", topk_ratio=ratio)


def test_unknown_score_reduction() -> None:
    with pytest.raises(ValueError, match="median"):
        AnomalyMapGenerator(score_reduction="median")


def test_loss_is_mean_cosine_distance() -> None:
    prediction, target = _features_with_one_mismatch(row=3, col=3)
    # One of 64 cells at distance 2 on level one; level two aligned.
    loss = AlignmentLoss()([prediction, target], [target, target])
    assert loss.item() == pytest.approx((2 / 64) / 2)


def test_standardised_loss_is_the_mean_squared_difference() -> None:
    prediction, target = _features_with_one_mismatch(row=3, col=3)
    # The same cell is 2 apart in each of its 4 channels: squared difference 4.
    loss = AlignmentLoss("standardised_rms")([prediction, target], [target, target])
    assert loss.item() == pytest.approx((4 / 64) / 2)


def test_standardised_misalignment_is_the_root_mean_square_difference_over_channels() -> None:
    target = torch.zeros(1, 4, 2, 2)
    prediction = target.clone()
    prediction[0, 0, 0, 0] = 3  # one channel of four: sqrt(9 / 4)
    prediction[0, :, 1, 1] = -1  # every channel: sqrt(4 / 4)
    expected = torch.tensor([[1.5, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
    assert torch.allclose(misalignment_map(prediction, target, "standardised_rms"), expected)
    # Unlike the cosine, it sees features along the target's own direction but twice as long.
    longer, target = 2 * torch.ones(1, 4, 1, 1), torch.ones(1, 4, 1, 1)
    assert misalignment_map(longer, target, "standardised_rms").item() == pytest.approx(1.0)
    assert misalignment_map(longer, target, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    generator = AnomalyMapGenerator(sigma=0, misalignment="standardised_rms")
    assert generator([prediction], [torch.zeros(1, 4, 2, 2)], (2, 2))[0].equal(expected)


def test_rms_cosine_map_is_the_geometric_mean_of_rms_and_cosine_distance() -> None:
    target = torch.ones(1, 4, 1, 3)
    prediction = target.clone()
    prediction[0, :, 0, 1] = 2  # twice as long, same direction: RMS 1, cosine distance 0
    prediction[0, :2, 0, 2] = -1  # half the channels flipped: RMS sqrt(2), cosine distance 1
    expected = torch.tensor([0.0, 0.0, 2**0.25]).reshape(1, 1, 1, 3)
    torch.testing.assert_close(rms_cosine_map(prediction, target), expected)
    # Rounding can make 1 - cos of aligned vectors slightly negative: never a NaN.
    aligned = torch.full((1, 7, 1, 1), 0.1)
    assert rms_cosine_map(aligned, aligned.clone()).item() == 0


def test_rms_cosine_scores_images_from_its_own_map_and_keeps_the_rms_map() -> None:
    target = torch.ones(2, 4, 4, 4)
    prediction = target.clone()
    prediction[0, :, 1, 1] = 3  # image 0: one cell far away along the target's direction (cosine 0)
    prediction[1, :2, 2, 2] = -1  # image 1: one cell turned, nearer (RMS sqrt(2) < 2)
    rms_cosine = AnomalyMapGenerator(sigma=0, score_reduction="max", misalignment="standardised_rms_cosine")
    rms = AnomalyMapGenerator(sigma=0, score_reduction="max", misalignment="standardised_rms")
    anomaly_map, score = rms_cosine([prediction], [target], (4, 4))
    rms_map, rms_score = rms([prediction], [target], (4, 4))
    assert anomaly_map.equal(rms_map)
    assert rms_score[0] > rms_score[1]  # the RMS ranks the longer vector first
    torch.testing.assert_close(score, torch.tensor([0.0, 2**0.25]))  # the turned one is the anomaly
    loss = AlignmentLoss("standardised_rms_cosine")([prediction], [target])
    assert loss.item() == pytest.approx(AlignmentLoss("standardised_rms")([prediction], [target]).item())


def test_unknown_misalignment() -> None:
    with pytest.raises(ValueError, match="euclid"):
        AnomalyMapGenerator(misalignment="euclid")
