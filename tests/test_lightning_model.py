"""Hlgfa as an anomalib model: registration, components, optimizer, and checkpoint round trip."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from anomalib.data import Folder, MVTecAD
from anomalib.engine import Engine
from anomalib.models import get_model

from anomalib_hlgfa import Hlgfa
from anomalib_hlgfa.backbone import create_feature_extractor
from anomalib_hlgfa.lightning_model import clean_part

from .conftest import TINY
from .test_cli import ANOMALIB


def _tiny_hlgfa(**kwargs) -> Hlgfa:
    return Hlgfa(**TINY, image_size=(64, 64), **kwargs)


def test_get_model_finds_hlgfa_by_short_name() -> None:
    model = get_model("hlgfa", **TINY)
    assert isinstance(model, Hlgfa)


@pytest.mark.parametrize("class_path", ["Hlgfa", "anomalib.models.Hlgfa"])
def test_get_model_finds_hlgfa_by_config_class_path(class_path: str) -> None:
    # The form anomalib's benchmark and tiled-ensemble pipelines pass to get_model.
    model = get_model({"class_path": class_path, "init_args": {**TINY, "hidden_channels": 4}})
    assert isinstance(model, Hlgfa)
    assert model.model.heads[0].output_projection.in_channels == 4  # init_args reached the model


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
    heads = [*model.model.heads.parameters(), *model.model.clean_heads.parameters()]
    assert optimised == {id(p) for p in heads}
    assert not optimised & {id(p) for p in model.model.feature_extractor.parameters()}


def test_clean_part_is_a_quarter_of_the_batch_and_at_least_one_image() -> None:
    assert [clean_part(n) for n in (1, 2, 3, 4, 7, 8, 32, 33)] == [0, 1, 1, 1, 1, 2, 8, 8]


def test_clean_heads_refuse_a_training_batch_size_of_one(tiny_dataset: Path, tmp_path: Path) -> None:
    datamodule = MVTecAD(root=tiny_dataset, category="gravel", train_batch_size=1, eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"at least 2 images; the training batch size is 1.*clean_heads=False"):
        engine.fit(model=_tiny_hlgfa(max_epochs=1), datamodule=datamodule)


def test_clean_heads_come_with_augmentation_only() -> None:
    assert _tiny_hlgfa().model.clean_heads is not None  # the default: augmentation and clean heads
    assert _tiny_hlgfa(clean_heads=False).model.clean_heads is None
    assert _tiny_hlgfa(augmentation=None).model.clean_heads is None  # nothing for a second set to learn


def test_trainer_arguments_follow_max_epochs() -> None:
    arguments = _tiny_hlgfa(max_epochs=7).trainer_arguments
    assert arguments["max_epochs"] == 7
    assert arguments["check_val_every_n_epoch"] == 7  # thresholds fitted once, after the last epoch
    assert "max_epochs" not in _tiny_hlgfa(max_epochs=None).trainer_arguments


@pytest.mark.parametrize("max_epochs", [0, -3, 2.5])
def test_invalid_max_epochs(max_epochs: float) -> None:
    with pytest.raises(ValueError, match="max_epochs"):
        _tiny_hlgfa(max_epochs=max_epochs)


SCORE_DUMP = """
import os
import torch
from lightning.pytorch import Callback


class ScoreDump(Callback):
    \"\"\"Save every test image's score and anomaly map to the file named by $SCORE_DUMP.\"\"\"

    def __init__(self):
        self.rows = {}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        for path, score, anomaly_map in zip(outputs.image_path, outputs.pred_score, outputs.anomaly_map):
            self.rows[path] = (score.clone(), anomaly_map.clone())

    def on_test_end(self, trainer, pl_module):
        torch.save(self.rows, os.environ["SCORE_DUMP"])
