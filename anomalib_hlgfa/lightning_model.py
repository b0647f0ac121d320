"""HLGFA as an anomalib model: High-Low resolution Guided Feature Alignment.

HLGFA learns, from defect-free images only, to predict an image's high-resolution backbone features
from its low-resolution ones, guided by compact structure and detail priors from the high-resolution
view. Where the prediction and the high-resolution features disagree, there is an anomaly.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_hlgfa import Hlgfa
    >>> engine = Engine()
    >>> engine.train(model=Hlgfa(), datamodule=MVTecAD(root="datasets/MVTecAD", category="bottle"))

    From the command line, once the package is installed::

        anomalib train --model Hlgfa --data anomalib.data.MVTecAD --data.category bottle
"""

import math
from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

import timm
import torch
from anomalib import LearningType
from anomalib.data import AnomalibDataModule, Batch
from anomalib.data.utils.tiler import ImageUpscaleMode, Tiler
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim
from torchvision.transforms.v2 import Compose, Normalize, Resize

from .anomaly_map import Misalignment, ScoreReduction
from .augmentation import Nuisance, NuisanceAugmentation, NuisanceConfig
from .backbone import fold_legacy_state_dict
from .loss import AlignmentLoss
from .quantization import quantize_int8
from .torch_model import DEFAULT_BACKBONE, DEFAULT_LAYERS, DetailPrior, HlgfaModel

if TYPE_CHECKING:
    import openvino as ov


class AugmentTrainingBatches(Callback):
    """Add the model's nuisances to each training batch, on its device, before the pre-processor.

    Lightning runs a model's callbacks in the order ``configure_callbacks`` returns them, so this one adds
    nuisances to the ``[0, 1]`` images before the pre-processor resizes and normalises them. It only
    has a training hook: validation (which fits the thresholds), test and predict see the images as they are.
    """

    def on_train_batch_start(self, trainer: Trainer, pl_module: "Hlgfa", batch: Batch, batch_idx: int) -> None:
        """Augment the batch's images; with clean heads only the second part (``clean_part`` leaves the first)."""
        del trainer, batch_idx  # Unused
        if pl_module.augmentation is None:
            return
        if pl_module.model.clean_heads is None:
            batch.image = pl_module.augmentation(batch.image)
            return
        clean = clean_part(len(batch.image))
        batch.image = torch.cat([batch.image[:clean], pl_module.augmentation(batch.image[clean:])])


