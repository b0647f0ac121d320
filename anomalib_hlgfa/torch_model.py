"""PyTorch model of HLGFA: High-Low resolution Guided Feature Alignment.

The model learns, from normal images only, to predict the high-resolution features of an image from
the features of its low-resolution view, guided by compact priors taken from the high-resolution
features. Where prediction and reality disagree, there is an anomaly.

Forward pass, all inside the model so that an exported graph carries it:

1. The low-resolution view is made by area (box-filter) downsampling by ``downsample_factor``, which
   antialiases.
2. One frozen backbone extracts multi-level features from both views (with a standardised
   misalignment, ``"standardised_rms"`` or ``"standardised_rms_cosine"``, standardised per channel with
   the statistics of normal training images, see ``set_feature_statistics``).
3. Per level, the high-resolution features are split into a structure prior (low-pass) and a detail
   prior (the high-pass residue, or its local energy), each projected to a few channels so that they
   cannot carry the high-resolution features themselves (no identity shortcut).
4. The low-resolution features, upsampled to the high-resolution grid, are normalised and modulated
   by scale and shift maps predicted from the structure prior (SPADE-style).
5. A gate driven by the detail prior decides where a residual correction is added.
6. A 1x1 projection gives the prediction of the high-resolution features. Training aligns it with
   them; at inference the per-level misalignment gives the anomaly map and image score.

Example:
    >>> model = HlgfaModel(pre_trained=False).eval()
    >>> output = model(torch.rand(2, 3, 256, 256))
    >>> output.anomaly_map.shape, output.pred_score.shape
    (torch.Size([2, 1, 256, 256]), torch.Size([2]))
"""

import warnings
from collections.abc import Sequence
from enum import Enum

import torch
from anomalib.data import InferenceBatch
from anomalib.data.utils.tiler import Tiler
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .anomaly_map import AnomalyMapGenerator, Misalignment, ScoreReduction
from .backbone import OFFLINE_BACKBONE, create_feature_extractor

DEFAULT_BACKBONE = OFFLINE_BACKBONE  # ImageNet weights without a model hub
DEFAULT_LAYERS = ("blocks.2", "blocks.4", "blocks.6")
DETAIL_ENERGY_EPSILON = 1e-6


def low_pass(features: torch.Tensor, window: int) -> torch.Tensor:
    """Keep the low spatial frequencies: average over ``window`` x ``window`` cells, upsample back.

    Args:
        features (torch.Tensor): Feature map ``(B, C, h, w)``.
        window (int): Side of the averaging window, in feature cells.

    Returns:
        torch.Tensor: Smooth feature map ``(B, C, h, w)``.
    """
    pooled = F.avg_pool2d(features, kernel_size=window, stride=window, ceil_mode=True)
    return F.interpolate(pooled, size=features.shape[-2:], mode="bilinear", align_corners=False)


class FeatureStandardization(nn.Module):
    """Standardise one feature level per channel with fixed statistics of normal images.

    The statistics are buffers: saved in checkpoints and carried into exported graphs as constants.
    Until they are fitted (mean 0, standard deviation 1) the features pass unchanged, and ``fitted`` (a
    plain attribute, set by ``fit`` and by loading fitted buffers) is ``False``.

    Args:
        channels (int): Channels of the feature level.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))
        self.fitted = False

    @staticmethod
    def moments(features: torch.Tensor) -> torch.Tensor:
        """Per-channel count, sum and sum of squares of features ``(B, C, h, w)``, to fit the statistics.

        Returns:
            torch.Tensor: ``(3, C)`` float64: the number of positions (in every column), the sums and the
            sums of squares. Moments of several batches (and processes) add up.
        """
        values = features.double().transpose(0, 1).flatten(start_dim=1)  # (C, B * h * w)
        count = torch.full_like(values[:, 0], values.shape[1])
        return torch.stack([count, values.sum(dim=1), values.pow(2).sum(dim=1)])

    @torch.no_grad()
    def fit(self, moments: torch.Tensor) -> None:
        """Set the mean and the (unbiased) standard deviation from summed ``moments`` ``(3, C)``.

        Raises:
            ValueError: If the moments hold fewer than two positions.
        """
        count, total, total_of_squares = moments
        if float(count.min()) < 2:
            msg = "Feature statistics need at least two feature positions: give more or larger images."
            raise ValueError(msg)
        mean = total / count
        variance = (total_of_squares / count - mean.pow(2)).clamp_min(0) * count / (count - 1)
        # A channel that never varies on normal images would divide by zero: floor its scale.
        std = variance.sqrt().clamp_min(1e-6 * float(variance.sqrt().max().clamp_min(1e-12)))
        self.mean.copy_(mean.reshape_as(self.mean))
        self.std.copy_(std.reshape_as(self.std))
        self.fitted = True

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Load the buffers, and take them as fitted unless they are the unfitted identity."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.fitted = not (bool((self.mean == 0).all()) and bool((self.std == 1).all()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Standardise features ``(B, C, h, w)``."""
        return (features - self.mean) / self.std


