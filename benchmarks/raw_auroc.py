"""AUROC of raw (unnormalised) anomaly scores.

torchmetrics' ``binary_auroc`` treats scores outside ``[0, 1]`` as logits and passes them through a
sigmoid, which in float32 is exactly 1.0 from about 17 up: raw scores such as PaDiM's (20-60 on
magnetic_tile) or per-position z-scores then tie, and the AUROC falls towards 0.5 (PaDiM's 0.956 read
as 0.747). Rescaling to ``[0, 1]`` first keeps the ranking, which is all the AUROC depends on.
"""

import torch
from torchmetrics.functional.classification import binary_auroc


def raw_score_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC of ``scores`` (any range, any shape) against binary ``labels`` of the same shape.

    Args:
        scores (torch.Tensor): Anomaly scores, higher meaning more anomalous, any finite range.
        labels (torch.Tensor): ``1`` (or ``True``) for anomalous, ``0`` for normal.

    Returns:
        float: The AUROC; ``0.5`` if every score is equal.

    Raises:
        ValueError: If a score is NaN or infinite (it has no rank; the rescaling would hide it).
    """
    scores = scores.flatten().double()  # double: rescaling must not merge nearby float32 scores
    if not torch.isfinite(scores).all():
        count = int((~torch.isfinite(scores)).sum())
        msg = f"{count} of {scores.numel()} scores are NaN or infinite: they have no rank; check the model's output."
        raise ValueError(msg)
    spread = scores.max() - scores.min()
    unit = (scores - scores.min()) / spread if spread > 0 else torch.full_like(scores, 0.5)
    return float(binary_auroc(unit, labels.flatten().long()))
