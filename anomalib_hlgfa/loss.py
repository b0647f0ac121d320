"""Alignment loss of HLGFA: refined low-resolution features should match high-resolution ones."""

import torch
from torch import nn

from .anomaly_map import squared_error_map


class AlignmentLoss(nn.Module):
    """Mean squared difference between refined and high-resolution features, over channels, positions and levels.

    Both are standardised per channel (see ``HlgfaModel``), so every channel counts in units of its
    normal variation. At inference the anomaly map is the root of the same per-position error, so
    training minimises what is scored.
    """

    def forward(self, predictions: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        """Compute the loss.

        Args:
            predictions (list[torch.Tensor]): Per level, refined features ``(B, C_l, h_l, w_l)``.
            targets (list[torch.Tensor]): Per level, standardised high-resolution features ``(B, C_l, h_l, w_l)``.

        Returns:
            torch.Tensor: Scalar loss, non-negative.
        """
        pairs = zip(predictions, targets, strict=True)
        per_level = [squared_error_map(prediction, target).mean() for prediction, target in pairs]
        return torch.stack(per_level).mean()
