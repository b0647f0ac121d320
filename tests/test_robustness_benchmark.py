"""The nuisance test set of benchmarks/robustness.py: normals changed, defects and masks untouched."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from PIL import Image

from anomalib_hlgfa import HlgfaModel

from .conftest import load_script


def _robustness():
    return load_script("benchmarks/robustness.py")


def test_nuisance_split_changes_normals_only(tiny_dataset: Path, tmp_path: Path) -> None:
    robustness = _robustness()
    output = tmp_path / "nuisance"
    held_out = robustness.build_nuisance_split(tiny_dataset, "gravel", output)

    source, target = tiny_dataset / "gravel", output / "gravel"
    normals = sorted((source / "test" / "good").iterdir())
    assert sorted(held_out) == [p.name for p in normals]
    assert set(held_out.values()) <= set(robustness.HELD_OUT)
    for path in normals:
        before = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        after = np.asarray(Image.open(target / "test" / "good" / path.name).convert("RGB"), dtype=np.int16)
        assert after.shape == before.shape
        assert np.abs(after - before).mean() > 0.5, f"{path.name} was not changed"
    # Defective images and their masks are unchanged copies: anomalib reads the same labels and masks.
    clean, nuisance = MVTecAD(root=tiny_dataset, category="gravel"), MVTecAD(root=output, category="gravel")
    clean.setup()
    nuisance.setup()

    def rows(samples, root: Path) -> list[tuple]:
        relative = [
            (Path(p).relative_to(root), m and Path(m).relative_to(root))
            for p, m in samples[["image_path", "mask_path"]].fillna("").to_numpy()
        ]
        return [(*paths, label) for paths, label in zip(relative, samples.label_index.tolist(), strict=True)]

    assert rows(clean.test_data.samples, tiny_dataset) == rows(nuisance.test_data.samples, output)
    for path in (source / "test").glob("[!g]*/*.png"):  # every defect folder (not good)
        assert (target / path.relative_to(source)).read_bytes() == path.read_bytes()
    # Kept: a second call reuses the set instead of drawing a new one.
    assert robustness.build_nuisance_split(tiny_dataset, "gravel", output) == held_out
    assert json.loads((target / "held_out.json").read_text()) == held_out
    assert not list(output.glob(".*partial"))


def test_operating_point_threshold_from_clean_normals_only() -> None:
    robustness = _robustness()
    clean = [[f"good/{i:03d}.png", 0, i / 100] for i in range(100)] + [["crack/a.png", 1, 0.5], ["crack/b.png", 1, 2.0]]
    # Two nuisance normals above every clean normal (one per held-out family), the rest below.
    nuisance = [[f"good/{i:03d}.png", 0, i / 200] for i in range(98)]
    nuisance += [["good/098.png", 0, 5.0], ["good/099.png", 0, 5.0]]
    held_out = {f"{i:03d}.png": robustness.HELD_OUT[i % 2] for i in range(100)}

    point = robustness.operating_point(clean, nuisance, held_out, clean_fpr=0.05)

    assert point["threshold"] == 0.95  # 5 of the 100 clean normals (0.95 excluded) lie above it
    assert sum(score > point["threshold"] for _, label, score in clean if not label) == 4
    assert point["fpr"] == 0.02
    assert point["fpr_jpeg"] == 0.02  # good/098 is jpeg (even index), good/099 lens smudge
    assert point["fpr_lens_smudge"] == 0.02
    assert point["defect_recall_clean"] == 0.5  # 2.0 is above the threshold, 0.5 is not


def test_per_defect_auroc_ranks_each_type_against_all_normals() -> None:
    robustness = _robustness()
    scores = [
        ["test/good/0.png", 0, 0.1],
        ["test/good/1.png", 0, 0.3],
        ["test/crack/0.png", 1, 0.9],  # above every normal: AUROC 1
        ["test/speck/0.png", 1, 0.2],  # between the normals: AUROC 0.5
    ]
    row = {"category": "tile", "model": "m", "seed": 0, "clean": {"scores": scores}}
    lines = robustness.per_defect_table([row])
    assert "| tile | seed | crack | speck |" in lines
    assert "| m | 0 | 1.000 | 0.500 |" in lines


def test_global_detail_candidate_starts_as_the_model_and_learns(tiny_model: HlgfaModel) -> None:
    robustness = _robustness()
    images = torch.rand(2, 3, 64, 64)
    tiny_model.eval()
    before = tiny_model(images).anomaly_map
    robustness.condition_on_global_detail(tiny_model)
    # Zero-initialised: the candidate starts from the model as it is.
    torch.testing.assert_close(tiny_model(images).anomaly_map, before)
    tiny_model.train()
    predictions, targets = tiny_model(images)
    sum((p - t).pow(2).mean() for p, t in zip(predictions, targets, strict=True)).backward()
    for head in tiny_model.heads:
        assert head.global_modulation.weight.grad.abs().sum() > 0


def test_padim_runs_on_the_same_offline_backbone_as_hlgfa(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--models padim`` compares against PaDiM on HLGFA's ImageNet lite0 weights, loaded offline."""
    from anomalib.models import Padim

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))  # as a job process runs it
    padim = _robustness().build("padim", (64, 64), {})
    assert isinstance(padim, Padim)
    padim_stem = padim.model.feature_extractor.feature_extractor.conv_stem.weight
    hlgfa_stem = HlgfaModel().feature_extractor.feature_extractor.conv_stem.weight
    assert torch.equal(padim_stem, hlgfa_stem)
