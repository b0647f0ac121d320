"""Hlgfa as an anomalib model: registration, components, optimizer, and checkpoint round trip."""

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.models import get_model

from anomalib_hlgfa import Hlgfa

from .conftest import TINY


def _tiny_hlgfa(**kwargs) -> Hlgfa:
    return Hlgfa(**TINY, image_size=(64, 64), **kwargs)


def test_get_model_finds_hlgfa_by_short_name() -> None:
    model = get_model("hlgfa", **TINY)
    assert isinstance(model, Hlgfa)


def test_default_pre_processor_uses_the_backbone_normalisation() -> None:
    model = _tiny_hlgfa()
    assert model.input_size == (64, 64)
    normalised = model.pre_processor.transform(torch.ones(1, 3, 80, 80))
    # lite0 expects inputs in [-1, 1]: white (1.0) maps to (1 - 0.5) / 0.5 = 1.
    assert normalised.shape == (1, 3, 64, 64)
    assert torch.allclose(normalised, torch.ones_like(normalised))


def test_optimizer_holds_exactly_the_refinement_heads() -> None:
    model = _tiny_hlgfa()
    optimised = {id(p) for group in model.configure_optimizers().param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.model.heads.parameters()}
    assert not optimised & {id(p) for p in model.model.feature_extractor.parameters()}


def test_trainer_arguments_follow_max_epochs() -> None:
    arguments = _tiny_hlgfa(max_epochs=7).trainer_arguments
    assert arguments["max_epochs"] == 7
    assert arguments["check_val_every_n_epoch"] == 7  # thresholds fitted once, after the last epoch
    assert "max_epochs" not in _tiny_hlgfa(max_epochs=None).trainer_arguments


@pytest.mark.parametrize("max_epochs", [0, -3, 2.5])
def test_invalid_max_epochs(max_epochs: float) -> None:
    with pytest.raises(ValueError, match="max_epochs"):
        _tiny_hlgfa(max_epochs=max_epochs)


def test_fit_test_and_checkpoint_round_trip(tiny_dataset: Path, tmp_path: Path) -> None:
    datamodule = MVTecAD(root=tiny_dataset, category="gravel", train_batch_size=4, eval_batch_size=4, num_workers=0)
    model = _tiny_hlgfa(max_epochs=2)
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    (metrics,) = engine.test(model=model, datamodule=datamodule)
    for name in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score", "pixel_AUPRO"):
        assert 0.0 <= metrics[name] <= 1.0, name

    checkpoint = tmp_path / "hlgfa.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    restored = Hlgfa.load_from_checkpoint(checkpoint)

    images = torch.rand(3, 3, 80, 72)
    model.eval()
    restored.eval()
    with torch.no_grad():
        before, after = model(images), restored(images)  # pre-processor, model and post-processor
    assert torch.equal(before.pred_score, after.pred_score)
    assert torch.equal(before.anomaly_map, after.anomaly_map)
    assert torch.equal(before.pred_label, after.pred_label)
    # The post-processor's fitted thresholds came back too, not fresh defaults.
    assert restored.post_processor.image_threshold == model.post_processor.image_threshold
