"""Properties over image sizes, aspect ratios and batch sizes (hypothesis), and determinism under a seed."""

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.pytorch import seed_everything
from PIL import Image

from anomalib_hlgfa import Hlgfa, HlgfaModel, Misalignment
from anomalib_hlgfa.anomaly_map import rms_cosine_map

from .conftest import TINY

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", params=[m.value for m in Misalignment])
def eval_model(request: pytest.FixtureRequest) -> HlgfaModel:
    torch.manual_seed(0)
    return HlgfaModel(**TINY, misalignment=request.param).eval()


@FAST
@given(
    height=st.integers(min_value=1, max_value=160),
    width=st.integers(min_value=1, max_value=160),
    batch_size=st.integers(min_value=1, max_value=3),
)
def test_forward_on_any_size_gives_a_finite_map_of_that_size_or_a_clear_error(
    eval_model: HlgfaModel,
    height: int,
    width: int,
    batch_size: int,
) -> None:
    images = torch.rand(batch_size, 3, height, width)
    if min(height, width) < eval_model.minimum_input_size:
        with pytest.raises(ValueError, match=rf"{height} x {width}.*at least {eval_model.minimum_input_size} pixels"):
            eval_model(images)
        return
    with torch.no_grad():
        output = eval_model(images)
    assert output.anomaly_map.shape == (batch_size, 1, height, width)
    assert output.pred_score.shape == (batch_size,)
    assert torch.isfinite(output.anomaly_map).all()
    assert torch.isfinite(output.pred_score).all()
    assert output.anomaly_map.min() >= 0
    if eval_model.misalignment == Misalignment.COSINE:
        # Cosine distances, averaged and smoothed with a normalised kernel, stay within [0, 2].
        assert output.anomaly_map.max() <= 2 + 1e-5
    # The score is the model's reduction (top-1 % mean by default) of its score map, never above that map's
    # max: the anomaly map itself, or for standardised_rms_cosine the fused geometric mean of RMS and cosine.
    generator = eval_model.anomaly_map_generator
    score_map = output.anomaly_map
    if eval_model.misalignment == Misalignment.STANDARDISED_RMS_COSINE:
        with torch.no_grad():
            predictions, targets = eval_model.align(images)
            level_maps = [rms_cosine_map(p, t) for p, t in zip(predictions, targets, strict=True)]
            score_map = generator.fuse(level_maps, (height, width))
    assert torch.allclose(output.pred_score, generator.image_score(score_map))
    assert (output.pred_score <= score_map.flatten(1).amax(dim=1) + 1e-6).all()


@FAST
@given(
    height=st.integers(min_value=17, max_value=96),
    aspect=st.floats(min_value=0.25, max_value=4.0),
    batch_size=st.integers(min_value=1, max_value=3),
)
def test_forward_is_independent_of_the_batch(
    eval_model: HlgfaModel, height: int, aspect: float, batch_size: int
) -> None:
    """Each image's map is the same alone or in a batch: nothing couples the images of a batch."""
    width = max(eval_model.minimum_input_size, round(height * aspect))
    images = torch.rand(batch_size, 3, height, width)
    with torch.no_grad():
        together = eval_model(images).anomaly_map
        alone = torch.cat([eval_model(image[None]).anomaly_map for image in images])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.fixture(scope="module")
def predict_engine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Hlgfa]:
    torch.manual_seed(0)
    model = Hlgfa(**TINY, image_size=(48, 80), visualizer=False)
    return Engine(default_root_dir=tmp_path_factory.mktemp("predict"), logger=False, enable_progress_bar=False), model


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(
        st.tuples(st.integers(min_value=1, max_value=200), st.integers(min_value=1, max_value=200)),
        min_size=1,
        max_size=4,
    ),
)
def test_predict_on_files_of_any_size(
    predict_engine: tuple[Engine, Hlgfa],
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[tuple[int, int]],
) -> None:
    """Engine.predict on files of any size and aspect: the pre-processor resizes, the map is the model input's."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(len(sizes))
    for index, (height, width) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    engine, model = predict_engine
    batches = engine.predict(model=model, data_path=folder)
    assert sum(len(batch.image_path) for batch in batches) == len(sizes)
    for batch in batches:
        assert batch.anomaly_map.shape[-2:] == batch.image.shape[-2:] == (48, 80)
        assert torch.isfinite(batch.anomaly_map).all()
        assert torch.isfinite(batch.pred_score).all()


def _train_and_score(root: Path, tmp_path: Path, seed: int) -> torch.Tensor:
    seed_everything(seed, verbose=False)  # anomalib's CLI: --seed_everything
    model = Hlgfa(**TINY, image_size=(64, 64), max_epochs=1, visualizer=False)
    datamodule = MVTecAD(root=root, category="gravel", train_batch_size=2, eval_batch_size=12, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    datamodule.setup()
    batch = torch.stack([item.image for item in datamodule.test_data])
    model.eval()
    with torch.no_grad():
        return model.model(model.pre_processor(batch)).pred_score


def test_same_seed_same_scores(tiny_dataset: Path, tmp_path: Path) -> None:
    """Two trainings on CPU with one seed give identical image scores; another seed gives others."""
    first = _train_and_score(tiny_dataset, tmp_path / "first", seed=7)
    second = _train_and_score(tiny_dataset, tmp_path / "second", seed=7)
    other = _train_and_score(tiny_dataset, tmp_path / "other", seed=8)
    assert torch.equal(first, second)
    assert not torch.allclose(first, other, atol=1e-4)  # the seed matters, so the equality above means something
