"""HLGFA ablations and design choices, measured on real data with cached backbone features.

The backbone is frozen and training has no augmentation, so each image's backbone features (both
views) are the same in every epoch: this script extracts them once per category and trains only the
refinement heads on them, as ``Hlgfa`` trains (AdamW over the heads, batch 32), then tests with
HLGFA's anomaly-map smoothing and anomalib's metrics (image AUROC, pixel AUROC and AUPRO at the
model's input size, 256x256 unless ``--image-size`` says otherwise, as ``Engine.test`` computes them).
That makes one variant a few minutes on a 2-core CPU instead of a full training.

Variants: the full model; each part of the method removed (see ``anomalib_hlgfa.torch_model.ABLATIONS``);
and the choices left open by the paper: feature levels, downsampling factor, prior channels, head width,
structure window, fusion of the levels, score reduction, epochs (tested after 5, 10 and 20 epochs of
one training), the image size (``--image-size``, one size per run; rows of other sizes than 256 are
labelled with it), and the misalignment (Hlgfa's ``misalignment`` argument: ``"cosine"``, the default and
every variant's unless named, ``"standardised_rms"`` or ``"standardised_rms_cosine"``; and three other
comparisons); and PatchCore's local averaging of the backbone features (``feature_window``), which
``Hlgfa`` does not do.

Usage::

    python benchmarks/ablation.py --root ../shared/data --categories solar_cell magnetic_tile \
        --output results/ablation
    # one variant at another input size (its features cached apart, its rows labelled with the size)
    python benchmarks/ablation.py --root ../shared/data --categories solar_cell --image-size 320 \
        --variants "levels blocks.2+4+6, misalignment standardised_rms_cosine" --output results/ablation

It prints a markdown table and writes ``results.json`` and ``results.md`` under ``--output``.
"""

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.metrics.aupro import _AUPRO
from raw_auroc import raw_score_auroc
from torch.nn import functional as F  # noqa: N812

from anomalib_hlgfa import Hlgfa
from anomalib_hlgfa.anomaly_map import (
    AnomalyMapGenerator,
    cosine_distance,
    misalignment_map,
    rms_cosine_map,
    squared_error_map,
)
from anomalib_hlgfa.loss import AlignmentLoss
from anomalib_hlgfa.torch_model import FeatureStandardization, HlgfaModel, RefinementHead

ALL_LEVELS = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")
FACTORS = (2, 4)
LEVELS = ("blocks.2", "blocks.4", "blocks.6")  # Hlgfa's default levels
SCORES = ("max", "topk_mean")
MISALIGNMENTS = (
    "cosine",
    "standardised_rms",
    "standardised_rms_cosine",
    "standardised_squared",
    "standardised_cosine",
    "centred_cosine",
)


@dataclass(frozen=True)
class Variant:
    """One configuration of the heads and the anomaly map; defaults are ``Hlgfa()``'s."""

    name: str
    layers: tuple[str, ...] = ("blocks.2", "blocks.4")
    downsample_factor: int = 2
    hidden_channels: int = 64
    prior_channels: int = 8
    structure_window: int = 4
    # "residue" (Hlgfa's default, every variant's unless named) or "energy" (its local energy; Hlgfa's option)
    detail_prior: str = "residue"
    ablation: str = "full"
    fusion: str = "mean"
    # "cosine": 1 - cos on the raw features (Hlgfa's default); "standardised_rms": Hlgfa's
    # misalignment="standardised_rms" (features standardised per channel with the training statistics,
    # mean squared difference as the loss, its root as the map); "standardised_cosine" and
    # "centred_cosine": the cosine on standardised or only centred features; "standardised_squared": the
    # map without the root; "standardised_rms_cosine": Hlgfa's option of that name (as "standardised_rms",
    # images scored from the geometric mean of the RMS difference and the cosine distance).
    misalignment: str = "cosine"
    score_reductions: tuple[str, ...] = ("max",)
    epochs: tuple[int, ...] = (10,)
    # Side (odd) of a stride-1 average over each backbone level's neighbourhood, before anything
    # else (PatchCore's "locally aware" patch features); 1: none, as Hlgfa does.
    feature_window: int = 1
    # Which views and levels ``feature_window`` averages (all levels when empty).
    feature_window_views: tuple[str, ...] = ("high", "low")
    feature_window_levels: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)


