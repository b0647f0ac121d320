"""Alignment loss of HLGFA: refined low-resolution features should match high-resolution ones."""

import torch
from torch import nn

from .anomaly_map import misalignment_map


class AlignmentLoss(nn.Module):
    """Mean cosine distance between refined and high-resolution features, over positions and levels.

    The same per-position distance is the anomaly map at inference, so training minimises exactly what
    is scored.
    """

    def forward(self, predictions: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        """Compute the loss.

        Args:
            predictions (list[torch.Tensor]): Per level, refined features ``(B, C_l, h_l, w_l)``.
            targets (list[torch.Tensor]): Per level, high-resolution features ``(B, C_l, h_l, w_l)``.

        Returns:
            torch.Tensor: Scalar loss, in ``[0, 2]``.
        """
        per_level = [
            misalignment_map(prediction, target).mean() for prediction, target in zip(predictions, targets, strict=True)
        ]
        return torch.stack(per_level).mean()