"""


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Hlgfa, Path, dict]:
    """A tiny model fitted and tested for 2 epochs, its checkpoint, and its test metrics."""
    tmp_path = tmp_path_factory.mktemp("trained")
    torch.manual_seed(0)
    model = _tiny_hlgfa(max_epochs=2)
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=_tiny_datamodule(tiny_dataset))
    (metrics,) = engine.test(model=model, datamodule=_tiny_datamodule(tiny_dataset))
    checkpoint = tmp_path / "hlgfa.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    return model, checkpoint, metrics


def _tiny_datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="gravel", train_batch_size=4, eval_batch_size=4, num_workers=0)


def test_trains_on_a_folder_of_own_images_without_masks(tiny_dataset: Path, tmp_path: Path) -> None:
    """A user's own data (anomalib's Folder): normal and defective images, no masks: image metrics only."""
    category = tiny_dataset / "gravel"
    normal, defective = tmp_path / "parts" / "good", tmp_path / "parts" / "defect"
    defective.mkdir(parents=True)
    shutil.copytree(category / "train" / "good", normal)
    for image in (category / "test" / "good").iterdir():
        shutil.copy(image, normal / f"test_{image.name}")
    for image in (category / "test").glob("[!g]*/*.png"):  # every defect type, not "good"
        shutil.copy(image, defective / f"{image.parent.name}_{image.name}")
    datamodule = Folder(
        name="parts",
        root=tmp_path / "parts",
        normal_dir="good",
        abnormal_dir="defect",
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )
    model = _tiny_hlgfa(max_epochs=1)
    engine = Engine(default_root_dir=tmp_path / "results", logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    (metrics,) = engine.test(model=model, datamodule=datamodule)
    assert set(metrics) == {"image_AUROC", "image_F1Score"}  # no masks: anomalib skips the pixel metrics
    assert all(0.0 <= value <= 1.0 for value in metrics.values()), metrics
    predictions = engine.predict(model=model, data_path=defective)
    assert sum(len(batch.pred_score) for batch in predictions) == len(list(defective.iterdir()))
    assert all(batch.anomaly_map.shape[-2:] == (64, 64) for batch in predictions)


def test_fit_test_and_checkpoint_round_trip(trained: tuple[Hlgfa, Path, dict]) -> None:
    model, checkpoint, metrics = trained
    for name in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score", "pixel_AUPRO"):
        assert 0.0 <= metrics[name] <= 1.0, name

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


def test_fit_standardises_with_the_clean_training_images(tiny_dataset: Path, tmp_path: Path) -> None:
    """The statistics are those of the pre-processed training images, without the nuisance augmentation."""
    model = _tiny_hlgfa(max_epochs=1, misalignment="standardised_rms")
    assert model.augmentation is not None  # training batches are augmented; the statistics must not be
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=_tiny_datamodule(tiny_dataset))
    datamodule = _tiny_datamodule(tiny_dataset)
    datamodule.setup()
    images = torch.stack([item.image for item in datamodule.train_data])
    with torch.no_grad():
        features = model.model.feature_extractor(model.pre_processor.transform(images))
    for standardization, level in zip(model.model.standardization, features.values(), strict=True):
        torch.testing.assert_close(standardization.mean.flatten(), level.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(standardization.std.flatten(), level.std(dim=(0, 2, 3)), rtol=1e-3, atol=1e-5)
    # The statistics are saved and restored with the model.
    checkpoint = tmp_path / "standardised.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    restored = Hlgfa.load_from_checkpoint(checkpoint)
    assert torch.equal(restored.model.standardization[0].std, model.model.standardization[0].std)


def test_cli_test_and_load_from_checkpoint_give_the_same_scores(
    trained: tuple[Hlgfa, Path, dict],
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, checkpoint, _ = trained
    (tmp_path / "score_dump.py").write_text(SCORE_DUMP)
    monkeypatch.syspath_prepend(str(tmp_path))
    from score_dump import ScoreDump

    # In this process: Hlgfa.load_from_checkpoint, then the engine's test.
    monkeypatch.setenv("SCORE_DUMP", str(tmp_path / "python.pt"))
    restored = Hlgfa.load_from_checkpoint(checkpoint)
    engine = Engine(
        default_root_dir=tmp_path / "python", logger=False, enable_progress_bar=False, callbacks=[ScoreDump()]
    )
    (python_metrics,) = engine.test(model=restored, datamodule=_tiny_datamodule(tiny_dataset))

    # In a fresh process: anomalib's CLI with --ckpt_path.
    environment = {
        **os.environ,
        "SCORE_DUMP": str(tmp_path / "cli.pt"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [
            str(ANOMALIB), "test",
            "--model", "Hlgfa",
            "--model.pre_trained", "false",
            "--model.layers", "[blocks.1, blocks.2]",
            "--model.hidden_channels", "8",
            "--model.prior_channels", "2",
            "--model.image_size", "[64, 64]",
            "--data", "anomalib.data.MVTecAD",
            "--data.root", str(tiny_dataset),
            "--data.category", "gravel",
            "--data.eval_batch_size", "4",
            "--data.num_workers", "0",
            "--ckpt_path", str(checkpoint),
            "--default_root_dir", str(tmp_path / "cli"),
            "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks", "score_dump.ScoreDump",
        ],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    python_rows, cli_rows = torch.load(tmp_path / "python.pt"), torch.load(tmp_path / "cli.pt")
    assert len(python_rows) == 12
    assert python_rows.keys() == cli_rows.keys()
    # Two processes may pick different CPU kernels for the same convolution: equal to float rounding, not bit
    # for bit (one fresh-clone CI run differed in the last bits of one map). A wrong model, statistics or
    # post-processor would differ by orders of magnitude more.
    for path, (score, anomaly_map) in python_rows.items():
        torch.testing.assert_close(score, cli_rows[path][0], rtol=1e-5, atol=1e-6, msg=path)
        torch.testing.assert_close(anomaly_map, cli_rows[path][1], rtol=1e-5, atol=1e-6, msg=path)
    assert f"{python_metrics['pixel_AUPRO']:.4f}"[:5] in result.stdout  # the CLI's printed metrics agree


def test_checkpoint_with_the_earlier_two_dimensional_blur_kernel_loads(
    trained: tuple[Hlgfa, Path, dict],
    tmp_path: Path,
) -> None:
    """Checkpoints saved before the separable blur carry its 2-D kernel as a buffer: they still load, unchanged."""
    from anomalib.models.components import GaussianBlur2d

    model, checkpoint, _ = trained
    saved = torch.load(checkpoint, weights_only=False)
    kernel = GaussianBlur2d(sigma=model.model.anomaly_map_generator.sigma, channels=1).kernel
    saved["state_dict"]["model.anomaly_map_generator.blur.kernel"] = kernel
    earlier = tmp_path / "earlier.ckpt"
    torch.save(saved, earlier)

    restored = Hlgfa.load_from_checkpoint(earlier)

    images = torch.rand(2, 3, 64, 64)
    model.eval()
    restored.eval()
    with torch.no_grad():
        assert torch.equal(model(images).anomaly_map, restored(images).anomaly_map)


def test_checkpoint_with_unfolded_batch_norms_loads_with_the_same_features(
    trained: tuple[Hlgfa, Path, dict],
    tmp_path: Path,
) -> None:
    """Checkpoints saved before batch-norm folding carry the backbone's batch norms: they are folded on load."""
    model, checkpoint, _ = trained
    unfolded = create_feature_extractor(
        model.model.backbone_name, model.model.layers, pre_trained=False, fold_batch_norm=False
    )
    generator = torch.Generator().manual_seed(0)
    for norm in unfolded.modules():  # statistics a trained network could have, not the identity
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator))
            norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
    saved = torch.load(checkpoint, weights_only=False)
    prefix = "model.feature_extractor.feature_extractor."
    saved["state_dict"] = {key: value for key, value in saved["state_dict"].items() if not key.startswith(prefix)}
    saved["state_dict"] |= {prefix + key: value for key, value in unfolded.feature_extractor.state_dict().items()}
    earlier = tmp_path / "unfolded.ckpt"
    torch.save(saved, earlier)

    restored = Hlgfa.load_from_checkpoint(earlier)

    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in restored.modules())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = unfolded(images), restored.model.feature_extractor(images)
    for layer in expected:
        torch.testing.assert_close(actual[layer], expected[layer], rtol=1e-4, atol=1e-4 * expected[layer].abs().max())


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"hidden_channels": 16}, r"hidden_channels: checkpoint 8, this model 16"),
        ({"layers": ("blocks.1", "blocks.4")}, r"layers: checkpoint \['blocks.1', 'blocks.2'\], this model"),
        ({"structure_window": 2}, r"structure_window: checkpoint 4, this model 2"),  # no tensor changes shape
        ({"downsample_factor": 4}, r"downsample_factor: checkpoint 2, this model 4"),
        ({"misalignment": "cosine"}, r"misalignment: checkpoint 'standardised_rms_cosine', this model 'cosine'"),
        ({"detail_prior": "energy"}, r"detail_prior: checkpoint 'residue', this model 'energy'"),  # same tensors
    ],
)
def test_checkpoint_with_another_configuration_is_refused(
    trained: tuple[Hlgfa, Path, dict],
    override: dict,
    named: str,
) -> None:
    _, checkpoint, _ = trained
    with pytest.raises(ValueError, match=rf"does not fit this HLGFA model's configuration:(.|\n)*{named}"):
        Hlgfa.load_from_checkpoint(checkpoint, **override)


