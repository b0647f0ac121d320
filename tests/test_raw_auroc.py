"""AUROC of raw anomaly scores in the benchmarks: rescaled, not squashed by torchmetrics' sigmoid."""

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from .conftest import load_script


@pytest.fixture(scope="module")
def raw_auroc():
    return load_script("benchmarks/raw_auroc.py")


def test_large_raw_scores_keep_their_ranking(raw_auroc) -> None:
    # PaDiM-like raw scores: perfectly separated, but all above the sigmoid's float32 saturation.
    scores = torch.tensor([21.0, 25.0, 30.0, 34.0, 40.0, 57.0])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert float(binary_auroc(scores, labels)) < 0.9  # the pitfall: ties at sigmoid(x) == 1.0
    assert raw_auroc.raw_score_auroc(scores, labels) == 1.0


def test_same_as_torchmetrics_on_unit_scores_and_invariant_to_scale(raw_auroc) -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(200, generator=generator)
    labels = (torch.rand(200, generator=generator) < scores).long()  # informative but imperfect
    expected = float(binary_auroc(scores, labels))
    assert 0.6 < expected < 0.95
    assert raw_auroc.raw_score_auroc(scores, labels) == pytest.approx(expected, abs=1e-6)
    assert raw_auroc.raw_score_auroc(scores * 80 - 30, labels) == pytest.approx(expected, abs=1e-6)


def test_constant_scores_give_chance(raw_auroc) -> None:
    assert raw_auroc.raw_score_auroc(torch.full((4,), 7.0), torch.tensor([0, 1, 0, 1])) == 0.5


def test_non_finite_scores_are_refused(raw_auroc) -> None:
    with pytest.raises(ValueError, match="1 of 3 scores are NaN or infinite"):
        raw_auroc.raw_score_auroc(torch.tensor([0.1, float("nan"), 0.3]), torch.tensor([0, 1, 1]))


def test_per_defect_type_scores_each_type_against_the_normals() -> None:
    per_defect_type = load_script("benchmarks/per_defect_type.py")
    types = ["good", "good", "good", "crack", "crack", "uneven", "uneven"]
    scores = torch.tensor([20.0, 22.0, 24.0, 40.0, 50.0, 21.0, 23.0])
    results = per_defect_type.per_type_auroc(scores, types)
    assert results["crack (2)"] == 1.0  # both cracks above every normal
    # uneven scores 21 and 23 against normals 20, 22, 24: 3 of 6 pairs won
    assert results["uneven (2)"] == pytest.approx(0.5)
    assert results["all (7)"] == pytest.approx(9 / 12)  # 3 + 3 + 1 + 2 of 4 x 3 pairs
