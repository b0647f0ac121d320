"""Reliability: clear errors for input the model cannot use, image files of every common kind, bad losses.

The backbone's own errors (unknown backbone or layer, missing offline weights package, unreachable model
hub) are tested in test_backbone.py.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD, PredictDataset
from anomalib.engine import Engine
from PIL import Image
from torch.utils.data import DataLoader

from anomalib_hlgfa import Hlgfa, HlgfaModel
from anomalib_hlgfa.image import ImageReadError, read_image

from .conftest import TINY

# ---------------------------------------------------------------------------------------------------------------
# Input the model cannot process


@pytest.mark.parametrize(
    ("config", "minimum"),
    [
        (TINY, 17),  # strides 4 and 8, factor 2: 16; the map's smoothing (sigma 4, radius 16) needs 17
        ({**TINY, "layers": ("blocks.2", "blocks.4")}, 32),  # deepest stride 16 x factor 2
    ],
)
def test_minimum_input_size_is_exact(config: dict, minimum: int) -> None:
    model = HlgfaModel(**config).eval()
    assert model.minimum_input_size == minimum
    with torch.no_grad():
        output = model(torch.rand(1, 3, minimum, 3 * minimum))
    assert output.anomaly_map.shape == (1, 1, minimum, 3 * minimum)
    assert torch.isfinite(output.anomaly_map).all()
    with pytest.raises(ValueError, match=rf"{minimum - 1} x {3 * minimum}.*at least {minimum} pixels"):
        model(torch.rand(1, 3, minimum - 1, 3 * minimum))
    with pytest.raises(ValueError, match=rf"at least {minimum} pixels"):
        model.train()(torch.rand(2, 3, 3 * minimum, minimum - 1))  # training mode is checked too


@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 1, 64, 64), (2, 4, 64, 64), (1, 2, 3, 64, 64)])
def test_wrong_tensor_layout_is_named(tiny_model: HlgfaModel, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=rf"\(B, 3, H, W\), got shape {re_shape(shape)}"):
        tiny_model.eval()(torch.rand(shape))


def re_shape(shape: tuple[int, ...]) -> str:
    return str(shape).replace("(", r"\(").replace(")", r"\)")


def test_too_small_images_through_the_lightning_model() -> None:
    # The default pre-processor resizes to image_size: an image_size below the minimum is caught at once.
    model = Hlgfa(**TINY, image_size=(12, 12)).eval()
    with pytest.raises(ValueError, match=r"12 x 12.*at least 17 pixels.*image_size"):
        model(torch.rand(1, 3, 64, 64))


# ---------------------------------------------------------------------------------------------------------------
# Image files: grayscale, RGBA, palette, 16-bit, corrupt


def _ramp(size: int = 64) -> np.ndarray:
    """An 8-bit test pattern with every grey level between 0 and 255."""
    rows, cols = np.mgrid[0:size, 0:size]
    return ((rows * 7 + cols * 3) % 256).astype(np.uint8)


def _write_kinds(folder: Path) -> dict[str, Path]:
    """The same picture saved as 8-bit RGB, 8-bit grayscale, RGBA, palette and 16-bit grayscale/RGB PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    gray = _ramp()
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    files = {
        "rgb": (Image.fromarray(rgb), "rgb.png"),
        "rgba": (Image.fromarray(np.dstack([rgb, np.full_like(gray, 255)])), "rgba.png"),
        "gray": (Image.fromarray(gray), "gray.png"),
        "gray_as_rgb": (Image.fromarray(np.stack([gray] * 3, axis=-1)), "gray_as_rgb.png"),
        "palette": (Image.fromarray(rgb).quantize(colors=256, dither=Image.Dither.NONE), "palette.png"),
        # 16 bits: v * 257 spans 0..65535 exactly as v spans 0..255, so the scaled image equals the 8-bit one.
        "gray16": (Image.fromarray(gray.astype(np.uint16) * 257), "gray16.png"),
    }
    paths = {}
    for kind, (image, name) in files.items():
        image.save(folder / name)
        paths[kind] = folder / name
    return paths


