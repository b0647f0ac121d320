"""Memory over a long prediction run: does HLGFA's predict path grow with the number of images?

Predicts over 2,000 images (by default) with ``Engine.predict(data_path=...)``, the path a user takes,
and records the process's resident set size (RSS, ``VmRSS``) and peak RSS (``VmHWM``, from
``/proc/self/status``) every ``--every`` images. The first ``--warmup`` images are the warm-up
(allocator pools, lazily created buffers); growth is measured from there to the end.

The images are ``--unique`` distinct 256 x 256 crops of scikit-image's gravel texture, written once
into a temporary folder, plus symbolic links that cycle through them up to ``--count`` files, so every
prediction reads and decodes a file as usual. ``--images DIR`` cycles through your own images instead.

Predictions are not returned (``return_predictions=False``): Lightning keeps returned predictions in
memory by design, which would be growth of the caller's making, not a leak.

Exit status 1 if RSS grows by more than ``--bound-mib`` (default 50 MiB) from the end of the warm-up to
the end. 50 MiB over 1,900 images would be a leak of 27 KiB per image, a tenth of one 256 x 256 float32
anomaly map; allocator noise after warm-up measured a few MiB here.

Run from the repository root (Linux; it reads ``/proc``)::

    nice -n 19 python benchmarks/predict_memory.py
    nice -n 19 python benchmarks/predict_memory.py --checkpoint model.ckpt --images path/to/images
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from anomalib.data import Batch
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image

from anomalib_hlgfa import Hlgfa
from anomalib_hlgfa.demo_data import TEXTURES

MIB = 1024 * 1024
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def memory() -> tuple[float, float]:
    """Current and peak resident set size of this process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class MemoryProbe(Callback):
    """Record (images done, RSS, peak RSS, seconds) every ``every`` images."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.done = 0
        self.samples: list[tuple[int, float, float, float]] = []
        self.start = time.perf_counter()

    def record(self) -> None:
        rss, peak = memory()
        self.samples.append((self.done, rss, peak, time.perf_counter() - self.start))
        print(f"{self.done:6d} images  RSS {rss:8.1f} MiB  peak {peak:8.1f} MiB  {self.samples[-1][3]:7.1f} s")
        sys.stdout.flush()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = time.perf_counter()
        self.record()

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: object,
        batch: Batch,
        *args,
    ) -> None:
        before = self.done
        self.done += len(batch.image)
        if self.done // self.every > before // self.every:
            self.record()


def make_images(folder: Path, count: int, unique: int, source: Path | None) -> None:
    """Write ``unique`` texture crops (or take ``source``'s images) and link ``count`` files cycling through them."""
    if source is not None:
        originals = sorted(p.resolve() for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not originals:
            msg = f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {source}."
            raise SystemExit(msg)
    else:
        rng = np.random.default_rng(0)
        texture = TEXTURES["gravel"]()
        originals = []
        for index in range(unique):
            top, left = rng.integers(0, texture.shape[0] - 256, size=2)
            path = folder / "unique" / f"{index:04d}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(np.stack([texture[top : top + 256, left : left + 256]] * 3, axis=-1)).save(path)
            originals.append(path)
    images = folder / "images"
    images.mkdir()
    for index in range(count):
        original = originals[index % len(originals)]
        (images / f"{index:05d}{original.suffix}").symlink_to(original)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="images to predict (default 2000)")
    parser.add_argument("--unique", type=int, default=100, help="distinct generated images (default 100)")
    parser.add_argument("--images", type=Path, help="cycle through this folder's images instead")
    parser.add_argument("--checkpoint", type=Path, help="trained Hlgfa checkpoint (default: untrained Hlgfa())")
    parser.add_argument("--every", type=int, default=100, help="record RSS every N images (default 100)")
    parser.add_argument("--warmup", type=int, default=100, help="images before the reference RSS (default 100)")
    parser.add_argument("--bound-mib", type=float, default=50.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--visualize", action="store_true", help="also write anomalib's visualisations")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        model = Hlgfa.load_from_checkpoint(args.checkpoint)
        if not args.visualize:
            model.visualizer = None
    else:
        torch.manual_seed(0)
        model = Hlgfa(visualizer=args.visualize)  # default configuration, offline ImageNet backbone
    probe = MemoryProbe(args.every)
    with tempfile.TemporaryDirectory(prefix="hlgfa-predict-memory-") as temp:
        folder = Path(temp)
        make_images(folder, args.count, args.unique, args.images)
        engine = Engine(
            default_root_dir=folder / "results",
            logger=False,
            enable_progress_bar=False,
            callbacks=[probe],
        )
        engine.predict(model=model, data_path=folder / "images", return_predictions=False)
        if probe.samples[-1][0] != probe.done:
            probe.record()

    done, samples = probe.done, probe.samples
    warm = next(s for s in samples if s[0] >= min(args.warmup, done))
    end = samples[-1]
    after = np.array([s for s in samples if s[0] >= warm[0]])
    slope = np.polyfit(after[:, 0], after[:, 1], 1)[0] * 1024 if len(after) > 2 else float("nan")
    growth = end[1] - warm[1]
    print()
    print(f"images predicted        {done}  ({end[3]:.0f} s, {done / max(end[3], 1e-9):.1f} images/s)")
    print(f"start (0 images)        RSS {samples[0][1]:.1f} MiB, peak {samples[0][2]:.1f} MiB")
    print(f"after warm-up ({warm[0]:4d})    RSS {warm[1]:.1f} MiB, peak {warm[2]:.1f} MiB")
    print(f"end ({end[0]:4d})              RSS {end[1]:.1f} MiB, peak {end[2]:.1f} MiB")
    print(f"RSS growth after warm-up {growth:+.1f} MiB (bound {args.bound_mib:.0f} MiB)")
    print(f"peak RSS growth          {end[2] - warm[2]:+.1f} MiB")
    print(f"fitted RSS slope        {slope:+.2f} KiB per image")
    print(f"pid {os.getpid()}, torch {torch.__version__}, {args.threads} threads")
    if growth > args.bound_mib:
        print(f"FAIL: RSS grew by {growth:.1f} MiB after warm-up, above the {args.bound_mib:.0f} MiB bound.")
        return 1
    print("OK: no growth beyond the bound.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
