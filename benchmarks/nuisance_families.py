"""Which nuisance raises the alarms? Trained HLGFA models scored on normals with one nuisance family at a time.

For one category, every normal test image is scored clean and with each family alone: the six training
families at the strengths of the robustness benchmark's test set (``robustness.TEST_SET_FAMILIES``, here
with probability 1) and each held-out family (JPEG artefacts, lens smudge). Per model and family it
prints the image AUROC against the unchanged defective test images and the false-positive rate at the
threshold that flags at most 5 % of the clean normals (as ``robustness.py``'s ``@5%`` columns). Images go
through the 8-bit grey round trip the benchmark's saved test set has.

Usage::

    python benchmarks/nuisance_families.py --root ../shared/data --category solar_cell \
        --checkpoints default=PATH/model.ckpt no_augmentation=PATH/model.ckpt
"""

import argparse
import sys
from pathlib import Path

import torch
from anomalib.data.utils import read_image
from torchmetrics.functional.classification import binary_auroc

sys.path.insert(0, str(Path(__file__).parent))
import robustness
from named_paths import named_paths

from anomalib_hlgfa import Hlgfa
from anomalib_hlgfa.augmentation import FAMILIES, NuisanceAugmentation, NuisanceConfig


def load(path: Path) -> torch.Tensor:
    """An image file as ``(1, 3, H, W)`` in ``[0, 1]``, read as anomalib's data modules read it."""
    return read_image(path, as_tensor=True).unsqueeze(0)


def grey_8bit(image: torch.Tensor) -> torch.Tensor:
    """The benchmark's saved form: 8-bit, grey (both categories are grey), read back as RGB."""
    return ((image * 255).round().mean(1, keepdim=True).round() / 255).expand(-1, 3, -1, -1)


def variants(normals: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """The normal images clean and with each family alone."""
    result = {"clean": normals}
    for family in FAMILIES:
        strength = getattr(robustness.TEST_SET_FAMILIES, family).strength
        augment = NuisanceAugmentation(NuisanceConfig.only(family, 1.0, strength, seed=robustness.NUISANCE_SEED))
        result[family] = [grey_8bit(augment(image)) for image in normals]
    for family, apply in (("jpeg", robustness.jpeg_artefacts), ("lens_smudge", robustness.lens_smudge)):
        generator = torch.Generator().manual_seed(robustness.NUISANCE_SEED)
        result[family] = [grey_8bit(apply(image, generator).clamp(0, 1)) for image in normals]
    return result


def scores(model: Hlgfa, images: list[torch.Tensor], batch_size: int = 16) -> torch.Tensor:
    """Normalised image scores ``(N,)`` of ``model`` (pre- and post-processing included).

    Images of different sizes (magnetic_tile's vary) go in separate batches; the model resizes each.
    """
    batches: list[list[torch.Tensor]] = []
    for image in images:
        if batches and len(batches[-1]) < batch_size and batches[-1][0].shape == image.shape:
            batches[-1].append(image)
        else:
            batches.append([image])
    with torch.no_grad():
        return torch.cat([model(torch.cat(batch)).pred_score.reshape(-1) for batch in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="MVTec-layout data root.")
    parser.add_argument("--category", required=True)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="NAME=PATH of trained Hlgfa checkpoints.")
    args = parser.parse_args()
    named = named_paths(parser, args.checkpoints, "--checkpoints", "default=results/model.ckpt")

    test = args.root / args.category / "test"
    normals = [load(path) for path in sorted((test / "good").iterdir())]
    defects = [
        load(path) for folder in sorted(test.iterdir()) if folder.name != "good" for path in sorted(folder.iterdir())
    ]
    sets = variants(normals)
    print("| model | nuisance | image AUROC | FPR @5% |\n|---|---|---|---|")
    for name, path in named.items():
        model = Hlgfa.load_from_checkpoint(path, map_location="cpu").eval()
        defect_scores = scores(model, defects)
        clean = scores(model, normals)
        threshold = robustness.operating_threshold(clean.tolist())
        for family, images in sets.items():
            normal_scores = clean if family == "clean" else scores(model, images)
            labels = torch.cat([torch.zeros(len(normal_scores)), torch.ones(len(defect_scores))]).int()
            auroc = float(binary_auroc(torch.cat([normal_scores, defect_scores]), labels))
            fpr = float((normal_scores > threshold).float().mean())
            print(f"| {name} | {family} | {auroc:.3f} | {fpr:.3f} |", flush=True)


if __name__ == "__main__":
    main()