DEFAULT = Variant("full model (defaults)", score_reductions=("max", "topk_mean"), epochs=(5, 10, 20))
# Hlgfa()'s defaults (levels, misalignment) with the energy detail prior: the base of the fourth round's variants.
ENERGY_BASE = Variant(
    "energy detail prior",
    layers=LEVELS,
    misalignment="standardised_rms_cosine",
    detail_prior="energy",
    score_reductions=("topk_mean",),
)
VARIANTS = [
    DEFAULT,
    replace(
        DEFAULT, name="without structure prior", ablation="no_structure_prior", score_reductions=("max",), epochs=(10,)
    ),
    replace(DEFAULT, name="without detail prior", ablation="no_detail_prior", score_reductions=("max",), epochs=(10,)),
    replace(
        DEFAULT,
        name="without conditional modulation",
        ablation="no_modulation",
        score_reductions=("max",),
        epochs=(10,),
    ),
    replace(DEFAULT, name="without gate", ablation="no_gate", score_reductions=("max",), epochs=(10,)),
    replace(DEFAULT, name="single resolution", ablation="single_resolution", score_reductions=("max",), epochs=(10,)),
    ENERGY_BASE,
    Variant("levels blocks.1+2+4", layers=("blocks.1", "blocks.2", "blocks.4")),
    Variant("levels blocks.2+4+6", layers=("blocks.2", "blocks.4", "blocks.6"), score_reductions=("max", "topk_mean")),
    Variant("level blocks.4 only", layers=("blocks.4",)),
    Variant("downsample factor 4", downsample_factor=4),
    Variant("prior channels 2", prior_channels=2),
    Variant("prior channels 32", prior_channels=32),
    Variant("hidden channels 128", hidden_channels=128),
    Variant("structure window 2", structure_window=2),
    Variant("fusion: max over levels", fusion="max"),
    Variant("fusion: per-level normalised mean", fusion="normalised_mean", score_reductions=("max", "topk_mean")),
    Variant("levels blocks.2+4+6, hidden channels 128", layers=LEVELS, hidden_channels=128, score_reductions=SCORES),
    Variant("levels blocks.2+4+6, prior channels 32", layers=LEVELS, prior_channels=32, score_reductions=SCORES),
    *(
        Variant(f"levels blocks.2+4+6, misalignment {m}", layers=LEVELS, misalignment=m, score_reductions=SCORES)
        for m in MISALIGNMENTS
    ),
    # Hlgfa()'s defaults (window 4) with a finer or coarser structure prior (16: the whole blocks.6 grid at 256 px).
    *(
        Variant(
            f"Hlgfa defaults, structure window {window}",
            layers=LEVELS,
            misalignment="standardised_rms_cosine",
            structure_window=window,
            score_reductions=SCORES,
        )
        for window in (2, 8, 16)
    ),
    *(
        Variant(
            f"Hlgfa defaults, feature window {window}",
            layers=LEVELS,
            misalignment="standardised_rms_cosine",
            feature_window=window,
            score_reductions=SCORES,
        )
        for window in (3, 5)
    ),
    *(
        Variant(
            f"Hlgfa defaults, feature window 3 {where}",
            layers=LEVELS,
            misalignment="standardised_rms_cosine",
            feature_window=3,
            feature_window_views=views,
            feature_window_levels=levels,
            score_reductions=SCORES,
        )
        for where, views, levels in (
            ("on the low-resolution view only", ("low",), ()),
            ("on the high-resolution view only", ("high",), ()),
            ("at blocks.4 and blocks.6 only", ("high", "low"), ("blocks.4", "blocks.6")),
        )
    ),
    *(
        replace(ENERGY_BASE, name=f"energy detail prior, {name}", **changes)
        for name, changes in (
            ("detail prior residue (Hlgfa's default)", {"detail_prior": "residue"}),
            ("without detail prior", {"ablation": "no_detail_prior"}),
            ("without structure prior", {"ablation": "no_structure_prior"}),
            ("without conditional modulation", {"ablation": "no_modulation"}),
            ("without gate", {"ablation": "no_gate"}),
            ("single resolution", {"ablation": "single_resolution"}),
            ("structure window 8", {"structure_window": 8}),
            ("prior channels 4", {"prior_channels": 4}),
            ("downsample factor 4", {"downsample_factor": 4}),
        )
    ),
]


