"""Where a trained HLGFA model's pixel AUROC comes from: localisation inside images, or levels across them.

Pixel AUROC ranks every pixel of every test image together, so it mixes two things: how well a map
separates a defect from the rest of *its own* image, and whether defect pixels score above the pixels of
*other*, normal images. For trained checkpoints and one category's clean test split this prints, per
model: the pixel AUROC; the mean of the per-image pixel AUROCs of the defective images (localisation);
the AUROC of defect pixels against the pixels of normal images only, and against the defect-free pixels
of defective images; and quantiles of the map on normal images and on defect pixels. Maps are the
model's raw maps (before the post-processor's normalisation, which is monotonic and changes no
AUROC), taken at every fourth pixel of the masks' resolution.

For a model with clean heads (0.7's default) the map is the model's own, the minimum of both head sets';
``--per-level`` and ``--residual-std`` use the augmented heads (``heads``) alone.

``--per-level`` also prints the pixel AUROC of each feature level's map alone (the root-mean-square
difference of that level, upsampled, before the Gaussian smoothing).

``--residual-std clean`` (or ``augmented``) also scores a variant: each level's prediction error divided
per channel by its root-mean-square on the training images (clean, or with the default nuisance
augmentation, seed 7), so that channels the model predicts loosely on normal images weigh less.

Usage::

    python benchmarks/pixel_auroc_split.py --root ../shared/data --category solar_cell \
        --checkpoints default=PATH/model.ckpt no_augmentation=PATH/model.ckpt [--per-level] \
        [--residual-std clean augmented]
"""

import argparse
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from named_paths import named_paths
from raw_auroc import raw_score_auroc
from torch.nn import functional as F  # noqa: N812

from anomalib_hlgfa import Hlgfa
from anomalib_hlgfa.anomaly_map import Misalignment, misalignment_map
from anomalib_hlgfa.augmentation import NuisanceAugmentation, NuisanceConfig

STRIDE = 4  # every fourth pixel of the masks: about 1/16 of the pixels, plenty for these AUROCs


