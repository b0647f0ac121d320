"""HLGFA (High-Low resolution Guided Feature Alignment) anomaly detection for anomalib.

Importing this package registers :class:`Hlgfa` with anomalib, so that
``anomalib.models.get_model("hlgfa")`` and the CLI's ``--model Hlgfa`` find it. Once the package is
installed, the CLI finds it without an import: see ``anomalib_hlgfa_autoload``.

It also puts :func:`anomalib_hlgfa.image.read_image` in place of anomalib's image reader: the same values
for 8-bit images, 16-bit grayscale scaled instead of clipped, and errors that name the file.
"""

from . import image
from .anomaly_map import AnomalyMapGenerator, Misalignment, ScoreReduction
from .lightning_model import Hlgfa
from .loss import AlignmentLoss
from .torch_model import DetailPrior, HlgfaModel

image.install()

__all__ = [
    "AlignmentLoss",
    "AnomalyMapGenerator",
    "DetailPrior",
    "Hlgfa",
    "HlgfaModel",
    "Misalignment",
    "ScoreReduction",
]