def load_split(dataset: torch.utils.data.Dataset, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Read every item, resized and normalised as Hlgfa's pre-processor does; masks resized nearest."""
    transform = Hlgfa.configure_pre_processor(size).transform
    images, masks, labels = [], [], []
    for index in range(len(dataset)):
        item = dataset[index]
        images.append(transform(item.image[None])[0])
        labels.append(int(item.gt_label))
        mask = item.gt_mask if item.gt_mask is not None else torch.zeros(item.image.shape[-2:])
        masks.append(F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].bool())
    return {"images": torch.stack(images), "masks": torch.stack(masks), "labels": torch.tensor(labels)}


@torch.inference_mode()
def extract(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Backbone features of the images and of their low-resolution views, for every level and factor."""
    model = HlgfaModel(layers=ALL_LEVELS).eval()
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), 32):
        batch = images[start : start + 32].contiguous(memory_format=torch.channels_last)
        views = {"high": batch} | {f"low{f}": F.avg_pool2d(batch, f, f, ceil_mode=True) for f in FACTORS}
        for view, view_images in views.items():
            for level, features in model.feature_extractor(view_images).items():
                out.setdefault(f"{view}/{level}", []).append(features.contiguous())
    return {key: torch.cat(chunks) for key, chunks in out.items()}


def cached_category(root: str, category: str, cache_dir: Path, size: tuple[int, int]) -> dict:
    """Features, masks and labels of a category's train and test splits, cached on disk."""
    path = cache_dir / f"{category}.pt" if size == (256, 256) else cache_dir / f"{category}_{size[0]}px.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    datamodule = MVTecAD(root=root, category=category, num_workers=0)
    datamodule.setup()
    data = {}
    for split, dataset in (("train", datamodule.train_data), ("test", datamodule.test_data)):
        start = time.perf_counter()
        loaded = load_split(dataset, size)
        data[split] = {"features": extract(loaded.pop("images")), **loaded}
        print(f"  {category} {split}: {len(dataset)} images extracted in {time.perf_counter() - start:.0f} s")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    tmp.replace(path)
    return data


def aggregate(features: torch.Tensor, window: int) -> torch.Tensor:
    """Each position's features averaged over its ``window x window`` neighbourhood, same grid ``(B, C, h, w)``."""
    if window % 2 == 0:
        msg = f"feature_window must be odd so that the grid keeps its size, got {window}; use 1 (none), 3 or 5."
        raise ValueError(msg)
    if window == 1:
        return features
    return F.avg_pool2d(features, window, stride=1, padding=window // 2, count_include_pad=False)


def feature_window(variant: Variant, view: str, level: str) -> int:
    """The side of the variant's feature averaging for one view ("high" or "low") and level."""
    levels = variant.feature_window_levels or variant.layers
    return variant.feature_window if view in variant.feature_window_views and level in levels else 1


def feature_statistics(train_features: dict, variant: Variant) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per level, the per-channel mean and standard deviation of the training images' high-resolution features.

    Fitted by ``HlgfaModel``'s own ``FeatureStandardization``, as ``Hlgfa`` fits them at the start of training;
    of the features as the variant averages them (see ``aggregate``).
    """
    statistics = {}
    for level in ALL_LEVELS:
        features = aggregate(train_features[f"high/{level}"], feature_window(variant, "high", level))
        standardization = FeatureStandardization(features.shape[1])
        standardization.fit(FeatureStandardization.moments(features))
        statistics[level] = (standardization.mean, standardization.std)
    return statistics


def head_inputs(
    features: dict,
    variant: Variant,
    index: torch.Tensor | slice,
    statistics: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[list, list]:
    """Per level, the head's low-resolution input on the high-resolution grid, and the target.

    Both are standardised (or centred) with the training statistics, as ``HlgfaModel`` does, when the
    variant's misalignment asks for it.
    """
    lows, highs = [], []
    for level in variant.layers:
        high = aggregate(features[f"high/{level}"][index], feature_window(variant, "high", level))
        if variant.ablation == "single_resolution":
            low = high
        else:
            low = features[f"low{variant.downsample_factor}/{level}"][index]
            low = aggregate(low, feature_window(variant, "low", level))
            low = F.interpolate(low, size=high.shape[-2:], mode="bilinear", align_corners=False)
        if variant.misalignment.startswith(("standardised", "centred")):
            mean, std = statistics[level]
            scale = std if variant.misalignment.startswith("standardised") else 1
            low, high = (low - mean) / scale, (high - mean) / scale
        lows.append(low)
        highs.append(high)
    return lows, highs


def level_map(variant: Variant, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The variant's per-position misalignment ``(B, 1, h, w)`` of one level."""
    if variant.misalignment in ("standardised_rms", "standardised_rms_cosine"):
        return misalignment_map(prediction, target, "standardised_rms")
    if variant.misalignment == "standardised_squared":
        return squared_error_map(prediction, target)
    return cosine_distance(prediction, target)


def loss_of(variant: Variant, predictions: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """The variant's training loss: the mean squared difference (``AlignmentLoss``) or the mean cosine distance."""
    if variant.misalignment.endswith(("rms", "squared", "rms_cosine")):
        return AlignmentLoss("standardised_rms")(predictions, targets)
    return torch.stack([cosine_distance(p, t).mean() for p, t in zip(predictions, targets, strict=True)]).mean()


@torch.no_grad()
def level_statistics(
    heads: torch.nn.ModuleList, train: dict, variant: Variant, features_statistics: dict
) -> list[tuple[float, float]]:
    """Mean and standard deviation of each level's misalignment on the training images (normal)."""
    heads.eval()
    per_level = [[] for _ in variant.layers]
    for start in range(0, len(train["labels"]), 32):
        lows, highs = head_inputs(train["features"], variant, slice(start, start + 32), features_statistics)
        for values, head, low, high in zip(per_level, heads, lows, highs, strict=True):
            values.append(level_map(variant, head(low, high), high).flatten())
    heads.train()
    return [(float(torch.cat(v).mean()), float(torch.cat(v).std())) for v in per_level]


@torch.no_grad()
def evaluate(
    heads: torch.nn.ModuleList,
    test: dict,
    variant: Variant,
    size: tuple[int, int],
    statistics: list[tuple[float, float]] | None = None,
    features_statistics: dict | None = None,
) -> dict:
    """Image AUROC, pixel AUROC and AUPRO of the current heads, per score reduction."""
    heads.eval()
    generator = AnomalyMapGenerator(sigma=4.0)
    maps, score_maps = [], []
    for start in range(0, len(test["labels"]), 32):
        lows, highs = head_inputs(test["features"], variant, slice(start, start + 32), features_statistics)
        predictions = [head(low, high) for head, low, high in zip(heads, lows, highs, strict=True)]
        level_maps = [level_map(variant, p, h) for p, h in zip(predictions, highs, strict=True)]
        if variant.misalignment == "standardised_rms_cosine":  # the image score has its own map
            pairs = zip(predictions, highs, strict=True)
            score_maps.append(generator.fuse([rms_cosine_map(p, h) for p, h in pairs], size))
        if variant.fusion == "mean":
            anomaly_map = generator.fuse(level_maps, size)
        else:  # the per-level maps, each upsampled and smoothed as the generator does
            per_level = [generator.fuse([m], size) for m in level_maps]
            if variant.fusion == "max":
                anomaly_map = torch.stack(per_level).amax(dim=0)
            else:  # "normalised_mean": each level in standard deviations of its normal misalignment
                normalised = [(m - mean) / std for m, (mean, std) in zip(per_level, statistics, strict=True)]
                anomaly_map = torch.stack(normalised).mean(dim=0)
        maps.append(anomaly_map)
    heads.train()
    anomaly_maps = torch.cat(maps)
    labels, masks = test["labels"], test["masks"]
    aupro = _AUPRO()
    aupro.update(anomaly_maps[:, 0], masks.int())
    result = {
        "pixel_AUROC": raw_score_auroc(anomaly_maps, masks),
        "pixel_AUPRO": float(aupro.compute()),
    }
    scored = torch.cat(score_maps) if score_maps else anomaly_maps
    for reduction in variant.score_reductions:
        scores = AnomalyMapGenerator(sigma=4.0, score_reduction=reduction).image_score(scored)
        result[f"image_AUROC/{reduction}"] = raw_score_auroc(scores, labels)
    return result


def run_variant(data: dict, variant: Variant, seed: int, size: tuple[int, int]) -> dict:
    """Train the heads on cached training features; test after each epoch in ``variant.epochs``."""
    torch.manual_seed(seed)
    train = data["train"]["features"]
    channels = [train[f"high/{level}"].shape[1] for level in variant.layers]
    heads = torch.nn.ModuleList(
        RefinementHead(
            c,
            variant.hidden_channels,
            variant.prior_channels,
            variant.structure_window,
            variant.detail_prior,
            variant.ablation,
        )
        for c in channels
    )
    optimizer = torch.optim.AdamW(heads.parameters(), lr=1e-3, weight_decay=1e-4)
    features_statistics = feature_statistics(train, variant)
    generator = torch.Generator().manual_seed(seed)
    num_train = len(data["train"]["labels"])
    results, start = {}, time.perf_counter()
    for epoch in range(1, max(variant.epochs) + 1):
        for batch in torch.randperm(num_train, generator=generator).split(32):
            lows, highs = head_inputs(train, variant, batch, features_statistics)
            predictions = [head(low, high) for head, low, high in zip(heads, lows, highs, strict=True)]
            loss = loss_of(variant, predictions, highs)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch in variant.epochs:
            normalised = variant.fusion == "normalised_mean"
            statistics = level_statistics(heads, data["train"], variant, features_statistics) if normalised else None
            metrics = evaluate(heads, data["test"], variant, size, statistics, features_statistics)
            results[epoch] = {"train_loss": loss.item(), **metrics}
    results["train_s"] = time.perf_counter() - start
    return results


def main() -> None:
    """Run every variant on every category and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--categories", nargs="+", default=["solar_cell", "magnetic_tile"])
    parser.add_argument("--output", default="results/ablation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="*", help="Names of variants to run (default: all).")
    parser.add_argument(
        "--image-size",
        type=int,
        default=256,
        help="Side of the square model input (Hlgfa's image_size); a multiple of 64 for the default levels.",
    )
    args = parser.parse_args()
    if args.image_size < 64 or args.image_size % 64:
        parser.error(f"--image-size {args.image_size}: use a multiple of 64 (stride 32 x downsample factor 2)")
    unknown = sorted(set(args.variants or ()) - {v.name for v in VARIANTS})
    if unknown:
        parser.error(f"--variants: unknown {unknown}; the variants are {[v.name for v in VARIANTS]}")
    size = (args.image_size, args.image_size)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    variants = [v for v in VARIANTS if not args.variants or v.name in args.variants]
    for category in args.categories:
        data = cached_category(args.root, category, out / "cache", size)
        for variant in variants:
            key = f"{category} | {variant.name}" + (f", image size {args.image_size}" if args.image_size != 256 else "")
            start = time.perf_counter()
            results[key] = {"variant": asdict(variant), **run_variant(data, variant, args.seed, size)}
            print(f"{key}: {results[key]} ({time.perf_counter() - start:.0f} s)", flush=True)
            results_path.write_text(json.dumps(results, indent=2))
    write_table(results, out, args)


def write_table(results: dict, out: Path, args: argparse.Namespace) -> None:
    """Markdown table: one row per variant and category, tested after 10 epochs unless stated."""
    lines = [
        f"Cached-feature ablation, seed {args.seed}, 256x256 unless stated, {platform.machine()} CPU, "
        f"{datetime.now(UTC):%Y-%m-%d}; image AUROC with max reduction unless stated.",
        "",
        "| category | variant | image AUROC | pixel AUROC | AUPRO |",
        "|---|---|---|---|---|",
    ]
    for key, result in results.items():
        category, name = key.split(" | ")
        for epoch in result["variant"]["epochs"]:
            metrics = result[str(epoch)] if str(epoch) in result else result[epoch]
            for reduction in result["variant"]["score_reductions"]:
                label = name
                if len(result["variant"]["epochs"]) > 1 or len(result["variant"]["score_reductions"]) > 1:
                    label = f"{name}, {epoch} epochs, score {reduction}"
                lines.append(
                    f"| {category} | {label} | {metrics[f'image_AUROC/{reduction}']:.3f} | "
                    f"{metrics['pixel_AUROC']:.3f} | {metrics['pixel_AUPRO']:.3f} |"
                )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
