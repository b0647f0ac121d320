"""Image reading for anomalib's datasets: 16-bit images scaled correctly, unreadable files named.

anomalib 2.7 reads every image with ``PIL.Image.open(path).convert("RGB")``. That is right for 8-bit
grayscale (replicated to three channels), palette, RGB and RGBA images (the alpha channel is dropped),
and for 16-bit RGB PNGs (Pillow reads them as 8-bit RGB). It is wrong for 16-bit grayscale images:
Pillow clips their values at 255 instead of scaling them, so almost every pixel reads as white, with no
warning. And a corrupt file fails with Pillow's message, which in a DataLoader worker may not say which
file it was.

:func:`read_image` keeps anomalib's behaviour for every 8-bit image (the same code, so the same values),
scales 16-bit grayscale images by 1/65535, refuses 32-bit integer and floating-point images (they have no
defined range: a guess would be a silent error) and names the file in every error. Importing
``anomalib_hlgfa`` installs it in place of anomalib's ``read_image`` (:func:`install`), so anomalib's
datasets, ``PredictDataset`` and ``Engine.predict(data_path=...)`` use it.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2.functional import to_dtype, to_image
from torchvision.tv_tensors import Image as ImageTensor

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
UNSUPPORTED_MODES = frozenset({"I", "F"})  # 32-bit integer and float: no defined range of values


anomalib_read_image = None  # anomalib's own read_image, kept by install() for comparison


class ImageReadError(OSError):
    """Raised for an image file that cannot be read; the message names the file and the fix."""


def read_image(path: str | Path, as_tensor: bool = False) -> torch.Tensor | np.ndarray:
    """Read an image as RGB in ``[0, 1]``, like anomalib's ``read_image``, with 16-bit grayscale scaled.

    Args:
        path (str | Path): Image file.
        as_tensor (bool): Return a float32 ``torchvision`` image ``(3, H, W)`` instead of a float64
            array ``(H, W, 3)``. Defaults to ``False``.

    Returns:
        torch.Tensor | np.ndarray: The image, values in ``[0, 1]``.

    Raises:
        ImageReadError: If the file is missing, corrupt, truncated, not an image, or a 32-bit integer or
            floating-point image.
    """
    try:
        with Image.open(path) as image:
            if image.mode in UNSUPPORTED_MODES:
                kind = "32-bit integer" if image.mode == "I" else "32-bit floating-point"
                msg = (
                    f"Cannot read the image file {path}: it is a {kind} image (Pillow mode {image.mode!r}), "
                    "whose range of values is not defined. Convert it to an 8- or 16-bit PNG first."
                )
                raise ImageReadError(msg)
            if image.mode in SIXTEEN_BIT_MODES:
                gray = np.asarray(image).astype(np.float32) / 65535.0
                array = np.repeat(gray[..., None], 3, axis=-1)
                if as_tensor:
                    return ImageTensor(torch.from_numpy(array).permute(2, 0, 1).contiguous())
                return array.astype(np.float64)
            rgb = image.convert("RGB")  # anomalib's own conversion for everything else
            return to_dtype(to_image(rgb), torch.float32, scale=True) if as_tensor else np.array(rgb) / 255.0
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        msg = (
            f"Cannot read the image file {path}: {error}. The file is missing, corrupt, truncated or not an "
            "image: replace it, or remove it from the folder."
        )
        raise ImageReadError(msg) from error


def install() -> None:
    """Put :func:`read_image` in place of anomalib's ``read_image`` in every loaded anomalib module.

    anomalib's modules import ``read_image`` by name, so each loaded module's name is rebound; modules
    loaded later import the replacement from ``anomalib.data.utils``. Calling it again changes nothing.
    Forked DataLoader workers inherit the replacement; spawned ones only if their main module imports
    ``anomalib_hlgfa`` (or ``anomalib.models``, through the start-up hook) at its top level.
    """
    global anomalib_read_image
    from anomalib.data.utils import image as anomalib_image

    original = anomalib_image.read_image
    if original is read_image:
        return
    anomalib_read_image = original
    for name, module in list(sys.modules.items()):
        if name.startswith("anomalib") and getattr(module, "read_image", None) is original:
            module.read_image = read_image