def auroc(positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """AUROC of ``positives`` scored above ``negatives`` (1-D tensors)."""
    scores = torch.cat([positives, negatives])
    labels = torch.cat([torch.ones_like(positives), torch.zeros_like(negatives)]).long()
    return raw_score_auroc(scores, labels)


@torch.inference_mode()
def residual_rms(model: Hlgfa, datamodule: MVTecAD, augmentation: NuisanceAugmentation | None) -> list[torch.Tensor]:
    """Per level, the root-mean-square prediction error of each channel on the training images, ``(1, C, 1, 1)``."""
    squares: list[torch.Tensor] | None = None
    counts: list[int] | None = None
    for batch in datamodule.train_dataloader():
        images = batch.image if augmentation is None else augmentation(batch.image)
        predictions, targets = model.model.align(model.pre_processor.transform(images))
        batch_squares = [(p - t).pow(2).sum(dim=(0, 2, 3)) for p, t in zip(predictions, targets, strict=True)]
        batch_counts = [p[:, 0].numel() for p in predictions]
        squares = batch_squares if squares is None else [a + b for a, b in zip(squares, batch_squares, strict=True)]
        counts = batch_counts if counts is None else [a + b for a, b in zip(counts, batch_counts, strict=True)]
    return [(s / n).sqrt().view(1, -1, 1, 1) for s, n in zip(squares, counts, strict=True)]


@torch.inference_mode()
def test_maps(
    model: Hlgfa,
    datamodule: MVTecAD,
    scales: dict[str, list[torch.Tensor] | None],
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over the test split: each variant's raw map, each level's map, the masks and the labels.

    Args:
        model (Hlgfa): Trained model.
        datamodule (MVTecAD): Data; its test split is scored.
        scales (dict[str, list[torch.Tensor] | None]): Per variant, the per-level divisor of predictions and
            targets (``None``: the model's own map).

    Returns:
        Per variant the maps ``(N, h, w)``; the per-level maps ``(L, N, h, w)`` (root-mean-square difference,
        upsampled, unsmoothed); the masks ``(N, h, w)`` and labels ``(N,)``; all on the masks' grid.
    """
    maps: dict[str, list[torch.Tensor]] = {variant: [] for variant in scales}
    levels, masks, labels = [], [], []
    for batch in datamodule.test_dataloader():
        images = model.pre_processor.transform(batch.image)
        low, targets = model.model.features(images)
        predictions = model.model.predict(model.model.heads, low, targets)
        clean_heads = model.model.clean_heads
        clean_predictions = None if clean_heads is None else model.model.predict(clean_heads, low, targets)
        size = batch.gt_mask.shape[-2:]
        for variant, scale in scales.items():
            scaled_predictions, scaled_targets, scaled_clean = predictions, targets, clean_predictions
            if scale is not None:
                scaled_predictions = [p / s for p, s in zip(predictions, scale, strict=True)]
                scaled_targets = [t / s for t, s in zip(targets, scale, strict=True)]
                if clean_predictions is not None:
                    scaled_clean = [p / s for p, s in zip(clean_predictions, scale, strict=True)]
            anomaly_map, _ = model.model.anomaly_map_generator.maps(
                scaled_predictions, scaled_targets, images.shape[-2:], scaled_clean
            )
            maps[variant].append(F.interpolate(anomaly_map, size=size, mode="bilinear")[:, 0, ::STRIDE, ::STRIDE])
        level_maps = [
            misalignment_map(p, t, Misalignment.STANDARDISED_RMS) for p, t in zip(predictions, targets, strict=True)
        ]
        levels.append(
            torch.stack([F.interpolate(m, size=size, mode="bilinear")[:, 0, ::STRIDE, ::STRIDE] for m in level_maps])
        )
        masks.append(batch.gt_mask.bool()[:, ::STRIDE, ::STRIDE])
        labels.append(batch.gt_label.bool())
    variant_maps = {variant: torch.cat(chunks) for variant, chunks in maps.items()}
    return variant_maps, torch.cat(levels, dim=1), torch.cat(masks), torch.cat(labels)


def split(maps: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> dict[str, float | str]:
    """The pixel AUROC and its parts (see the module docstring)."""
    localised = [i for i in torch.nonzero(labels).flatten() if 0 < masks[i].sum() < masks[i].numel()]
    per_image = [auroc(maps[i][masks[i]], maps[i][~masks[i]]) for i in localised]
    normal_pixels = maps[~labels].flatten()
    defect_pixels = maps[masks]
    clean_in_defective = maps[labels][~masks[labels]]
    quantiles = torch.tensor([0.5, 0.9, 0.99])
    return {
        "pixel AUROC": auroc(defect_pixels, maps[~masks]),
        "within defective images (mean)": sum(per_image) / len(per_image),
        "defect vs normal images": auroc(defect_pixels, normal_pixels),
        "defect vs rest of defective images": auroc(defect_pixels, clean_in_defective),
        "normal images q50/q90/q99": " / ".join(f"{q:.3f}" for q in torch.quantile(normal_pixels, quantiles)),
        "defect pixels q50/q90/q99": " / ".join(f"{q:.3f}" for q in torch.quantile(defect_pixels, quantiles)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="MVTec-layout data root.")
    parser.add_argument("--category", required=True)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="NAME=PATH of trained Hlgfa checkpoints.")
    parser.add_argument("--per-level", action="store_true", help="Also each level's map alone.")
    parser.add_argument("--residual-std", nargs="*", choices=["clean", "augmented"], default=[])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoints = named_paths(parser, args.checkpoints, "--checkpoints", "default=results/model.ckpt")

    datamodule = MVTecAD(root=args.root, category=args.category, train_batch_size=32, eval_batch_size=32, num_workers=0)
    datamodule.setup()
    rows = []
    for name, path in checkpoints.items():
        model = Hlgfa.load_from_checkpoint(path, weights_only=False).eval()
        variants: dict[str, list[torch.Tensor] | None] = {"raw map": None}
        for fitted_on in args.residual_std:
            augmentation = NuisanceAugmentation(NuisanceConfig(seed=7)) if fitted_on == "augmented" else None
            variants[f"residual RMS ({fitted_on})"] = residual_rms(model, datamodule, augmentation)
        variant_maps, level_maps, masks, labels = test_maps(model, datamodule, variants)
        if args.per_level:
            per_level = [auroc(level[masks], level[~masks]) for level in level_maps]
            print(
                f"{name}: pixel AUROC per level "
                + ", ".join(f"{layer} {value:.4f}" for layer, value in zip(model.model.layers, per_level, strict=True)),
                flush=True,
            )
        for variant, maps in variant_maps.items():
            rows.append({"model": name, "map": variant, **split(maps, masks, labels)})
            print(rows[-1], flush=True)

    columns = list(rows[0])
    print(f"\n{args.category}, clean test split, pixels every {STRIDE}th of the masks' grid\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
