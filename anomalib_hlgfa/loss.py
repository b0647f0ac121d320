"""Alignment loss of HLGFA: refined low-resolution features should match high-resolution ones."""

import torch
from torch import nn

from .anomaly_map import Misalignment, cosine_distance, squared_error_map


class AlignmentLoss(nn.Module):
    """Mean misalignment between refined and high-resolution features, over positions and levels.

    With the cosine misalignment, the mean cosine distance: exactly what is scored at inference. With a
    standardised one (``"standardised_rms"``, ``"standardised_rms_cosine"``), the mean squared difference
    of the standardised features, whose root per position is the anomaly map.

    Args:
        misalignment (Misalignment | str): ``"cosine"``, ``"standardised_rms"`` or
            ``"standardised_rms_cosine"``. Defaults to ``"cosine"``.
    """

    def __init__(self, misalignment: Misalignment | str = Misalignment.COSINE) -> None:
        super().__init__()
        self.misalignment = Misalignment(misalignment)

    def forward(self, predictions: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        """Compute the loss.

        Args:
            predictions (list[torch.Tensor]): Per level, refined features ``(B, C_l, h_l, w_l)``.
            targets (list[torch.Tensor]): Per level, high-resolution features ``(B, C_l, h_l, w_l)``.

        Returns:
            torch.Tensor: Scalar loss, non-negative (cosine: at most 2).
        """
        distance = squared_error_map if self.misalignment.standardised else cosine_distance
        pairs = zip(predictions, targets, strict=True)
        return torch.stack([distance(prediction, target).mean() for prediction, target in pairs]).mean()
