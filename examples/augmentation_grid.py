"""Draw what HLGFA's noise-aware augmentation does to training images, as a grid PNG.

Rows: the original image, each nuisance family alone at its default strength (probability 1), and the
default configuration as training applies it. Columns: training images of each category. Without
``--root`` it uses the offline demo dataset (scikit-image textures), so it runs anywhere.

Usage::

    python examples/augmentation_grid.py --root ../shared/data --categories magnetic_tile solar_cell \
        --output docs/augmentation_grid.png
"""

import argparse
import tempfile
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import torch
from anomalib.data import MVTecAD
from torchvision.transforms.v2.functional import resize

from anomalib_hlgfa.augmentation import FAMILIES, NuisanceAugmentation, NuisanceConfig
from anomalib_hlgfa.demo_data import make_demo_dataset


def training_images(root: Path, category: str, count: int, size: int) -> torch.Tensor:
    """The first ``count`` training images of a category, resized to ``size``, shape ``(count, 3, size, size)``."""
    datamodule = MVTecAD(root=root, category=category)
    datamodule.setup()
    if len(datamodule.train_data) < count:
        msg = f"{root}/{category}/train/good has {len(datamodule.train_data)} images; the grid needs {count}."
        raise ValueError(msg)
    step = len(datamodule.train_data) // count
    return torch.stack([resize(datamodule.train_data[i * step].image, [size, size]) for i in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="MVTec-layout data root (default: a demo dataset).")
    parser.add_argument("--categories", nargs="+", default=["gravel"], help="Categories under --root.")
    parser.add_argument("--per-category", type=int, default=3, help="Images per category.")
    parser.add_argument("--size", type=int, default=256, help="Side the images are resized to.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the nuisances.")
    parser.add_argument("--output", type=Path, default=Path("docs/augmentation_grid.png"), help="PNG to write.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = args.root
        if root is None:
            root = make_demo_dataset(Path(scratch) / "demo", category=args.categories[0], image_size=args.size)
        images = torch.cat([training_images(root, c, args.per_category, args.size) for c in args.categories])

    rows = {"original": images}
    for family in FAMILIES:
        rows[f"{family} only"] = NuisanceAugmentation(NuisanceConfig.only(family, seed=args.seed))(images)
    rows["training defaults"] = NuisanceAugmentation(NuisanceConfig(seed=args.seed))(images)

    columns = len(images)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 1.6 * len(rows)), squeeze=False)
    for row, (label, batch) in enumerate(rows.items()):
        for column in range(columns):
            axis = axes[row][column]
            axis.imshow(batch[column].permute(1, 2, 0).numpy(), vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(label, fontsize=8)
    figure.suptitle("HLGFA noise-aware augmentation (defaults; one family per row, probability 1)", fontsize=9)
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=80)
    temporary.replace(args.output)  # never leave a half-written picture at the output path
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
