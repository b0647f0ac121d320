"""Scale-out with Lightning's own distributed training: DDP (ddp_spawn, gloo) on CPU with 2 processes.

What must match, and why it can: HLGFA's loss is a mean over images of equal size, and instance
normalisation is per image, so the gradient of a batch of 4 equals the mean of the gradients of its
two halves, which is what DDP's all-reduce computes. With the same seed (the heads are initialised
before the processes start, and DDP broadcasts rank 0's weights anyway) and no shuffling (Lightning's
DistributedSampler then gives rank 0 images 0, 2, ... and rank 1 images 1, 3, ..., so each step's two
halves are exactly the single process's batch; see InOrderMVTecAD), one process with batches of 4 and two processes with
batches of 2 take the same optimisation steps. They differ only by float32 rounding: summing in another
order changes gradients by about 1e-7 relative, and two AdamW steps carry that into the weights.
"""

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from torch.utils.data import DataLoader, DistributedSampler

from anomalib_hlgfa import Hlgfa

from .conftest import TINY

SCORE_TOLERANCE = 1e-5  # absolute, on raw scores near 1 (measured: 1.2e-7, as with gradient accumulation)


class InOrderMVTecAD(MVTecAD):
    """MVTecAD with the training images in file order, in one process or split across several.

    Lightning always shuffles training data under DDP (its DistributedSampler gets ``shuffle=True``)
    unless the dataloader brings its own DistributedSampler; the dataloader is built in each process,
    after the process group exists.
    """

    def train_dataloader(self) -> DataLoader:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        return DataLoader(
            self.train_data,
            batch_size=self.train_batch_size,
            sampler=DistributedSampler(self.train_data, shuffle=False) if distributed else None,
            shuffle=False,
            collate_fn=self.train_data.collate_fn,
            num_workers=0,
        )


def _fit(root: Path, tmp_path: Path, batch_size: int, misalignment: str, **trainer_arguments) -> Hlgfa:
    torch.manual_seed(0)
    # Without augmentation: each process draws its own nuisances (seed + rank) by design, so only the
    # un-augmented computation can match one process exactly.
    model = Hlgfa(
        **TINY, image_size=(64, 64), max_epochs=1, visualizer=False, augmentation=None, misalignment=misalignment
    )
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, **trainer_arguments)
    datamodule = InOrderMVTecAD(
        root=root,
        category="gravel",
        train_batch_size=batch_size,
        eval_batch_size=batch_size,
        num_workers=0,
    )
    engine.fit(model=model, datamodule=datamodule)
    return model


# With "standardised_rms" each process fits the feature statistics on its half of the training images and
# the moments are summed across processes: the statistics, and so the training, must match one process.
@pytest.mark.parametrize("misalignment", ["cosine", "standardised_rms"])
def test_ddp_spawn_on_two_cpu_processes_matches_one_process(
    tiny_dataset: Path, tmp_path: Path, misalignment: str
) -> None:
    single = _fit(tiny_dataset, tmp_path / "single", batch_size=4, misalignment=misalignment)
    distributed = _fit(
        tiny_dataset,
        tmp_path / "ddp",
        batch_size=2,  # per process: 2 processes x 2 = the single process's 4
        misalignment=misalignment,
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
    )
    # The trained weights came back from the spawned processes: the heads moved away from their start.
    torch.manual_seed(0)
    initial = Hlgfa(**TINY, image_size=(64, 64), max_epochs=1, augmentation=None, misalignment=misalignment)
    moved = max((a - b).abs().max() for a, b in zip(initial.parameters(), distributed.parameters(), strict=True))
    assert moved > 1e-3

    levels = zip(single.model.standardization, distributed.model.standardization, strict=True)
    for single_level, distributed_level in levels:
        torch.testing.assert_close(distributed_level.mean, single_level.mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(distributed_level.std, single_level.std, rtol=1e-5, atol=1e-6)
    if misalignment == "standardised_rms":  # fitted, not left at the identity
        fitted_std = single.model.standardization[0].std
        assert not torch.equal(fitted_std, torch.ones_like(fitted_std))

    datamodule = MVTecAD(root=tiny_dataset, category="gravel", num_workers=0)
    datamodule.setup()
    batch = torch.stack([item.image for item in datamodule.test_data])
    single.eval()
    distributed.eval()
    with torch.no_grad():
        raw_single = single.model(single.pre_processor(batch)).pred_score
        raw_distributed = distributed.model(distributed.pre_processor(batch)).pred_score
    difference = (raw_single - raw_distributed).abs().max().item()
    assert difference <= SCORE_TOLERANCE, difference
    # The thresholds fitted on the validation split, gathered across both processes, agree as well.
    threshold_single = single.post_processor.image_threshold.item()
    threshold_distributed = distributed.post_processor.image_threshold.item()
    assert threshold_distributed == pytest.approx(threshold_single, abs=SCORE_TOLERANCE)