class DetailPrior(str, Enum):
    """What the detail prior carries to the gate: how much high-frequency detail there is, or the detail itself."""

    ENERGY = "energy"
    RESIDUE = "residue"


class PriorDecomposition(nn.Module):
    """Split high-resolution features into compressed structure and detail priors.

    Args:
        channels (int): Channels of the high-resolution feature level.
        prior_channels (int): Channels of each prior; few, so the priors guide but cannot copy.
        structure_window (int): Low-pass window in feature cells; larger means a coarser structure prior.
        detail_prior (DetailPrior | str): ``"energy"``: the local root-mean-square of the projected
            high-pass residue over the structure window, which says where and how much detail there is but
            not what it looks like (better without augmentation, mixed with the default augmentation:
            ``docs/ablation.md``); ``"residue"``: the projected high-pass residue itself. Defaults to
            ``"residue"``.
    """

    def __init__(
        self,
        channels: int,
        prior_channels: int,
        structure_window: int,
        detail_prior: DetailPrior | str = DetailPrior.RESIDUE,
    ) -> None:
        super().__init__()
        self.structure_window = structure_window
        self.detail_prior = DetailPrior(detail_prior)
        self.structure_projection = nn.Conv2d(channels, prior_channels, kernel_size=1)
        self.detail_projection = nn.Conv2d(channels, prior_channels, kernel_size=1)

    def forward(self, high_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute the priors.

        The 1x1 projections are linear, so projecting before the low-pass gives the same priors as
        projecting after it, at a fraction of the cost.

        Args:
            high_features (torch.Tensor): High-resolution features ``(B, C, h, w)``.

        Returns:
            tuple[torch.Tensor, torch.Tensor]: Structure and detail priors, each ``(B, P, h, w)``.
        """
        structure = low_pass(self.structure_projection(high_features), self.structure_window)
        detail = self.detail_projection(high_features)
        detail = detail - low_pass(detail, self.structure_window)
        if self.detail_prior == DetailPrior.ENERGY:
            # Pooled energy, not the pattern: the epsilon keeps the root's gradient finite where detail is 0.
            detail = (low_pass(detail.square(), self.structure_window) + DETAIL_ENERGY_EPSILON).sqrt()
        return structure, detail


ABLATIONS = ("full", "no_structure_prior", "no_detail_prior", "no_modulation", "no_gate", "single_resolution")
"""Variants of the refinement head for ablation studies; ``"full"`` is the method.

- ``no_structure_prior``: the modulation sees no structure prior (zeros): a learned constant scale and shift.
- ``no_detail_prior``: the gate sees no detail prior (zeros): a learned constant gate.
- ``no_modulation``: the structure prior is concatenated to the input instead of modulating it.
- ``no_gate``: the detail prior is concatenated to the residual branch's input; the residual is added ungated.
- ``single_resolution``: no low-resolution view; the head predicts the high-resolution features from a
  copy of themselves squeezed through a 1x1 bottleneck of ``channels // 4`` channels (the information of a
  2x-downsampled view), given the same priors.
