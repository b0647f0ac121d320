"""HlgfaModel: shapes, the low-resolution view, priors, frozen backbone, and learning on normal images."""

import warnings

import pytest
import torch
from anomalib.data import InferenceBatch

from anomalib_hlgfa import AlignmentLoss, HlgfaModel

from .conftest import TINY, texture_crops


@pytest.mark.parametrize(("height", "width"), [(64, 64), (96, 128), (75, 101), (256, 256)])
def test_eval_output_is_inference_batch_at_input_resolution(tiny_model: HlgfaModel, height: int, width: int) -> None:
    output = tiny_model.eval()(torch.rand(2, 3, height, width))
    assert isinstance(output, InferenceBatch)
    assert output.anomaly_map.shape == (2, 1, height, width)
    assert output.pred_score.shape == (2,)
    assert torch.isfinite(output.anomaly_map).all()
    assert torch.isfinite(output.pred_score).all()


def test_training_outputs_pair_predictions_with_high_resolution_features(tiny_model: HlgfaModel) -> None:
    predictions, targets = tiny_model.train()(torch.rand(2, 3, 64, 96))
    channels = tiny_model.feature_extractor.out_dims
    assert [t.shape for t in targets] == [(2, channels[0], 16, 24), (2, channels[1], 8, 12)]
    assert [p.shape for p in predictions] == [t.shape for t in targets]


def test_low_resolution_view_antialiases(tiny_model: HlgfaModel) -> None:
    # A one-pixel checkerboard is pure aliasing bait: strided sampling gives a flat 0 or 1 image,
    # an antialiased 2x downsample gives its true local mean, 0.5, everywhere.
    checkerboard = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2).float().expand(1, 3, 8, 8)
    low = tiny_model.low_resolution_view(checkerboard)
    assert low.shape == (1, 3, 4, 4)
    assert torch.allclose(low, torch.full_like(low, 0.5))


def test_priors_are_compressed_and_split_by_frequency(tiny_model: HlgfaModel) -> None:
    head = tiny_model.heads[0]
    features = torch.randn(1, tiny_model.feature_extractor.out_dims[0], 16, 16)
    structure, detail = head.priors(features)
    assert structure.shape == detail.shape == (1, TINY["prior_channels"], 16, 16)
    # The detail prior is a high-pass residue: a spatially constant input leaves none, and it is the pattern
    # itself, so it flips with it (the projection's bias is constant, so the high-pass removes it).
    constant = torch.ones_like(features)
    assert head.priors(constant)[1].abs().max() < 1e-5
    torch.testing.assert_close(head.priors(-features)[1], -head.priors(features)[1])
    # The energy prior says how much detail there is, not which: a pattern and its negative give the same prior.
    energy_head = HlgfaModel(**TINY, detail_prior="energy").heads[0]
    energy_head.priors.load_state_dict(head.priors.state_dict())
    assert energy_head.priors(constant)[1].max() < 1e-2  # the square root of the epsilon that keeps gradients finite
    assert energy_head.priors(features)[1].min() >= 0
    torch.testing.assert_close(energy_head.priors(-features)[1], energy_head.priors(features)[1])


def test_backbone_is_frozen_during_training(tiny_model: HlgfaModel) -> None:
    backbone_before = {k: v.clone() for k, v in tiny_model.feature_extractor.state_dict().items()}
    assert not any(p.requires_grad for p in tiny_model.feature_extractor.parameters())
    # Even an optimizer handed every parameter cannot move the backbone: it gets no gradient.
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    images = texture_crops(4, 64)
    for _ in range(3):
        optimizer.zero_grad()
        AlignmentLoss()(*tiny_model.train()(images)).backward()
        optimizer.step()
    assert all(p.grad is None for p in tiny_model.feature_extractor.parameters())
    assert any(p.grad is not None for p in tiny_model.heads.parameters())
    for key, value in tiny_model.feature_extractor.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key


def test_feature_statistics_standardise_the_normal_features() -> None:
    torch.manual_seed(0)
    tiny_model = HlgfaModel(**TINY, misalignment="standardised_rms")
    images = texture_crops(6, 64)
    # Moments of two batches add up to those of all six images.
    first, second = tiny_model.feature_moments(images[:4]), tiny_model.feature_moments(images[4:])
    tiny_model.set_feature_statistics([a + b for a, b in zip(first, second, strict=True)])
    raw = list(tiny_model.feature_extractor(images).values())
    for standardize, features in zip(tiny_model.standardization, raw, strict=True):
        standardized = standardize(features)
        assert standardized.mean(dim=(0, 2, 3)).abs().max() < 1e-4
        varying = features.std(dim=(0, 2, 3)) > 1e-3  # channels a random backbone leaves constant are floored
        assert varying.any()
        torch.testing.assert_close(standardized.std(dim=(0, 2, 3))[varying], torch.ones(int(varying.sum())))
        assert torch.isfinite(standardized).all()
    # The heads see and predict standardised features.
    _, targets = tiny_model.train()(images)
    assert targets[0].mean(dim=(0, 2, 3)).abs().max() < 1e-4


