"""Tiling through anomalib's Tiler and TilerConfigurationCallback: large images processed tile by tile."""

import io
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from anomalib.callbacks import TilerConfigurationCallback
from anomalib.data import MVTecAD
from anomalib.data.utils.tiler import Tiler
from anomalib.engine import Engine

from anomalib_hlgfa import Hlgfa, HlgfaModel
from anomalib_hlgfa.lightning_model import tiler_settings

from .conftest import TINY


@pytest.fixture
def tiled_model() -> HlgfaModel:
    torch.manual_seed(0)
    model = HlgfaModel(**TINY).eval()
    model.tiler = Tiler(tile_size=64, stride=64)
    return model


def test_tiled_eval_puts_each_tiles_maps_in_place_and_scores_the_whole(tiled_model: HlgfaModel) -> None:
    images = torch.rand(2, 3, 128, 192)
    generator = tiled_model.anomaly_map_generator
    with torch.no_grad():
        tiled = tiled_model(images)
        crops = [[images[:, :, row : row + 64, col : col + 64] for col in (0, 64, 128)] for row in (0, 64)]
        maps = [[generator.maps(*tiled_model.align(crop), (64, 64)) for crop in row] for row in crops]

    def assemble(which: int) -> torch.Tensor:
        return torch.cat([torch.cat([tile[which] for tile in row], dim=-1) for row in maps], dim=-2)

    assert tiled.anomaly_map.shape == (2, 1, 128, 192)
    torch.testing.assert_close(tiled.anomaly_map, assemble(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tiled.pred_score, generator.image_score(assemble(1)), rtol=1e-5, atol=1e-5)


def test_tiled_training_returns_one_entry_per_tile(tiled_model: HlgfaModel) -> None:
    predictions, targets = tiled_model.train()(torch.rand(2, 3, 128, 128))
    assert [p.shape[0] for p in predictions] == [8, 8]  # 2 images x 4 tiles
    assert [t.shape[-2:] for t in targets] == [(16, 16), (8, 8)]  # a 64-px tile's levels


def test_tiles_smaller_than_the_minimum_are_refused_with_the_fix_named(tiled_model: HlgfaModel) -> None:
    minimum = tiled_model.minimum_input_size
    tiled_model.tiler = Tiler(tile_size=minimum - 1, stride=minimum - 1)
    with pytest.raises(ValueError, match=rf"Tiles of .* too small.* tile_size .* at least {minimum}"):
        tiled_model(torch.rand(1, 3, 128, 128))


def test_feature_statistics_are_fitted_on_the_tiles(tiled_model: HlgfaModel) -> None:
    """Large images are tiled so that they fit in memory: the statistics pass must not take them whole."""
    moments = tiled_model.feature_moments(torch.rand(2, 3, 128, 128))
    assert [int(level[0, 0]) for level in moments] == [2 * 4 * 16 * 16, 2 * 4 * 8 * 8]  # positions of 8 tiles
    tiled_model.tiler = None
    untiled = tiled_model.feature_moments(torch.rand(2, 3, 128, 128))
    assert [int(level[0, 0]) for level in untiled] == [2 * 32 * 32, 2 * 16 * 16]


def test_model_pickled_before_tiling_support_runs_untiled(tiled_model: HlgfaModel) -> None:
    del tiled_model.tiler  # what a torch export of release 0.5.0 holds
    buffer = io.BytesIO()
    torch.save(tiled_model, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    assert restored.tiler is None
    assert restored(torch.rand(1, 3, 64, 64)).anomaly_map.shape == (1, 1, 64, 64)


def test_engine_fits_and_tests_with_anomalibs_tiler_callback(tiny_dataset: Path, tmp_path: Path) -> None:
    model = Hlgfa(**TINY, image_size=(128, 128), max_epochs=1)
    engine = Engine(
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        callbacks=[TilerConfigurationCallback(enable=True, tile_size=64, stride=64)],
    )
    datamodule = MVTecAD(root=tiny_dataset, category="gravel", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine.fit(model=model, datamodule=datamodule)
    (metrics,) = engine.test(model=model, datamodule=datamodule)
    assert isinstance(model.model.tiler, Tiler)
    assert (model.model.tiler.tile_size_h, model.model.tiler.stride_h) == (64, 64)
    for metric in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):
        assert 0.0 <= metrics[metric] <= 1.0, metrics

    # The thresholds were fitted on tiled maps: a reloaded model (test, predict, export) tiles the same way.
    engine.trainer.save_checkpoint(tmp_path / "tiled.ckpt")
    restored = Hlgfa.load_from_checkpoint(tmp_path / "tiled.ckpt").eval()
    assert tiler_settings(restored.model.tiler) == tiler_settings(model.model.tiler)
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(restored(images).anomaly_map, model.eval()(images).anomaly_map)


def test_openvino_export_of_a_tiled_model_matches_torch_at_any_input_size(tmp_path: Path) -> None:
    """The pre-processor resizes to image_size first, so the traced tiling holds for every input size."""
    torch.manual_seed(0)
    model = Hlgfa(**TINY, image_size=(128, 128)).eval()
    model.model.tiler = Tiler(tile_size=64, stride=64)
    path = model.to_openvino(export_root=tmp_path)
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for shape in ((1, 3, 128, 128), (3, 3, 200, 160)):
        images = torch.rand(shape)
        with torch.no_grad():
            reference = model(images)
        exported = {output.get_any_name(): value for output, value in compiled(images.numpy()).items()}
        np.testing.assert_allclose(exported["anomaly_map"], reference.anomaly_map.numpy(), atol=1e-5)
        np.testing.assert_allclose(exported["pred_score"], reference.pred_score.numpy(), atol=1e-5)
