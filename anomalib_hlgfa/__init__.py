"""HLGFA (High-Low resolution Guided Feature Alignment) anomaly detection for anomalib.

Importing this package registers :class:`Hlgfa` with anomalib, so that
``anomalib.models.get_model("hlgfa")``, the CLI's ``--model Hlgfa`` and the ``class_path: Hlgfa`` of
anomalib's pipeline configs (``anomalib benchmark``, the tiled ensemble) find it. Once the package is
installed, the CLI finds it without an import: see ``anomalib_hlgfa_autoload``.

It also puts :func:`anomalib_hlgfa.image.read_image` in place of anomalib's image reader: the same values
for 8-bit images, 16-bit grayscale scaled instead of clipped, and errors that name the file.
"""

from importlib import import_module

from . import image
from .anomaly_map import AnomalyMapGenerator, Misalignment, ScoreReduction
from .lightning_model import Hlgfa
from .loss import AlignmentLoss
from .torch_model import DetailPrior, HlgfaModel

image.install()

# anomalib's get_model resolves a config's ``class_path: Hlgfa`` (what its benchmark and tiled-ensemble
# pipelines pass) as an attribute of anomalib.models, and refuses class paths outside anomalib.
# import_module, not ``import anomalib.models``: the autoload imports this package while anomalib.models
# is still being bound to its parent package.
_anomalib_models = import_module("anomalib.models")
if not hasattr(_anomalib_models, Hlgfa.__name__):
    _anomalib_models.Hlgfa = Hlgfa

__all__ = [
    "AlignmentLoss",
    "AnomalyMapGenerator",
    "DetailPrior",
    "Hlgfa",
    "HlgfaModel",
    "Misalignment",
    "ScoreReduction",
]
