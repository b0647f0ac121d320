"""A small MVTec-layout anomaly dataset made offline from scikit-image's bundled CC0 textures.

Normal images are random crops of a texture (``brick``, ``grass`` or ``gravel``: CC0 photographs
that scikit-image ships). Defective images carry one synthetic defect with its pixel mask:

- ``scratch``: a thin curved line, darker or brighter than the surface;
- ``hole``: a dark, soft-edged elliptical pit;
- ``contamination``: an elliptical patch of a different texture.

The layout is MVTec AD's, so anomalib's ``MVTecAD`` data module reads it unchanged::

    ROOT/CATEGORY/train/good/000.png
    ROOT/CATEGORY/test/{good,scratch,hole,contamination}/000.png
    ROOT/CATEGORY/ground_truth/{scratch,hole,contamination}/000_mask.png

Example:
    >>> from anomalib_hlgfa.demo_data import make_demo_dataset
    >>> root = make_demo_dataset("datasets/hlgfa_demo", category="gravel")
"""

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skimage_data
from skimage.draw import ellipse
from skimage.filters import gaussian

TEXTURES: dict[str, Callable[[], np.ndarray]] = {
    "brick": skimage_data.brick,
    "grass": skimage_data.grass,
    "gravel": skimage_data.gravel,
}
DEFECT_TYPES = ("scratch", "hole", "contamination")


def _random_crop(texture: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Crop ``size`` x ``size`` pixels at a random place, randomly flipped, as float in [0, 1]."""
    top, left = rng.integers(0, texture.shape[0] - size + 1), rng.integers(0, texture.shape[1] - size + 1)
    crop = texture[top : top + size, left : left + size].astype(np.float32) / 255.0
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1, :]
    return np.ascontiguousarray(crop)


def _scratch_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random curve, 2-4 px wide, about a third of the image long."""
    mask = np.zeros((size, size), dtype=bool)
    position = rng.uniform(0.25 * size, 0.75 * size, size=2)
    heading = rng.uniform(0, 2 * np.pi)
    radius = rng.integers(1, 3)
    for _ in range(size // 3):
        heading += rng.normal(0, 0.15)
        position = np.clip(position + np.array([np.sin(heading), np.cos(heading)]), radius, size - 1 - radius)
        row, col = position.astype(int)
        mask[row - radius : row + radius + 1, col - radius : col + radius + 1] = True
    return mask


def _ellipse_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A randomly placed and rotated ellipse, 6-14% of the image wide."""
    mask = np.zeros((size, size), dtype=bool)
    centre = rng.uniform(0.25 * size, 0.75 * size, size=2)
    radii = rng.uniform(0.06 * size, 0.14 * size, size=2)
    rows, cols = ellipse(centre[0], centre[1], radii[0], radii[1], shape=mask.shape, rotation=rng.uniform(0, np.pi))
    mask[rows, cols] = True
    return mask


def _add_defect(
    image: np.ndarray,
    defect: str,
    foreign: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Put one defect of type ``defect`` into ``image``; return the image and the defect mask."""
    size = image.shape[0]
    if defect == "scratch":
        mask = _scratch_mask(size, rng)
        value = 0.05 if rng.random() < 0.5 else 0.95
        alpha = gaussian(mask.astype(np.float32), sigma=0.7)
        image = image * (1 - alpha) + value * alpha
    elif defect == "hole":
        mask = _ellipse_mask(size, rng)
        alpha = gaussian(mask.astype(np.float32), sigma=1.5)
        image = image * (1 - 0.85 * alpha)
    elif defect == "contamination":
        mask = _ellipse_mask(size, rng)
        alpha = gaussian(mask.astype(np.float32), sigma=1.0)
        image = image * (1 - alpha) + _random_crop(foreign, size, rng) * alpha
    else:
        msg = f"Unknown defect type {defect!r}; choose from {DEFECT_TYPES}."
        raise ValueError(msg)
    return np.clip(image, 0, 1), mask


def _save_rgb(image: np.ndarray, path: Path) -> None:
    gray = (image * 255).round().astype(np.uint8)
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(path)


def make_demo_dataset(
    root: str | Path,
    category: str = "gravel",
    num_train: int = 60,
    num_test_good: int = 15,
    num_test_per_defect: int = 8,
    image_size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the demo dataset for ``category`` under ``root`` in MVTec AD's layout.

    The dataset is written to a temporary folder beside its destination and moved into place at the
    end, so an interrupted run never leaves a half-written dataset.

    Args:
        root (str | Path): Folder that will hold ``CATEGORY/``.
        category (str): Texture: ``"brick"``, ``"grass"`` or ``"gravel"``. Defaults to ``"gravel"``.
        num_train (int): Normal training images. Defaults to ``60``.
        num_test_good (int): Normal test images. Defaults to ``15``.
        num_test_per_defect (int): Test images per defect type. Defaults to ``8``.
        image_size (int): Side of the square images, at most 512. Defaults to ``256``.
        seed (int): Seed of every random choice. Defaults to ``0``.
        overwrite (bool): Replace an existing ``root/category``. Defaults to ``False``.

    Returns:
        Path: ``root``, for ``MVTecAD(root=..., category=category)``.

    Raises:
        ValueError: For an unknown category, an image size outside [32, 512], or counts below 1.
        FileExistsError: If ``root/category`` exists and ``overwrite`` is false.
    """
    if category not in TEXTURES:
        msg = f"Unknown demo category {category!r}; choose from {sorted(TEXTURES)}."
        raise ValueError(msg)
    if not 32 <= image_size <= 512:
        msg = f"image_size must be in [32, 512] (the textures are 512 px), got {image_size}."
        raise ValueError(msg)
    if min(num_train, num_test_good, num_test_per_defect) < 1:
        msg = "num_train, num_test_good and num_test_per_defect must each be at least 1."
        raise ValueError(msg)
    root = Path(root)
    destination = root / category
    if destination.exists() and not overwrite:
        msg = f"{destination} exists already; pass overwrite=True (or --overwrite) to replace it."
        raise FileExistsError(msg)

    rng = np.random.default_rng(seed)
    texture = TEXTURES[category]()
    foreign = TEXTURES[next(name for name in TEXTURES if name != category)]()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{category}-", dir=root))
    try:
        for split, count in (("train", num_train), ("test", num_test_good)):
            folder = staging / split / "good"
            folder.mkdir(parents=True)
            for index in range(count):
                _save_rgb(_random_crop(texture, image_size, rng), folder / f"{index:03d}.png")
        for defect in DEFECT_TYPES:
            image_folder, mask_folder = staging / "test" / defect, staging / "ground_truth" / defect
            image_folder.mkdir(parents=True)
            mask_folder.mkdir(parents=True)
            for index in range(num_test_per_defect):
                image, mask = _add_defect(_random_crop(texture, image_size, rng), defect, foreign, rng)
                _save_rgb(image, image_folder / f"{index:03d}.png")
                Image.fromarray(mask.astype(np.uint8) * 255).save(mask_folder / f"{index:03d}_mask.png")
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