def test_feature_statistics_must_match_the_levels() -> None:
    tiny_model = HlgfaModel(**TINY, misalignment="standardised_rms")
    moments = tiny_model.feature_moments(texture_crops(2, 64))
    with pytest.raises(ValueError, match="moments for 2 feature levels, got 1"):
        tiny_model.set_feature_statistics(moments[:1])


def test_unfitted_feature_statistics_warn_once_and_fitted_or_loaded_ones_do_not() -> None:
    images = texture_crops(2, 64)
    unfitted = HlgfaModel(**TINY).eval()
    with pytest.warns(UserWarning, match=r"feature statistics are not fitted.*set_feature_statistics"):
        unfitted(images)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*feature statistics are not fitted")
        unfitted(images)  # once per model
        fitted = HlgfaModel(**TINY).eval()
        fitted.set_feature_statistics(fitted.feature_moments(images))
        fitted(images)
        loaded = HlgfaModel(**TINY).eval()
        loaded.load_state_dict(fitted.state_dict())
        assert all(standardization.fitted for standardization in loaded.standardization)
        loaded(images)
        HlgfaModel(**TINY, misalignment="cosine").eval()(images)  # nothing to fit
    # Loading an unfitted state dict leaves a model unfitted.
    reloaded = HlgfaModel(**TINY).eval()
    reloaded.load_state_dict(HlgfaModel(**TINY).state_dict())
    assert not any(standardization.fitted for standardization in reloaded.standardization)


def test_model_pickled_before_the_fitted_flag_still_runs() -> None:
    """Torch exports pickle the whole model: one pickled before the flag existed must run, and not warn."""
    model = HlgfaModel(**TINY).eval()
    model.set_feature_statistics(model.feature_moments(texture_crops(2, 64)))
    del model._unfitted_warning_given
    for standardization in model.standardization:
        del standardization.fitted
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*feature statistics are not fitted")
        assert torch.isfinite(model(texture_crops(2, 64)).pred_score).all()


def test_cosine_model_has_no_feature_statistics() -> None:
    """The cosine misalignment keeps 0.1's state dict; statistics are refused with what uses them."""
    tiny_model = HlgfaModel(**TINY, misalignment="cosine")
    assert not any("standardization" in key for key in tiny_model.state_dict())
    refused = r"standardised misalignment \('standardised_rms' or 'standardised_rms_cosine'\), not 'cosine'"
    with pytest.raises(ValueError, match=refused):
        tiny_model.set_feature_statistics(tiny_model.feature_moments(texture_crops(2, 64)))


def test_loss_decreases_on_normal_images(tiny_model: HlgfaModel) -> None:
    images = texture_crops(8, 64)
    optimizer = torch.optim.AdamW(tiny_model.heads.parameters(), lr=3e-3)
    loss_fn = AlignmentLoss()
    tiny_model.train()
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = loss_fn(*tiny_model(images))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize(
    ("argument", "value"),
    [("downsample_factor", 1), ("downsample_factor", 1.5), ("hidden_channels", 0), ("prior_channels", 0)],
)
def test_invalid_arguments_are_named(argument: str, value: float) -> None:
    with pytest.raises(ValueError, match=argument):
        HlgfaModel(**{**TINY, argument: value})


def test_clean_heads_join_the_map_by_the_minimum_and_leave_the_score() -> None:
    torch.manual_seed(0)
    model = HlgfaModel(**TINY, clean_heads=True).eval()
    images = torch.rand(2, 3, 64, 64)
    output = model(images)
    with torch.no_grad():
        low, high = model.features(images)
        generator = model.anomaly_map_generator
        heads_map, heads_score_map = generator.maps(model.predict(model.heads, low, high), high, (64, 64))
        clean_map, _ = generator.maps(model.predict(model.clean_heads, low, high), high, (64, 64))
    torch.testing.assert_close(output.anomaly_map, torch.minimum(heads_map, clean_map))
    torch.testing.assert_close(output.pred_score, generator.image_score(heads_score_map))
    # Each head set gives the minimum somewhere: the map is not simply one of them.
    assert (clean_map < heads_map).any()
    assert (heads_map < clean_map).any()


def test_training_mode_predicts_with_the_head_set_asked_for() -> None:
    torch.manual_seed(0)
    model = HlgfaModel(**TINY, clean_heads=True).train()
    images = torch.rand(2, 3, 64, 64)
    predictions, _ = model(images)
    clean_predictions, _ = model(images, clean=True)
    low, high = model.features(images)
    torch.testing.assert_close(clean_predictions, model.predict(model.clean_heads, low, high))
    torch.testing.assert_close(predictions, model.predict(model.heads, low, high))
    with pytest.raises(ValueError, match="no clean_heads to train: build it with clean_heads=True"):
        HlgfaModel(**TINY).train()(images, clean=True)