def _checkpoint_before(checkpoint: Path, tmp_path: Path, argument: str, state_marker: str | None = None) -> Path:
    """The checkpoint as a release before ``argument`` saved it: without it, and without the tensors it added."""
    content = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key in [key for key in content["state_dict"] if state_marker is not None and state_marker in key]:
        del content["state_dict"][key]
    del content["hyper_parameters"][argument], content["hlgfa_architecture"][argument]
    torch.save(content, tmp_path / "old.ckpt")
    return tmp_path / "old.ckpt"


def test_checkpoint_from_before_the_misalignment_argument_names_the_fix(
    trained: tuple[Hlgfa, Path, dict],
    tmp_path: Path,
) -> None:
    """0.1 saved no misalignment and no statistics: a cosine model, which the default (standardised) is not."""
    old = _checkpoint_before(trained[1], tmp_path, "misalignment", ".standardization.")
    with pytest.raises(ValueError, match=r"predates it \(cosine\); pass misalignment='cosine'"):
        Hlgfa.load_from_checkpoint(old)


def test_checkpoint_from_before_the_detail_prior_argument_names_the_fix(
    trained: tuple[Hlgfa, Path, dict],
    tmp_path: Path,
) -> None:
    """Before 0.4 the detail prior was the residue: such a checkpoint loads as it is, not as an energy model."""
    old = _checkpoint_before(trained[1], tmp_path, "detail_prior")
    assert Hlgfa.load_from_checkpoint(old).model.heads[0].priors.detail_prior == "residue"
    with pytest.raises(ValueError, match=r"detail_prior: checkpoint 'residue', this model 'energy'"):
        Hlgfa.load_from_checkpoint(old, detail_prior="energy")