def test_read_image_handles_grayscale_rgba_palette_and_16_bit(tmp_path: Path) -> None:
    paths = _write_kinds(tmp_path)
    assert Image.open(paths["gray16"]).mode == "I;16"
    images = {kind: read_image(path, as_tensor=True) for kind, path in paths.items()}
    for image in images.values():
        assert image.shape == (3, 64, 64)
        assert image.dtype == torch.float32
    assert torch.equal(images["rgba"], images["rgb"])  # alpha dropped, colours kept
    assert torch.equal(images["gray"], images["gray_as_rgb"])  # grey replicated to RGB
    assert torch.allclose(images["gray16"], images["gray"], atol=1e-6)  # scaled, not clipped at 255
    assert images["gray16"].max() == 1.0
    assert (images["palette"] - images["rgb"]).abs().mean() < 0.02  # palette expanded to its colours
    # The numpy form matches anomalib's (H, W, 3) float64.
    array = read_image(paths["gray16"])
    assert array.shape == (64, 64, 3)
    assert array.dtype == np.float64
    assert np.allclose(array, images["gray"].permute(1, 2, 0).numpy(), atol=1e-6)


def test_anomalib_alone_clips_16_bit_grayscale(tmp_path: Path) -> None:
    """Why the replacement exists: anomalib's reader turns a 16-bit ramp nearly all white."""
    from anomalib_hlgfa import image

    path = _write_kinds(tmp_path)["gray16"]
    clipped = image.anomalib_read_image(path, as_tensor=True)
    assert (clipped == 1.0).float().mean() > 0.9
    # And for 8-bit images the replacement returns exactly anomalib's values.
    for name in ("rgb.png", "gray.png", "rgba.png", "palette.png"):
        ours = read_image(tmp_path / name, as_tensor=True)
        assert torch.equal(ours, image.anomalib_read_image(tmp_path / name, as_tensor=True)), name


def test_importing_the_package_installs_the_reader_in_anomalib() -> None:
    import anomalib.data.datasets.base.image as dataset_module
    import anomalib.data.predict as predict_module
    from anomalib.data.utils import read_image as exported

    assert predict_module.read_image is read_image
    assert dataset_module.read_image is read_image
    assert exported is read_image


@pytest.mark.parametrize(("mode", "kind"), [("I", "32-bit integer"), ("F", "32-bit floating-point")])
def test_images_without_a_defined_range_are_refused(tmp_path: Path, mode: str, kind: str) -> None:
    path = tmp_path / f"image_{mode}.tiff"
    Image.fromarray(_ramp().astype(np.int32 if mode == "I" else np.float32), mode=mode).save(path)
    with pytest.raises(ImageReadError, match=rf"{path}.*{kind}.*8- or 16-bit"):
        read_image(path)


def test_predict_on_a_folder_of_mixed_image_kinds(tmp_path: Path) -> None:
    """Engine.predict(data_path=...) reads every kind as the same RGB picture: identical scores."""
    paths = _write_kinds(tmp_path / "images")
    torch.manual_seed(0)
    model = Hlgfa(**TINY, image_size=(64, 64), visualizer=False)
    engine = Engine(default_root_dir=tmp_path / "results", logger=False, enable_progress_bar=False)
    batches = engine.predict(model=model, data_path=tmp_path / "images")
    scores = {
        Path(path).stem: float(score) for b in batches for path, score in zip(b.image_path, b.pred_score, strict=True)
    }
    assert set(scores) == {path.stem for path in paths.values()}
    assert all(np.isfinite(list(scores.values())))
    assert scores["gray16"] == pytest.approx(scores["gray"], abs=1e-5)
    assert scores["gray"] == pytest.approx(scores["gray_as_rgb"], abs=1e-6)
    assert scores["rgba"] == pytest.approx(scores["rgb"], abs=1e-6)


def _write_corrupt_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_ramp()).save(folder / "good.png")
    (folder / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png at all")
    (folder / "empty.png").write_bytes(b"")
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible
    Image.fromarray(noisy).save(folder / "full.png")
    data = (folder / "full.png").read_bytes()
    (folder / "full.png").unlink()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])  # valid header, half the pixels
    return {name: folder / f"{name}.png" for name in ("garbage", "empty", "truncated")}


@pytest.mark.parametrize("name", ["garbage", "empty", "truncated"])
def test_unreadable_file_is_named(tmp_path: Path, name: str) -> None:
    path = _write_corrupt_files(tmp_path)[name]
    with pytest.raises(ImageReadError, match=rf"Cannot read the image file {path}:.*corrupt"):
        read_image(path, as_tensor=True)


def test_corrupt_file_during_predict_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    _write_corrupt_files(folder)
    for name in ("garbage", "empty"):
        (folder / f"{name}.png").unlink()  # leave one good and one truncated image
    model = Hlgfa(**TINY, image_size=(64, 64), visualizer=False)
    engine = Engine(default_root_dir=tmp_path / "results", logger=False, enable_progress_bar=False)
    with pytest.raises(ImageReadError, match=rf"{folder / 'truncated.png'}"):
        engine.predict(model=model, data_path=folder)


