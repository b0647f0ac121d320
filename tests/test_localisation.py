"""On the real offline ImageNet backbone, briefly trained on normal texture, the map finds a pasted defect."""

import torch

from anomalib_hlgfa import AlignmentLoss, HlgfaModel

from .conftest import texture_crops


def test_anomaly_map_peaks_at_a_pasted_defect() -> None:
    torch.manual_seed(0)
    model = HlgfaModel()  # default: lite0 with offline ImageNet weights, blocks.2 + blocks.4 + blocks.6
    normal = texture_crops(16, 128, seed=0)
    # As Hlgfa does at the start of fit: the default misalignment standardises with the normal images' statistics.
    model.set_feature_statistics(model.feature_moments(normal))
    optimizer = torch.optim.AdamW(model.heads.parameters(), lr=1e-3)
    loss_fn = AlignmentLoss(model.misalignment)
    model.train()
    for step in range(40):
        batch = normal[(step % 2) * 8 : (step % 2) * 8 + 8]
        optimizer.zero_grad()
        loss_fn(*model(batch)).backward()
        optimizer.step()

    test_images = texture_crops(4, 128, seed=1)  # crops the model has not seen
    rows, cols = slice(76, 92), slice(28, 44)  # a 16 x 16 px dark pit, off centre
    test_images[0, :, rows, cols] = -0.9
    model.eval()
    with torch.no_grad():
        output = model(test_images)

    peak_row, peak_col = divmod(int(output.anomaly_map[0].flatten().argmax()), 128)
    assert rows.start - 8 <= peak_row < rows.stop + 8, (peak_row, peak_col)
    assert cols.start - 8 <= peak_col < cols.stop + 8, (peak_row, peak_col)
    # The defective image also outscores the normal ones.
    assert output.pred_score[0] > output.pred_score[1:].max()
