"""Peak memory of HLGFA's test evaluator, per test pixel: what anomalib's metrics keep and compute.

``compare.py`` reports the test's peak memory apart from the fit's because anomalib's evaluator, the same
for every model, keeps every test pixel's score and label for pixel AUROC and AUPRO and sorts them when it
computes. This script measures that cost alone, with no model: it feeds ``Hlgfa.configure_evaluator()``'s
test metrics synthetic anomaly maps and masks in batches of 32, then computes them, and prints the peak
resident memory above the start (stored states, computation and the batches in flight) per test pixel.
Linux only (it restarts the peak count through ``/proc/self/clear_refs``).

Usage::

    python benchmarks/evaluator_memory.py --images 578 --side 256   # magnetic_tile's test split at 256 x 256
    python benchmarks/evaluator_memory.py --images 578 --side 512   # the same at 512 x 512 (tiling runs)
"""

import argparse
import resource
from pathlib import Path

import torch
from anomalib.data import ImageBatch
from compare import peak_rss_gb, reset_peak_rss

from anomalib_hlgfa import Hlgfa


def resident_gb() -> float:
    """This process's resident memory now, in GiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**30


def synthetic_batch(size: int, side: int) -> ImageBatch:
    """Random maps; every other image defective, with a square in its top-left corner where its map is higher."""
    labels = torch.arange(size) % 2 == 0
    mask = torch.zeros(size, side, side, dtype=torch.bool)
    mask[labels, : side // 8, : side // 8] = True
    anomaly_map = torch.rand(size, side, side) + mask.float()
    return ImageBatch(
        image=torch.zeros(size, 3, 8, 8),
        gt_label=labels,
        gt_mask=mask,
        anomaly_map=anomaly_map,
        pred_score=anomaly_map.amax((1, 2)),
        pred_label=torch.ones(size, dtype=torch.bool),
        pred_mask=anomaly_map > 1,
    )


def main() -> None:
    """Measure and print the evaluator's peak memory for the given test split size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=578, help="Test images (magnetic_tile has 578).")
    parser.add_argument("--side", type=int, default=256, help="Anomaly map side in pixels (the image size).")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.images < 2 or args.side < 8 or args.batch_size < 2:
        parser.error(
            "need at least 2 images of at least 8 px in batches of at least 2 (so that both labels occur), got "
            f"--images {args.images} --side {args.side} --batch-size {args.batch_size}"
        )

    torch.manual_seed(0)
    metrics = Hlgfa.configure_evaluator().test_metrics
    start_gb = resident_gb()
    if not reset_peak_rss():  # the peak counts from here
        parser.error("cannot restart the peak-RSS count: this script needs Linux's writable /proc/self/clear_refs")
    for start in range(0, args.images, args.batch_size):
        batch = synthetic_batch(min(args.batch_size, args.images - start), args.side)
        for metric in metrics:
            metric.update(batch)
    stored_gb = resident_gb() - start_gb
    values = {metric.name: round(float(metric.compute()), 3) for metric in metrics}
    pixels = args.images * args.side**2
    extra_gb = peak_rss_gb() - start_gb
    print(f"metrics (synthetic data): {values}")
    print(
        f"{args.images} images of {args.side} x {args.side} = {pixels / 1e6:.1f} M test pixels: states kept "
        f"{stored_gb:.2f} GiB, peak {extra_gb:.2f} GiB above the start "
        f"({extra_gb * 2**30 / pixels:.0f} bytes per pixel)"
    )


if __name__ == "__main__":
    main()
