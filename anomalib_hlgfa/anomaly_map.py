"""Anomaly map and image score from HLGFA's cross-resolution misalignment.

Per feature level, the misalignment is the cosine distance between the refined low-resolution
features (the prediction) and the high-resolution features, per position. Each level's map is
upsampled to the input size, the levels are averaged, and the result is smoothed with a Gaussian.
The image score is a reduction of the map: its maximum, or the mean of its top-k pixels.
"""

from enum import Enum

import torch
from kornia.filters import GaussianBlur2d
from torch import nn
from torch.nn import functional as F  # noqa: N812


class ScoreReduction(str, Enum):
    """How the image score is reduced from the anomaly map."""

    MAX = "max"
    TOPK_MEAN = "topk_mean"


def misalignment_map(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine distance between predicted and high-resolution features, per position.

    Args:
        prediction (torch.Tensor): Refined low-resolution features, shape ``(B, C, h, w)``.
        target (torch.Tensor): High-resolution features, shape ``(B, C, h, w)``.

    Returns:
        torch.Tensor: ``1 - cos``, shape ``(B, 1, h, w)``, in ``[0, 2]``.
    """
    return 1 - F.cosine_similarity(prediction, target, dim=1).unsqueeze(1)


class AnomalyMapGenerator(nn.Module):
    """Fuse per-level misalignment maps into a pixel anomaly map and an image score.

    Args:
        sigma (float): Standard deviation, in input pixels, of the Gaussian smoothing the fused map.
            Defaults to ``4``.
        score_reduction (ScoreReduction | str): ``"max"`` or ``"topk_mean"``. Defaults to ``"max"``.
        topk_ratio (float): Fraction of pixels averaged by ``"topk_mean"``. Defaults to ``0.01``.
    """

    def __init__(
        self,
        sigma: float = 4.0,
        score_reduction: ScoreReduction | str = ScoreReduction.MAX,
        topk_ratio: float = 0.01,
    ) -> None:
        super().__init__()
        self.score_reduction = ScoreReduction(score_reduction)
        if not 0 < topk_ratio <= 1:
            msg = f"topk_ratio must be in (0, 1], got {topk_ratio}: it is the fraction of pixels averaged."
            raise ValueError(msg)
        self.topk_ratio = topk_ratio
        # anomalib's kernel size for sigma (truncated at 4 sigma), applied as two 1-D passes: the same
        # Gaussian, 2k instead of k**2 multiplications per pixel. A 33 x 33 convolution was a fifth of
        # OpenVINO FP32 inference, and half of INT8, where OpenVINO picks a slower kernel for it.
        self.blur_radius = int(4.0 * sigma + 0.5) if sigma > 0 else 0
        side = 2 * self.blur_radius + 1
        self.blur = (
            GaussianBlur2d((side, side), (sigma, sigma), border_type="reflect", separable=True)
            if sigma > 0
            else nn.Identity()
        )

    def forward(
        self,
        predictions: list[torch.Tensor],
        targets: list[torch.Tensor],
        image_size: tuple[int, int] | torch.Size,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute the anomaly map and the image score.

        Args:
            predictions (list[torch.Tensor]): Per level, refined features ``(B, C_l, h_l, w_l)``.
            targets (list[torch.Tensor]): Per level, high-resolution features ``(B, C_l, h_l, w_l)``.
            image_size (tuple[int, int] | torch.Size): Input height and width ``(H, W)``.

        Returns:
            tuple[torch.Tensor, torch.Tensor]: Anomaly map ``(B, 1, H, W)`` and image score ``(B,)``.
        """
        level_maps = [
            F.interpolate(misalignment_map(prediction, target), size=image_size, mode="bilinear", align_corners=False)
            for prediction, target in zip(predictions, targets, strict=True)
        ]
        anomaly_map = self.blur(torch.stack(level_maps).mean(dim=0))
        return anomaly_map, self.image_score(anomaly_map)

    def image_score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Reduce an anomaly map ``(B, 1, H, W)`` to one score per image ``(B,)``."""
        flat = anomaly_map.flatten(start_dim=1)
        if self.score_reduction == ScoreReduction.MAX:
            return flat.amax(dim=1)
        k = max(1, int(flat.shape[1] * self.topk_ratio))
        return flat.topk(k, dim=1).values.mean(dim=1)
