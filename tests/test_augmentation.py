"""Noise-aware augmentation: each family draws what it says, seeded, and only training batches get it."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import RunningStage

from anomalib_hlgfa import Hlgfa
from anomalib_hlgfa.augmentation import FAMILIES, Nuisance, NuisanceAugmentation, NuisanceConfig
from anomalib_hlgfa.lightning_model import clean_part

from .conftest import TINY


@pytest.fixture(scope="module")
def flat_images() -> torch.Tensor:
    """Uniform mid-grey images: any change is the nuisance's."""
    return torch.full((6, 3, 192, 256), 0.5)


def _only(family: str, **kwargs) -> NuisanceAugmentation:
    return NuisanceAugmentation(NuisanceConfig.only(family, **kwargs))


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_changes_every_image_and_stays_in_range(family: str, flat_images: torch.Tensor) -> None:
    images = flat_images + 0.1 * torch.rand(flat_images.shape, generator=torch.Generator().manual_seed(0))
    original = images.clone()
    augmented = _only(family)(images)
    assert augmented.shape == images.shape
    assert augmented.dtype == images.dtype
    assert augmented.min() >= 0
    assert augmented.max() <= 1
    changed = (augmented - images).abs().amax(dim=(1, 2, 3))
    assert (changed > 1e-3).all(), f"{family} left an image unchanged: {changed}"
    assert torch.equal(images, original), "the input batch was modified in place"


def test_specks_and_fibres_are_small_and_local(flat_images: torch.Tensor) -> None:
    for family, most in (("dust", 0.02), ("fibres", 0.08)):
        changed = ((_only(family)(flat_images) - flat_images).abs() > 0.01).float().mean(dim=(1, 2, 3))
        assert (changed > 0).all(), family
        assert (changed < most).all(), f"{family} covers {changed.max():.3f} of an image"


def test_global_families_touch_the_whole_image() -> None:
    images = torch.rand((4, 3, 256, 256), generator=torch.Generator().manual_seed(1)) * 0.6 + 0.2
    noisy = _only("noise", strength=0.05)(images)
    assert ((noisy - images).abs() > 0).float().mean() > 0.99
    residual_std = (noisy - images).std(dim=(1, 2, 3))
    assert ((residual_std > 0.3 * 0.05 * 0.8) & (residual_std < 0.05 * 1.2)).all(), residual_std
    # Noise is luminance noise: the same on every channel, so grey images stay grey.
    torch.testing.assert_close(noisy[:, 0] - images[:, 0], noisy[:, 1] - images[:, 1])
    # Blur removes high frequencies: the pixel-to-pixel differences shrink.
    blurred = _only("blur", strength=2.0)(images)
    assert blurred.diff(dim=-1).abs().mean() < 0.7 * images.diff(dim=-1).abs().mean()


def test_zero_probability_or_strength_is_the_identity(flat_images: torch.Tensor) -> None:
    images = torch.rand(flat_images.shape)
    off = NuisanceConfig(**{family: Nuisance(0.0, 1.0) for family in FAMILIES})
    weak = NuisanceConfig(**{family: Nuisance(1.0, 0.0) for family in FAMILIES})
    assert torch.equal(NuisanceAugmentation(off)(images), images)
    assert torch.equal(NuisanceAugmentation(weak)(images), images)


def test_probability_is_per_image() -> None:
    images = torch.full((400, 3, 16, 16), 0.5)
    augmented = _only("noise", probability=0.3)(images)
    share = ((augmented - images).abs().amax(dim=(1, 2, 3)) > 0).float().mean()
    assert 0.22 < share < 0.38, share


