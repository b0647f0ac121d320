"""Image AUROC per defect type: which kinds of defect a trained model misses.

For trained models of ``benchmarks/compare.py`` (its ``jobs/<category>__<model>/model.pt``, a whole
``AnomalibModule``) or Lightning checkpoints of ``Hlgfa``, and one category's test split, this prints the
image AUROC of each defect type's images (the test folders other than ``good``) against all normal test
images, from the models' raw image scores (before the post-processor, whose normalisation is monotonic
but clamps). Images are resized to 256 x 256 once, as the models' pre-processors do.

Usage::

    python benchmarks/per_defect_type.py --root ../shared/data --category magnetic_tile \
        --models hlgfa=results/benchmark/jobs/magnetic_tile__hlgfa/model.pt \
            padim=results/benchmark/jobs/magnetic_tile__padim/model.pt
"""

import argparse
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.models import AnomalibModule
from named_paths import named_paths
from raw_auroc import raw_score_auroc
from torchvision.transforms.v2 import Resize

from anomalib_hlgfa import Hlgfa

NORMAL = "good"


def load_model(path: Path) -> AnomalibModule:
    """A whole pickled model (``compare.py``'s ``model.pt``) or an ``Hlgfa`` Lightning checkpoint, in eval mode."""
    if path.suffix == ".ckpt":
        return Hlgfa.load_from_checkpoint(path, weights_only=False).eval()
    return torch.load(path, weights_only=False).eval()


@torch.inference_mode()
def raw_scores(model: AnomalibModule, datamodule: MVTecAD) -> tuple[torch.Tensor, list[str]]:
    """The model's raw image score and the defect type (test folder) of every test image."""
    scores, types = [], []
    for batch in datamodule.test_dataloader():
        scores.append(model.model(model.pre_processor.transform(batch.image)).pred_score.flatten())
        types += [Path(path).parent.name for path in batch.image_path]
    return torch.cat(scores), types


def per_type_auroc(scores: torch.Tensor, types: list[str]) -> dict[str, float]:
    """Image AUROC of all images, then of each defect type against the normal images, keyed ``type (count)``."""
    normal = torch.tensor([kind == NORMAL for kind in types])
    results = {f"all ({len(types)})": raw_score_auroc(scores, ~normal)}
    for kind in sorted(set(types) - {NORMAL}):
        chosen = torch.tensor([other == kind for other in types])
        keep = chosen | normal
        results[f"{kind} ({int(chosen.sum())})"] = raw_score_auroc(scores[keep], chosen[keep])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="MVTec-layout data root.")
    parser.add_argument("--category", required=True)
    parser.add_argument("--models", nargs="+", required=True, help="NAME=PATH of model.pt files or Hlgfa checkpoints.")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = named_paths(parser, args.models, "--models", "hlgfa=results/benchmark/jobs/CAT__hlgfa/model.pt")

    datamodule = MVTecAD(root=args.root, category=args.category, num_workers=0, augmentations=Resize((256, 256)))
    datamodule.setup()
    rows = {name: per_type_auroc(*raw_scores(load_model(path), datamodule)) for name, path in models.items()}
    columns = list(next(iter(rows.values())))
    print(f"\n{args.category}, image AUROC per defect type (each against the {NORMAL} test images)\n")
    print("| model | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[column]:.3f}" for column in columns) + " |")


if __name__ == "__main__":
    main()