def test_checkpoint_from_before_clean_heads_loads_with_one_head_set(
    trained: tuple[Hlgfa, Path, dict],
    tmp_path: Path,
) -> None:
    """Before 0.7 a model had one head set, also with augmentation: it loads as it was and scores the same."""
    model = trained[0]
    old = Hlgfa.load_from_checkpoint(_checkpoint_before(trained[1], tmp_path, "clean_heads", ".clean_heads.")).eval()
    assert old.model.clean_heads is None
    assert old.hparams["clean_heads"] is False
    images = torch.rand(2, 3, 64, 64)
    one_head_set = Hlgfa(**TINY, image_size=(64, 64), clean_heads=False).eval()
    one_head_set.load_state_dict(old.state_dict())
    expected, scored = one_head_set.model(images), old.model(images)
    torch.testing.assert_close(scored.pred_score, expected.pred_score)
    torch.testing.assert_close(scored.anomaly_map, expected.anomaly_map)
    # The two-head-set model of the fixture scores otherwise: the clean heads take part in its map.
    assert not torch.allclose(model.eval().model(images).anomaly_map, scored.anomaly_map)


def test_checkpoint_with_clean_heads_refuses_a_model_without(trained: tuple[Hlgfa, Path, dict]) -> None:
    _, checkpoint, _ = trained
    with pytest.raises(ValueError, match=r"clean_heads: checkpoint True, this model False"):
        Hlgfa.load_from_checkpoint(checkpoint, augmentation=None)


def test_state_dict_of_another_configuration_is_refused_by_the_engine(
    trained: tuple[Hlgfa, Path, dict],
    tiny_dataset: Path,
    tmp_path: Path,
) -> None:
    _, checkpoint, _ = trained
    other = Hlgfa(**{**TINY, "hidden_channels": 4}, image_size=(64, 64))
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"shape of model\.heads\.0\.input_projection\.weight: checkpoint \(8,"):
        engine.test(model=other, datamodule=_tiny_datamodule(tiny_dataset), ckpt_path=checkpoint)