def test_clean_share_spares_whole_images_and_zero_keeps_the_draws() -> None:
    images = torch.full((400, 3, 16, 16), 0.5)
    every_family = {family: Nuisance(1.0, 0.5) for family in FAMILIES}
    augmented = NuisanceAugmentation(NuisanceConfig(**every_family, clean_share=0.4))(images)
    touched = (augmented - images).abs().amax(dim=(1, 2, 3)) > 0
    assert 0.52 < touched.float().mean() < 0.68, touched.float().mean()  # about 1 - clean_share of the images
    noisy = torch.rand((8, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    assert torch.equal(NuisanceAugmentation(NuisanceConfig(clean_share=0.0))(noisy), NuisanceAugmentation()(noisy))
    assert torch.equal(NuisanceAugmentation(NuisanceConfig(clean_share=1.0))(noisy), noisy)
    with pytest.raises(ValueError, match="clean_share"):
        NuisanceConfig(clean_share=1.5)


def test_same_seed_same_nuisances_other_seed_others() -> None:
    images = torch.rand((8, 3, 48, 48), generator=torch.Generator().manual_seed(2))
    first, again = NuisanceAugmentation(NuisanceConfig(seed=3)), NuisanceAugmentation(NuisanceConfig(seed=3))
    assert torch.equal(first(images), again(images))
    assert torch.equal(first(images), again(images))  # the streams advance alike
    assert not torch.equal(NuisanceAugmentation(NuisanceConfig(seed=4))(images), again(images))
    first.reseed(3)
    assert torch.equal(first(images), NuisanceAugmentation(NuisanceConfig(seed=3))(images))


def test_sizes_scale_with_the_image() -> None:
    """The same draws on a 3x larger image cover the same share of it: nuisances are resolution-independent."""
    small, large = torch.full((4, 3, 256, 256), 0.5), torch.full((4, 3, 768, 768), 0.5)
    for family in ("dust", "fibres", "stains"):
        share = [float(((_only(family)(x) - x).abs() > 0.01).float().mean()) for x in (small, large)]
        assert share[1] == pytest.approx(share[0], rel=0.35), family


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"probability": 1.5}, "probability must be in"),
        ({"probability": 0.5, "strength": -1.0}, "strength must be"),
        ({"probability": 0.5, "strength": float("nan")}, "strength must be"),
    ],
)
def test_invalid_settings_are_refused(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Nuisance(**arguments)


def test_unknown_family_and_wrong_images_are_refused() -> None:
    with pytest.raises(ValueError, match="families are"):
        NuisanceConfig.only("scratches")
    with pytest.raises(ValueError, match=r"ToDtype"):
        NuisanceAugmentation()(torch.zeros((2, 3, 8, 8), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        NuisanceAugmentation()(torch.zeros((3, 8, 8)))


class RecordingAugmentation(NuisanceAugmentation):
    """The real augmentation, recording the trainer stage of each call."""

    def __init__(self, model: Hlgfa) -> None:
        super().__init__(NuisanceConfig.only("noise", strength=0.2))
        self.model, self.stages, self.changed = [model], [], []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.stages.append(self.model[0].trainer.state.stage)
        augmented = super().forward(images)
        self.changed.append(not torch.equal(augmented, images))
        return augmented


def test_only_training_batches_are_augmented(tiny_dataset: Path, tmp_path: Path) -> None:
    model = Hlgfa(**TINY, image_size=(64, 64), max_epochs=2, visualizer=False)
    recorder = RecordingAugmentation(model)
    model.augmentation = recorder
    datamodule = MVTecAD(root=tiny_dataset, category="gravel", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    engine.test(model=model, datamodule=datamodule)
    engine.predict(model=model, datamodule=datamodule)
    training_batches = 2 * 2  # 8 training images, batch 4, 2 epochs
    assert recorder.stages == [RunningStage.TRAINING] * training_batches
    assert all(recorder.changed)


def test_clean_heads_learn_the_clean_part_and_heads_the_augmented_rest(tiny_dataset: Path, tmp_path: Path) -> None:
    model = Hlgfa(**TINY, image_size=(64, 64), max_epochs=1, visualizer=False)
    model.augmentation = RecordingAugmentation(model)
    raw: list[tuple[torch.Tensor, torch.Tensor]] = []  # what the augmentation got and gave, per training batch
    augment, forward = model.augmentation.forward, model.model.forward

    def recording_augment(images: torch.Tensor) -> torch.Tensor:
        raw.append((images.clone(), augment(images)))
        return raw[-1][1]

    seen: dict[bool, list[torch.Tensor]] = {False: [], True: []}  # the model's input, by head set

    def recording_forward(images: torch.Tensor, clean: bool = False) -> object:
        seen[clean].append(images.clone())
        return forward(images, clean)

    recorded_batches: list[torch.Tensor] = []

    class RecordBatches(Callback):
        def on_train_batch_start(self, trainer: object, pl_module: object, batch: object, batch_idx: int) -> None:
            recorded_batches.append(batch.image.clone())  # runs before the model's callbacks: the raw batch

    model.augmentation.forward, model.model.forward = recording_augment, recording_forward
    before = {name: p.clone() for name, p in model.model.named_parameters() if "heads" in name}
    datamodule = MVTecAD(root=tiny_dataset, category="gravel", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, callbacks=[RecordBatches()])
    engine.fit(model=model, datamodule=datamodule)
    transform = model.pre_processor.transform
    assert len(raw) == len(recorded_batches) == 2  # 8 training images, batch 4
    assert len(seen[True]) == 2  # one clean-heads call per training step; validation uses the model's forward
    # Training steps came first; validation (eval mode) called forward too, always with the heads.
    for batch, (to_augment, augmented), clean_seen, heads_seen in zip(
        recorded_batches, raw, seen[True], seen[False], strict=False
    ):
        clean = clean_part(len(batch))
        assert clean >= 1
        torch.testing.assert_close(to_augment, batch[clean:])  # the rest is augmented ...
        torch.testing.assert_close(clean_seen, transform(batch[:clean]))  # ... the first part stays clean
        torch.testing.assert_close(heads_seen, transform(augmented))
        assert not torch.allclose(to_augment, augmented)
    after = dict(model.model.named_parameters())
    for prefix in ("heads.", "clean_heads."):
        changed = [not torch.equal(p, after[name]) for name, p in before.items() if name.startswith(prefix)]
        assert any(changed), f"{prefix} did not train"


def test_default_model_augments_and_none_disables() -> None:
    assert Hlgfa(pre_trained=False).augmentation.config == NuisanceConfig()
    assert Hlgfa(pre_trained=False, augmentation=None).augmentation is None


def test_cli_sets_families_and_disables_augmentation(tmp_path: Path) -> None:
    anomalib = Path(sys.executable).with_name("anomalib")
    common = ["--data", "anomalib.data.MVTecAD", "--data.category", "x", "--print_config"]
    result = subprocess.run(
        [str(anomalib), "train", "--model", "Hlgfa", "--model.augmentation.fibres.probability", "0.9", *common],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    fibres = f"fibres:\n        probability: 0.9\n        strength: {NuisanceConfig().fibres.strength}"  # default kept
    assert fibres in result.stdout, result.stdout[-3000:]
    result = subprocess.run(
        [str(anomalib), "train", "--model", "Hlgfa", "--model.augmentation", "null", *common],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "augmentation: null" in result.stdout