def test_corrupt_file_in_a_dataloader_worker_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    path = _write_corrupt_files(folder)["garbage"]
    for name in ("empty", "truncated"):
        (folder / f"{name}.png").unlink()
    dataset = PredictDataset(folder)
    loader = DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=dataset.collate_fn)
    with pytest.raises(ImageReadError, match=rf"Cannot read the image file {path}"):
        list(loader)


# ---------------------------------------------------------------------------------------------------------------
# Datasets that are empty or not where they should be


def test_missing_dataset_folder_names_the_path(tmp_path: Path) -> None:
    # anomalib's own error is clear: it names the path it looked for.
    datamodule = MVTecAD(root=tmp_path / "nowhere", category="gravel", num_workers=0)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nowhere' / 'gravel'}"):
        datamodule.setup()


def test_empty_dataset_folder_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "gravel" / "train" / "good").mkdir(parents=True)
    datamodule = MVTecAD(root=tmp_path, category="gravel", num_workers=0)
    with pytest.raises(RuntimeError, match=rf"Found 0 images in {tmp_path / 'gravel'}"):
        datamodule.setup()


def _train_only_dataset(root: Path) -> Path:
    folder = root / "gravel" / "train" / "good"
    folder.mkdir(parents=True)
    for index in range(4):
        Image.fromarray(_ramp()).save(folder / f"{index}.png")
    return root


def test_dataset_without_test_folder_stops_before_training(tmp_path: Path) -> None:
    """anomalib alone trains, then leaves NaN thresholds and an empty test; HLGFA says what is missing."""
    datamodule = MVTecAD(root=_train_only_dataset(tmp_path / "data"), category="gravel", num_workers=0)
    engine = Engine(default_root_dir=tmp_path / "results", logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"validation split of MVTecAD is empty.*test/good.*post_processor=False"):
        engine.fit(model=Hlgfa(**TINY, image_size=(64, 64), max_epochs=1), datamodule=datamodule)
    assert not list((tmp_path / "results").rglob("*.ckpt"))


def test_without_a_post_processor_a_train_only_dataset_trains(tmp_path: Path) -> None:
    datamodule = MVTecAD(root=_train_only_dataset(tmp_path / "data"), category="gravel", num_workers=0)
    engine = Engine(default_root_dir=tmp_path / "results", logger=False, enable_progress_bar=False)
    model = Hlgfa(**TINY, image_size=(64, 64), max_epochs=1, post_processor=False, visualizer=False)
    engine.fit(model=model, datamodule=datamodule)
    assert engine.trainer.global_step > 0


# ---------------------------------------------------------------------------------------------------------------
# A loss that is not finite


def test_non_finite_loss_stops_training_with_the_fix(tiny_dataset: Path, tmp_path: Path) -> None:
    datamodule = MVTecAD(root=tiny_dataset, category="gravel", train_batch_size=2, eval_batch_size=4, num_workers=0)
    model = Hlgfa(**TINY, image_size=(64, 64), max_epochs=1, learning_rate=1e30)  # AdamW steps of ~1e30
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(FloatingPointError, match=r"not finite.*step \d.*lower learning_rate \(now 1e\+30"):
        engine.fit(model=model, datamodule=datamodule)
    assert 0 < engine.trainer.global_step < 4  # stopped inside the first epoch, after a step or more
    assert not list(tmp_path.rglob("*.ckpt")), "a checkpoint of the diverged model was written"


def test_nan_images_stop_training_at_the_first_step(tiny_dataset: Path, tmp_path: Path) -> None:
    class NanPreProcessor(torch.nn.Module):
        """Stands for a broken custom pre-processor."""

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.full_like(images, float("nan"))

    model = Hlgfa(**TINY, image_size=(64, 64), max_epochs=1)
    model.model.register_forward_pre_hook(lambda _, args: (NanPreProcessor()(args[0]),))
    datamodule = MVTecAD(root=tiny_dataset, category="gravel", train_batch_size=2, eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(FloatingPointError, match=r"nan.*step 0.*NaN or infinite values"):
        engine.fit(model=model, datamodule=datamodule)
    assert engine.trainer.global_step == 0
    assert all(torch.isfinite(p).all() for p in model.model.heads.parameters())  # weights untouched
    assert not list(tmp_path.rglob("*.ckpt"))