"""


class RefinementHead(nn.Module):
    """Refine upsampled low-resolution features into a prediction of the high-resolution ones.

    Args:
        channels (int): Channels of the feature level (input and output).
        hidden_channels (int): Width of the head.
        prior_channels (int): Channels of the structure and detail priors.
        structure_window (int): Low-pass window of the prior decomposition, in feature cells.
        detail_prior (DetailPrior | str): What the detail prior carries, see :class:`PriorDecomposition`.
            Defaults to ``"residue"``.
        ablation (str): ``"full"`` (the method) or one of :data:`ABLATIONS`, for ablation studies.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        prior_channels: int,
        structure_window: int,
        detail_prior: DetailPrior | str = DetailPrior.RESIDUE,
        ablation: str = "full",
    ) -> None:
        super().__init__()
        if ablation not in ABLATIONS:
            msg = f"Unknown ablation {ablation!r}: choose from {ABLATIONS}."
            raise ValueError(msg)
        self.ablation = ablation
        concat_structure = prior_channels if ablation == "no_modulation" else 0
        concat_detail = prior_channels if ablation == "no_gate" else 0
        self.priors = PriorDecomposition(channels, prior_channels, structure_window, detail_prior)
        if ablation == "single_resolution":
            bottleneck = max(1, channels // 4)
            self.input_projection = nn.Sequential(
                nn.Conv2d(channels, bottleneck, kernel_size=1),
                nn.Conv2d(bottleneck, hidden_channels, kernel_size=1),
            )
        else:
            self.input_projection = nn.Conv2d(channels + concat_structure, hidden_channels, kernel_size=1)
        self.norm = nn.InstanceNorm2d(hidden_channels, affine=False)
        self.modulation = nn.Conv2d(prior_channels, 2 * hidden_channels, kernel_size=3, padding=1)
        self.gate = nn.Conv2d(prior_channels, hidden_channels, kernel_size=3, padding=1)
        self.residual = nn.Sequential(
            nn.Conv2d(hidden_channels + concat_detail, hidden_channels, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden_channels, hidden_channels, kernel_size=3, padding=1),
        )
        self.output_projection = nn.Conv2d(hidden_channels, channels, kernel_size=1)
        # Start from an unmodulated, ungated head: the priors' influence is learned from zero.
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, low_features: torch.Tensor, high_features: torch.Tensor) -> torch.Tensor:
        """Predict the high-resolution features.

        Args:
            low_features (torch.Tensor): Low-resolution features on the high-resolution grid ``(B, C, h, w)``
                (for the ``single_resolution`` ablation, the high-resolution features themselves).
            high_features (torch.Tensor): High-resolution features ``(B, C, h, w)``, seen only through the priors.

        Returns:
            torch.Tensor: Predicted high-resolution features ``(B, C, h, w)``.
        """
        structure, detail = self.priors(high_features)
        if self.ablation == "full":  # the exported path: no ablation branches
            scale, shift = self.modulation(structure).chunk(2, dim=1)
            modulated = self.norm(self.input_projection(low_features)) * (1 + scale) + shift
            refined = modulated + torch.sigmoid(self.gate(detail)) * self.residual(modulated)
            return self.output_projection(refined)
        return self._ablated_forward(low_features, structure, detail)

    def _ablated_forward(
        self, low_features: torch.Tensor, structure: torch.Tensor, detail: torch.Tensor
    ) -> torch.Tensor:
        """The forward pass of an ablation variant (see :data:`ABLATIONS`)."""
        if self.ablation == "no_structure_prior":
            structure = torch.zeros_like(structure)
        if self.ablation == "no_detail_prior":
            detail = torch.zeros_like(detail)
        if self.ablation == "no_modulation":
            modulated = self.norm(self.input_projection(torch.cat([low_features, structure], dim=1)))
        else:
            scale, shift = self.modulation(structure).chunk(2, dim=1)
            modulated = self.norm(self.input_projection(low_features)) * (1 + scale) + shift
        if self.ablation == "no_gate":
            refined = modulated + self.residual(torch.cat([modulated, detail], dim=1))
        else:
            refined = modulated + torch.sigmoid(self.gate(detail)) * self.residual(modulated)
        return self.output_projection(refined)


def minimum_input_size(deepest_stride: int, downsample_factor: int, blur_radius: int = 0) -> int:
    """Smallest image side HLGFA can process.

    The low-resolution view must cover at least one cell of the deepest feature level, so the input
    side must be at least ``deepest_stride * downsample_factor``; and the anomaly map's Gaussian
    smoothing pads by reflection, which needs a side larger than its radius.

    Args:
        deepest_stride (int): Stride of the deepest backbone level used, in input pixels.
        downsample_factor (int): Factor between the input and its low-resolution view.
        blur_radius (int): Radius, in pixels, of the anomaly map's smoothing kernel. Defaults to ``0``.

    Returns:
        int: The minimum height and width, in pixels.
    """
    return max(deepest_stride * downsample_factor, blur_radius + 1)