def clean_part(batch_size: int) -> int:
    """How many images of a training batch stay clean for the clean heads: the first quarter, at least one.

    The clean heads learn from that part of every batch and the augmented heads from the rest, so training
    costs what one head set on whole batches costs (the backbone sees each image once). The augmented heads,
    which score the images, need more of the data than the clean heads, which sharpen the map: with half
    the batch clean, magnetic_tile's clean image AUROC fell 1.0 point more than with a quarter (seed 0), and the
    clean heads localised as well with a quarter (docs/robustness.md). A batch of one image (an epoch's
    last, say) goes to the augmented heads alone; ``Hlgfa`` refuses a training batch size of 1.
    """
    return max(1, batch_size // 4) if batch_size >= 2 else 0


# Arguments that define the network or its computation: a checkpoint only fits a model built with its values.
ARCHITECTURE_ARGUMENTS = (
    "backbone",
    "layers",
    "downsample_factor",
    "hidden_channels",
    "prior_channels",
    "structure_window",
    "detail_prior",
    "anomaly_map_sigma",
    "misalignment",
    "clean_heads",
)
ARCHITECTURE_KEY = "hlgfa_architecture"
# Architecture arguments added after checkpoints were first saved, with the value those checkpoints hold.
VALUES_BEFORE_THE_ARGUMENT = {"detail_prior": DetailPrior.RESIDUE.value, "clean_heads": False}
OBSOLETE_BLUR_KERNEL = "anomaly_map_generator.blur.kernel"  # saved by versions before the separable blur
BACKBONE_STATE_PREFIX = "model.feature_extractor.feature_extractor."
# The tiling a model was trained and validated with (set by anomalib's TilerConfigurationCallback).
TILER_KEY = "hlgfa_tiler"


def tiler_settings(tiler: Tiler | None) -> dict[str, Any] | None:
    """A tiler's settings as plain values for a checkpoint, or ``None`` without tiling."""
    if tiler is None:
        return None
    return {
        "tile_size": [int(tiler.tile_size_h), int(tiler.tile_size_w)],
        "stride": [int(tiler.stride_h), int(tiler.stride_w)],
        "remove_border_count": int(tiler.remove_border_count),
        "mode": ImageUpscaleMode(tiler.mode).value,
    }


def _plain(value: Any) -> Any:  # noqa: ANN401
    """Compare sequences as lists (a checkpoint may hold ``layers`` as a tuple or a list) and enums as values."""
    if isinstance(value, Enum):
        return value.value
    return list(value) if isinstance(value, list | tuple) else value


class Hlgfa(AnomalibModule):
    """HLGFA Lightning module.

    Args:
        backbone (str): timm CNN whose frozen features are aligned. The default,
            ``"tf_efficientnet_lite0"``, loads ImageNet weights offline; other names download from the
            model hub. Defaults to ``"tf_efficientnet_lite0"``.
        layers (Sequence[str]): Backbone levels to align. Defaults to ``("blocks.2", "blocks.4", "blocks.6")``
            (strides 8, 16 and 32; measured in ``docs/ablation.md``).
        pre_trained (bool): Use ImageNet weights; ``False`` only for tests. Defaults to ``True``.
        downsample_factor (int): Integer factor between the input and its low-resolution view.
            Defaults to ``2``.
        hidden_channels (int): Width of each per-level refinement head. Defaults to ``64``.
        prior_channels (int): Channels of each structure and detail prior. Defaults to ``8``.
        structure_window (int): Low-pass window, in feature cells, splitting structure from detail.
            Defaults to ``4``.
        detail_prior (DetailPrior | str): What the detail prior driving the gate carries: ``"residue"``, the
            high-pass residue itself, or ``"energy"``, its local energy (where and how much detail, not its
            pattern; better without augmentation, mixed with the default augmentation: ``docs/ablation.md``).
            Defaults to ``"residue"``.
        anomaly_map_sigma (float): Gaussian smoothing of the anomaly map, in pixels. Defaults to ``4``.
        score_reduction (ScoreReduction | str): Image score from the map: ``"max"`` or ``"topk_mean"``
            (the mean of the top ``topk_ratio`` of pixels). Defaults to ``"topk_mean"``.
        topk_ratio (float): Fraction of pixels averaged by ``"topk_mean"``. Defaults to ``0.01``.
        misalignment (Misalignment | str): How prediction and high-resolution features are compared:
            ``"standardised_rms_cosine"`` (features standardised per channel with statistics of the clean
            training images, fitted at the start of training; the map is their root-mean-square
            difference, images are scored from the geometric mean of that difference and the cosine
            distance), ``"standardised_rms"`` (the same, images scored from the map) or ``"cosine"``
            (the cosine distance of the raw features; the default before 0.3). Measured in
            ``docs/ablation.md`` and ``docs/robustness.md``. Defaults to ``"standardised_rms_cosine"``.
        augmentation (NuisanceConfig | None): Noise-aware augmentation of the training images (dust,
            fibres, stains, illumination, sensor noise, blur), applied to training batches only, never in
            validation, test or predict. ``None`` trains on the images as they are. Defaults to
            ``NuisanceConfig()``, the measured defaults.
        clean_heads (bool): With augmentation, train a second set of heads on the clean images beside the
            heads that learn the augmented ones; the anomaly map is the per-pixel minimum of both sets' maps
            and the image score comes from the augmented heads. This keeps the localisation of a model
            trained without nuisances and the robustness of one trained with them (``docs/robustness.md``),
            at twice the heads' share of inference. The clean heads learn from the first quarter of every
            training batch, left clean, and the augmented heads from the rest, so training costs what one set
            costs. Without augmentation there is one head set whatever this says. Defaults to ``True``.
        learning_rate (float): AdamW learning rate. Defaults to ``1e-3``.
        weight_decay (float): AdamW weight decay. Defaults to ``1e-4``.
        max_epochs (int | None): Training epochs; it sets the trainer's ``max_epochs``, and validation
            (which fits the post-processor's thresholds) runs once, after the last epoch. ``None`` leaves
            both to the trainer's own arguments. Defaults to ``10``.
        image_size (tuple[int, int]): Height and width of the default pre-processor's resize.
            Defaults to ``(256, 256)``.
        pre_processor (PreProcessor | bool): Pre-processor, or ``True`` for the default: resize to
            ``image_size`` and the backbone's own normalisation. Defaults to ``True``.
        post_processor (PostProcessor | bool): Post-processor or flag. Defaults to ``True``.
        evaluator (Evaluator | bool): Evaluator or flag; the default computes image AUROC and F1,
            pixel AUROC, F1 and AUPRO. Defaults to ``True``.
        visualizer (Visualizer | bool): Visualizer or flag. Defaults to ``True``.
    """

    @classmethod
    def checkpoint_safe_globals(cls) -> Sequence[Any]:
        """Allowlist the enums and the augmentation settings for ``weights_only`` checkpoint loads."""
        return (ScoreReduction, Misalignment, DetailPrior, NuisanceConfig, Nuisance)

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        layers: Sequence[str] = DEFAULT_LAYERS,
        pre_trained: bool = True,
        downsample_factor: int = 2,
        hidden_channels: int = 64,
        prior_channels: int = 8,
        structure_window: int = 4,
        detail_prior: DetailPrior | str = DetailPrior.RESIDUE,
        anomaly_map_sigma: float = 4.0,
        score_reduction: ScoreReduction | str = ScoreReduction.TOPK_MEAN,
        topk_ratio: float = 0.01,
        misalignment: Misalignment | str = Misalignment.STANDARDISED_RMS_COSINE,
        augmentation: NuisanceConfig | None = NuisanceConfig(),  # noqa: B008 (frozen, so safe to share)
        clean_heads: bool = True,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        max_epochs: int | None = 10,
        image_size: tuple[int, int] = (256, 256),
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs < 1):
            msg = f"max_epochs must be a positive integer or None (use the trainer's), got {max_epochs!r}."
            raise ValueError(msg)
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(image_size=tuple(image_size), backbone=backbone)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = HlgfaModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            downsample_factor=downsample_factor,
            hidden_channels=hidden_channels,
            prior_channels=prior_channels,
            structure_window=structure_window,
            detail_prior=detail_prior,
            anomaly_map_sigma=anomaly_map_sigma,
            score_reduction=score_reduction,
            topk_ratio=topk_ratio,
            misalignment=misalignment,
            clean_heads=clean_heads and augmentation is not None,
        )
        self.loss = AlignmentLoss(misalignment)
        self.augmentation = NuisanceAugmentation(augmentation) if augmentation is not None else None
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs

    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        backbone: str = DEFAULT_BACKBONE,
    ) -> PreProcessor:
        """Resize, then normalise with the backbone's own statistics.

        ``tf_efficientnet_lite0`` was trained on inputs scaled to ``[-1, 1]`` (mean and std 0.5), not
        with the ImageNet mean and std, so the statistics come from the backbone's timm config.

        Args:
            image_size (tuple[int, int] | None): Height and width. Defaults to ``(256, 256)``.
            backbone (str): timm backbone name. Defaults to ``"tf_efficientnet_lite0"``.

        Returns:
            PreProcessor: The pre-processor.
        """
        config = timm.get_pretrained_cfg(backbone)
        mean, std = (config.mean, config.std) if config is not None else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        return PreProcessor(
            transform=Compose([Resize(image_size or (256, 256), antialias=True), Normalize(mean=mean, std=std)]),
        )

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Image AUROC and F1; pixel AUROC, F1 and AUPRO, on the test set."""
        return Evaluator(
            test_metrics=[
                AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
                F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
                AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
                F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
                AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            ],
        )

    def configure_optimizers(self) -> optim.Optimizer:
        """AdamW over the refinement heads (both sets): the backbone is frozen and gets no parameter updates."""
        parameters = [*self.model.heads.parameters()]
        if self.model.clean_heads is not None:
            parameters += self.model.clean_heads.parameters()
        return optim.AdamW(parameters, lr=self.learning_rate, weight_decay=self.weight_decay)

    def on_train_start(self) -> None:
        """Refuse to train on nothing, or to leave the thresholds unfitted, before the first step.

        Lightning skips an empty training set with a warning, and an empty validation split (an MVTec
        folder without ``test/``) leaves the post-processor's thresholds at NaN: both would end in a model
        that looks trained and is not.

        Raises:
            ValueError: If there are no training batches, or the datamodule's validation split is empty
                while a post-processor needs it, or the clean heads would get no clean images (batch size 1).
        """
        if self.trainer.num_training_batches == 0:
            msg = (
                "HLGFA has no training images: the training dataloader is empty. Check the data root and "
                "category (MVTec layout: ROOT/CATEGORY/train/good/*.png)."
            )
            raise ValueError(msg)
        datamodule = self.trainer.datamodule
        val_data = getattr(datamodule, "val_data", None)
        if self.post_processor is not None and val_data is not None and len(val_data) == 0:
            msg = (
                f"The validation split of {type(datamodule).__name__} is empty, so the post-processor's "
                "thresholds cannot be fitted (they would stay NaN). Give validation images (MVTec layout: "
                "ROOT/CATEGORY/test/good and ROOT/CATEGORY/test/DEFECT, with ground_truth masks), or pass "
                "post_processor=False to train without thresholds."
            )
            raise ValueError(msg)
        batch_size = getattr(self.trainer.train_dataloader, "batch_size", None)
        if self.model.clean_heads is not None and batch_size is not None and batch_size < 2:
            msg = (
                f"HLGFA's clean heads learn from part of each training batch, so they need batches of at least "
                f"2 images; the training batch size is {batch_size}. Raise it (train_batch_size, or "
                "--data.train_batch_size), or train one head set with clean_heads=False."
            )
            raise ValueError(msg)
        if self.augmentation is not None:
            # Reproducible per fit, and different nuisances on each distributed process.
            self.augmentation.reseed(self.augmentation.config.seed + self.global_rank)
        if self.model.standardization:
            self._fit_feature_statistics()

    def _fit_feature_statistics(self) -> None:
        """Standardise the backbone features with their per-channel statistics on the training images.

        One pass over the training dataloader, pre-processed as training batches are but without the
        nuisance augmentation: the statistics describe the clean normal images. Under distributed training
        the moments are summed over every process, so all of them standardise alike.
        """
        totals: list[torch.Tensor] | None = None
        for batch in self.trainer.train_dataloader:
            images = batch.image.to(self.device)
            if self.pre_processor is not None and self.pre_processor.transform is not None:
                images = self.pre_processor.transform(images)
            moments = self.model.feature_moments(images)
            totals = moments if totals is None else [total + m for total, m in zip(totals, moments, strict=True)]
        if totals is None:  # on_train_start has already refused an empty training set
            return
        totals = [self.trainer.strategy.reduce(total, reduce_op="sum") for total in totals]
        self.model.set_feature_statistics(totals)

    def configure_callbacks(self) -> list[Callback]:
        """Put the training augmentation first, so that it sees images before the pre-processor does."""
        return [AugmentTrainingBatches(), *super().configure_callbacks()]

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Align refined low-resolution features with high-resolution features of normal images.

        Args:
            batch (Batch): Normal training images ``(B, 3, H, W)``; with clean heads the first ``clean_part(B)``
                are clean, the rest augmented (see :class:`AugmentTrainingBatches`).
            args: Unused.
            kwargs: Unused.

        Returns:
            STEP_OUTPUT: The alignment loss (with clean heads, the sum of both head sets' losses).
        """
        del args, kwargs  # These variables are not used.
        if self.model.clean_heads is None:
            loss = self.loss(*self.model(batch.image))
        else:
            # AugmentTrainingBatches left the first part of the batch clean and augmented the rest. Each head
            # set has its own loss term, so the sum gives each the gradient it would have had alone.
            clean = clean_part(len(batch.image))
            loss = self.loss(*self.model(batch.image[clean:]))
            if clean > 0:  # a last batch of one image has no clean part
                loss = loss + self.loss(*self.model(batch.image[:clean], clean=True))
        value = loss.item()
        self._stop_if_not_finite(value)
        self.log("train_loss", value, on_epoch=True, prog_bar=True, logger=True, batch_size=len(batch.image))
        return {"loss": loss}

    def _stop_if_not_finite(self, loss: float) -> None:
        """Stop training, with what to change, when the loss is NaN or infinite on any process.

        Raising before ``backward`` keeps the non-finite loss out of the weights, and Lightning saves no
        checkpoint for an interrupted epoch (anomalib's checkpoint callback saves at epoch ends). Under
        distributed training every process takes the same decision, so none is left waiting for the others.

        Args:
            loss (float): This process's loss for the current batch.

        Raises:
            FloatingPointError: If the loss is NaN or infinite on any process.
        """
        finite = math.isfinite(loss)
        if self._trainer is not None:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        where = f" at epoch {self.current_epoch}, step {self.global_step}" if self._trainer is not None else ""
        msg = (
            f"HLGFA's training loss is not finite ({loss} on this process){where}: training stopped and no "
            "checkpoint of this epoch was written (checkpoints written earlier, if any, hold the model of the "
            "last completed epoch). To fix: lower learning_rate (now "
            f"{self.learning_rate:g}; the default is 1e-3), and check the training images and any custom "
            "pre-processor for NaN or infinite values."
        )
        raise FloatingPointError(msg)

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict anomaly maps and scores for the post-processor's thresholds and normalisation.

        Args:
            batch (Batch): Validation images.
            args: Unused.
            kwargs: Unused.

        Returns:
            STEP_OUTPUT: The batch with ``pred_score`` and ``anomaly_map``.
        """
        del args, kwargs  # These variables are not used.
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also save the architecture arguments where loading cannot overwrite them (see ``on_load_checkpoint``).

        And the tiling, if any: it is not an argument but set by anomalib's ``TilerConfigurationCallback``.
        """
        super().on_save_checkpoint(checkpoint)
        checkpoint[ARCHITECTURE_KEY] = self._architecture()
        # The thresholds were fitted on tiled maps: a reload (test, predict, export) must tile the same way.
        checkpoint[TILER_KEY] = tiler_settings(self.model.tiler)

    def _architecture(self) -> dict[str, Any]:
        """The architecture arguments as built (``clean_heads`` is ``False`` without augmentation)."""
        architecture = {name: _plain(self.hparams[name]) for name in ARCHITECTURE_ARGUMENTS if name in self.hparams}
        return architecture | {"clean_heads": self.model.clean_heads is not None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the tiling the checkpoint was made with; refuse another architecture, naming what differs.

        Lightning loads state dicts strictly, but its error lists tensor names and shapes, and the
        arguments that change the computation without changing a tensor shape (``downsample_factor``,
        ``structure_window``) would load silently into a different model. Checked for
        ``Hlgfa.load_from_checkpoint`` and for ``ckpt_path`` in the engine and CLI alike.

        Args:
            checkpoint (dict[str, Any]): The loaded checkpoint.

        Raises:
            ValueError: If an architecture argument or the state dict's keys or shapes differ.
        """
        super().on_load_checkpoint(checkpoint)
        settings = checkpoint.get(TILER_KEY)
        if settings is not None and self.model.tiler is None:  # a TilerConfigurationCallback's tiler wins
            self.model.tiler = Tiler(**{**settings, "mode": ImageUpscaleMode(settings["mode"])})
        # Not the "hyper_parameters": load_from_checkpoint has already merged its keyword arguments into them.
        saved = {**VALUES_BEFORE_THE_ARGUMENT, **checkpoint.get(ARCHITECTURE_KEY, {})}
        if "clean_heads" not in checkpoint.get(ARCHITECTURE_KEY, {}):
            # Before 0.7 there was one head set, whatever the augmentation; the default now adds clean heads.
            self.model.clean_heads = None
            self.hparams["clean_heads"] = False
        architecture = self._architecture()
        differing = [
            f"{name}: checkpoint {_plain(saved[name])!r}, this model {architecture[name]!r}"
            for name in ARCHITECTURE_ARGUMENTS
            if name in saved and name in architecture and _plain(saved[name]) != architecture[name]
        ]
        state, own = checkpoint.get("state_dict", {}), self.state_dict()
        # Checkpoints from before the separable blur stored its fixed 2-D kernel; the same Gaussian is rebuilt.
        for key in [key for key in state if key.endswith(OBSOLETE_BLUR_KERNEL) and key not in own]:
            del state[key]
        # Checkpoints from before batch-norm folding stored the backbone's batch norms: fold them the same way.
        legacy = {key: state[key] for key in state if key.startswith(BACKBONE_STATE_PREFIX)}
        if any(key.endswith(".running_mean") and key not in own for key in legacy):
            for key in legacy:
                del state[key]
            folded = fold_legacy_state_dict(
                {key.removeprefix(BACKBONE_STATE_PREFIX): value for key, value in legacy.items()},
                self.model.backbone_name,
                self.model.layers,
            )
            state.update({BACKBONE_STATE_PREFIX + key: value for key, value in folded.items()})
        mismatches = [
            *(f"missing from the checkpoint: {key}" for key in own if key not in state),
            *(f"not in this model: {key}" for key in state if key not in own),
            *(
                f"shape of {key}: checkpoint {tuple(state[key].shape)}, this model {tuple(own[key].shape)}"
                for key in own
                if key in state and hasattr(state[key], "shape") and state[key].shape != own[key].shape
            ),
        ]
        if not differing and not mismatches:
            return
        if "misalignment" not in saved and any(".standardization." in m for m in mismatches):
            # Checkpoints of 0.1 predate the argument: they hold a cosine model.
            differing.append("misalignment: the checkpoint predates it (cosine); pass misalignment='cosine'")
        details = differing + mismatches[:5] + ([f"... and {len(mismatches) - 5} more"] if len(mismatches) > 5 else [])
        msg = (
            "This checkpoint does not fit this HLGFA model's configuration:\n  "
            + "\n  ".join(details)
            + "\nLoad it with the configuration it was trained with: leave out the overriding arguments "
            "(Hlgfa.load_from_checkpoint(path) restores them), or pass the checkpoint's values."
        )
        raise ValueError(msg)

    @staticmethod
    def _post_training_quantization_ov(model: "ov.Model", datamodule: AnomalibDataModule | None = None) -> "ov.Model":
        """INT8 PTQ for ``export --compression_type INT8_PTQ``: backbone and heads, calibrated on training images.

        Replaces anomalib's default, which quantises the anomaly-map computation too (collapsing all
        scores) and calibrates on the validation split. See :mod:`anomalib_hlgfa.quantization`.
        """
        return quantize_int8(model, datamodule)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping or sanity validation; ``max_epochs`` epochs, validated after the last."""
        arguments: dict[str, Any] = {"gradient_clip_val": 0, "num_sanity_val_steps": 0}
        if self.max_epochs is not None:
            arguments |= {"max_epochs": self.max_epochs, "check_val_every_n_epoch": self.max_epochs}
        return arguments

    @property
    def learning_type(self) -> LearningType:
        """HLGFA trains on normal images only."""
        return LearningType.ONE_CLASS