class HlgfaModel(nn.Module):
    """HLGFA: a frozen backbone on two views and per-level refinement heads.

    Args:
        backbone (str): timm CNN name. Defaults to ``"tf_efficientnet_lite0"``, whose ImageNet weights
            load offline.
        layers (Sequence[str]): Backbone feature levels to align. Defaults to ``("blocks.2", "blocks.4", "blocks.6")``.
        pre_trained (bool): Load ImageNet weights into the backbone. Defaults to ``True``.
        downsample_factor (int): Integer factor between the input and its low-resolution view.
            Defaults to ``2``.
        hidden_channels (int): Width of each refinement head. Defaults to ``64``.
        prior_channels (int): Channels of each structure and detail prior. Defaults to ``8``.
        structure_window (int): Low-pass window, in feature cells, splitting structure from detail.
            Defaults to ``4``.
        detail_prior (DetailPrior | str): ``"residue"`` (the high-pass residue itself) or ``"energy"`` (its
            local energy: where and how much detail, not its pattern), see :class:`PriorDecomposition`.
            Defaults to ``"residue"``.
        anomaly_map_sigma (float): Gaussian smoothing of the anomaly map, in input pixels. Defaults to ``4``.
        score_reduction (ScoreReduction | str): ``"max"`` or ``"topk_mean"`` of the map. Defaults to ``"topk_mean"``.
        topk_ratio (float): Fraction of pixels averaged by ``"topk_mean"``. Defaults to ``0.01``.
        misalignment (Misalignment | str): ``"cosine"`` (cosine distance of the raw features),
            ``"standardised_rms"`` (root-mean-square difference of per-channel standardised features, whose
            statistics must be fitted with ``set_feature_statistics``; ``Hlgfa`` does it at the start of
            training) or ``"standardised_rms_cosine"`` (the same map; the image score from the geometric
            mean of that difference and the cosine distance, see ``AnomalyMapGenerator``). Defaults to
            ``"standardised_rms_cosine"``.
        clean_heads (bool): Add a second set of heads, ``clean_heads``, to be trained on clean images while
            ``heads`` learn images with nuisances: the anomaly map is then the per-pixel minimum of both sets'
            maps, the image score that of ``heads`` (see :meth:`AnomalyMapGenerator.maps`). Defaults to ``False``.
    """

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
        clean_heads: bool = False,
    ) -> None:
        super().__init__()
        self.misalignment = Misalignment(misalignment)
        for name, value, minimum in (
            ("downsample_factor", downsample_factor, 2),
            ("hidden_channels", hidden_channels, 1),
            ("prior_channels", prior_channels, 1),
            ("structure_window", structure_window, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                msg = f"{name} must be an integer >= {minimum}, got {value!r}."
                raise ValueError(msg)
        self.downsample_factor = downsample_factor
        self.feature_extractor = create_feature_extractor(backbone, layers, pre_trained=pre_trained)
        # Only the standardised misalignment has statistics: cosine models keep 0.1's state dict.
        standardized = self.misalignment.standardised
        self.standardization = nn.ModuleList(
            FeatureStandardization(channels) for channels in (self.feature_extractor.out_dims if standardized else ())
        )

        def head_set() -> nn.ModuleList:
            return nn.ModuleList(
                RefinementHead(channels, hidden_channels, prior_channels, structure_window, detail_prior)
                for channels in self.feature_extractor.out_dims
            )

        self.heads = head_set()
        self.clean_heads = head_set() if clean_heads else None
        self.anomaly_map_generator = AnomalyMapGenerator(
            sigma=anomaly_map_sigma,
            score_reduction=score_reduction,
            topk_ratio=topk_ratio,
            misalignment=self.misalignment,
        )
        self.backbone_name, self.layers = backbone, list(layers)
        self._unfitted_warning_given = False
        # Set by anomalib's TilerConfigurationCallback: large images are then processed tile by tile.
        self.tiler: Tiler | None = None
        self.deepest_stride = max(self.feature_extractor.feature_extractor.feature_info.reduction())
        self.minimum_input_size = minimum_input_size(
            self.deepest_stride,
            downsample_factor,
            self.anomaly_map_generator.blur_radius,
        )

    def __setstate__(self, state: dict) -> None:
        """Unpickle, also torch exports made before tiling support (0.5.0 and earlier) or clean heads (0.6)."""
        super().__setstate__(state)
        self.__dict__.setdefault("tiler", None)
        if "clean_heads" not in self._modules:  # exports made before release 0.7 have one head set
            self.__dict__.setdefault("clean_heads", None)

    def check_input(self, images: torch.Tensor) -> None:
        """Raise a clear error for input the model cannot process, before any computation.

        Only static Python checks on the shape: nothing enters an exported graph.

        Args:
            images (torch.Tensor): The model's input.

        Raises:
            ValueError: If ``images`` is not ``(B, 3, H, W)`` or a side is below ``minimum_input_size``.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            msg = (
                f"HLGFA expects a batch of RGB images shaped (B, 3, H, W), got shape {tuple(images.shape)}. "
                "Add the batch dimension with images.unsqueeze(0) for a single image, and convert grayscale "
                "or RGBA images to 3-channel RGB."
            )
            raise ValueError(msg)
        height, width = int(images.shape[-2]), int(images.shape[-1])
        if min(height, width) < self.minimum_input_size:
            msg = (
                f"Input images of {height} x {width} pixels (height x width) are too small: with backbone "
                f"{self.backbone_name!r}, layers {self.layers} (deepest stride {self.deepest_stride}) and "
                f"downsample_factor {self.downsample_factor}, each side must be at least "
                f"{self.minimum_input_size} pixels. Resize the images to at least "
                f"{self.minimum_input_size} x {self.minimum_input_size} (image_size), or use shallower layers "
                "or a smaller downsample_factor."
            )
            raise ValueError(msg)

    def warn_if_unfitted(self) -> None:
        """Warn, once per model, when a standardised misalignment runs without fitted feature statistics.

        ``Hlgfa`` fits them at the start of training and checkpoints carry them; a bare ``HlgfaModel``
        must be given them with ``set_feature_statistics``, or its maps are in raw feature units. A Python
        check on a plain attribute: nothing enters an exported graph.
        """
        # getattr: torch exports pickled before these attributes existed hold trained, fitted models.
        if getattr(self, "_unfitted_warning_given", False) or all(
            getattr(standardization, "fitted", True) for standardization in self.standardization
        ):
            return
        warnings.warn(
            f"HlgfaModel runs with the {self.misalignment.value!r} misalignment but its feature statistics "
            "are not fitted, so features are not standardised and maps and scores are in raw feature units. "
            "Fit them on normal images with model.set_feature_statistics(model.feature_moments(images)) "
            "(summed over batches), train through the Hlgfa Lightning module (which does it), or load a "
            "trained checkpoint.",
            UserWarning,
            stacklevel=2,
        )
        self._unfitted_warning_given = True

    def low_resolution_view(self, images: torch.Tensor) -> torch.Tensor:
        """Downsample ``(B, 3, H, W)`` images by area averaging to ``(B, 3, ceil(H / f), ceil(W / f))``."""
        factor = self.downsample_factor
        return F.avg_pool2d(images, kernel_size=factor, stride=factor, ceil_mode=True)

    @torch.no_grad()
    def feature_moments(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per-channel sums of the high-resolution features and of their squares, to fit the statistics.

        Args:
            images (torch.Tensor): Normalised normal images ``(B, 3, H, W)``; with a ``tiler``, split into
                tiles first, as the model sees them.

        Returns:
            list[torch.Tensor]: Per level, ``(3, C_l)`` float64: the number of feature positions (in every
            column), the sums and the sums of squares. Sums over batches (and processes) add up.
        """
        self.check_input(images)
        if self.tiler is not None:
            self.check_tile_size(self.tiler)
            images = self.tiler.tile(images)
        images = images.contiguous(memory_format=torch.channels_last)
        return [FeatureStandardization.moments(features) for features in self.feature_extractor(images).values()]

    def set_feature_statistics(self, moments: Sequence[torch.Tensor]) -> None:
        """Set each level's standardisation from moments summed over normal images (``feature_moments``).

        Args:
            moments (Sequence[torch.Tensor]): Per level, ``(3, C_l)``: counts, sums and sums of squares.

        Raises:
            ValueError: If the model does not standardise, the moments do not match the levels, or they
                hold fewer than two positions.
        """
        if not self.standardization:
            msg = (
                "Feature statistics are only used with a standardised misalignment ('standardised_rms' or "
                f"'standardised_rms_cosine'), not {self.misalignment.value!r}."
            )
            raise ValueError(msg)
        if len(moments) != len(self.standardization):
            msg = f"Expected moments for {len(self.standardization)} feature levels, got {len(moments)}."
            raise ValueError(msg)
        for standardization, level_moments in zip(self.standardization, moments, strict=True):
            standardization.fit(level_moments)

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Extract both views' features: the heads' inputs and targets.

        Args:
            images (torch.Tensor): Normalised images ``(B, 3, H, W)``.

        Returns:
            tuple[list[torch.Tensor], list[torch.Tensor]]: Per level, the low-resolution features brought to the
            high-resolution grid and the high-resolution features (both standardised if the misalignment is),
            each ``(B, C_l, h_l, w_l)``.
        """
        images = images.contiguous(memory_format=torch.channels_last)  # matches the backbone's layout
        high = list(self.feature_extractor(images).values())
        low = list(self.feature_extractor(self.low_resolution_view(images)).values())
        if self.standardization:
            high = [standardize(features) for standardize, features in zip(self.standardization, high, strict=True)]
            low = [standardize(features) for standardize, features in zip(self.standardization, low, strict=True)]
        low = [
            F.interpolate(low_features, size=high_features.shape[-2:], mode="bilinear", align_corners=False)
            for low_features, high_features in zip(low, high, strict=True)
        ]
        return low, high

    @staticmethod
    def predict(heads: nn.ModuleList, low: list[torch.Tensor], high: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, one head set's prediction ``(B, C_l, h_l, w_l)`` of the high-resolution features."""
        return [
            head(low_features, high_features)
            for head, low_features, high_features in zip(heads, low, high, strict=True)
        ]

    def align(
        self,
        images: torch.Tensor,
        heads: nn.ModuleList | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Extract both views' features and predict the high-resolution ones from the low-resolution ones.

        Args:
            images (torch.Tensor): Normalised images ``(B, 3, H, W)``.
            heads (nn.ModuleList | None): The head set that predicts. Defaults to ``None``: ``heads``.

        Returns:
            tuple[list[torch.Tensor], list[torch.Tensor]]: Per level, the predictions and the
            high-resolution features (standardised if the misalignment is), each ``(B, C_l, h_l, w_l)``.
        """
        low, high = self.features(images)
        return self.predict(self.heads if heads is None else heads, low, high), high

    def forward(
        self,
        images: torch.Tensor,
        clean: bool = False,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | InferenceBatch:
        """Run the model.

        Args:
            images (torch.Tensor): Normalised images ``(B, 3, H, W)``.
            clean (bool): In training mode, predict with ``clean_heads`` instead of ``heads`` (the images are
                then the clean ones). Defaults to ``False``.

        Returns:
            In training mode, per-level predictions and targets for the loss. In eval mode an
            ``InferenceBatch`` with ``pred_score`` ``(B,)`` and ``anomaly_map`` ``(B, 1, H, W)``. With a
            ``tiler``, the images are split into tiles first: in training mode the levels hold one entry per
            tile; in eval mode the tiles' maps are put back together and the image scored from the whole.

        Raises:
            ValueError: If ``images`` is not ``(B, 3, H, W)``, or they or the tiles are smaller than
                ``minimum_input_size``, or ``clean`` is set for a model without ``clean_heads``.
        """
        self.check_input(images)
        self.warn_if_unfitted()
        if clean and self.clean_heads is None:
            msg = "This HlgfaModel has no clean_heads to train: build it with clean_heads=True."
            raise ValueError(msg)
        if self.tiler is not None:
            self.check_tile_size(self.tiler)
            images = self.tiler.tile(images)
        if self.training:
            return self.align(images, self.clean_heads if clean else self.heads)
        low, high = self.features(images)
        predictions = self.predict(self.heads, low, high)
        clean_predictions = None if self.clean_heads is None else self.predict(self.clean_heads, low, high)
        anomaly_map, score_map = self.anomaly_map_generator.maps(
            predictions, high, images.shape[-2:], clean_predictions
        )
        if self.tiler is not None:
            # Each tile's maps (smoothed within the tile) go back in place, overlaps averaged; then one score.
            anomaly_map, score_map = self.tiler.untile(anomaly_map), self.tiler.untile(score_map)
        return InferenceBatch(pred_score=self.anomaly_map_generator.image_score(score_map), anomaly_map=anomaly_map)

    def check_tile_size(self, tiler: Tiler) -> None:
        """Raise a clear error if the tiles are too small for the layers and ``downsample_factor``."""
        height, width = int(tiler.tile_size_h), int(tiler.tile_size_w)
        if min(height, width) < self.minimum_input_size:
            msg = (
                f"Tiles of {height} x {width} pixels are too small: with layers {self.layers} and downsample_factor "
                f"{self.downsample_factor}, each side must be at least {self.minimum_input_size} pixels. Set the "
                f"tiler's tile_size (TilerConfigurationCallback) to at least {self.minimum_input_size}."
            )
            raise ValueError(msg)
