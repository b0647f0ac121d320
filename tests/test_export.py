"""Export through anomalib (torch, ONNX, OpenVINO) carries the whole pipeline, with parity to torch."""

from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from anomalib.deploy import TorchInferencer

from anomalib_hlgfa import Hlgfa

from .conftest import TINY

SIZE = (64, 64)


@pytest.fixture(scope="module")
def model_and_inputs() -> tuple[Hlgfa, torch.Tensor]:
    torch.manual_seed(0)
    model = Hlgfa(**TINY, image_size=SIZE).eval()
    # Raw images at another size than the model's: the exported graph must resize them itself.
    return model, torch.rand(2, 3, 80, 96)


@pytest.fixture(scope="module")
def torch_outputs(model_and_inputs: tuple[Hlgfa, torch.Tensor]) -> dict[str, np.ndarray]:
    model, images = model_and_inputs
    with torch.no_grad():
        output = model(images)
    return {name: value.numpy() for name, value in output._asdict().items() if value is not None}


def _run_openvino(path: Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    compiled = ov.Core().compile_model(str(path), "CPU")
    results = compiled(images.numpy())
    return {output.get_any_name(): value for output, value in results.items()}


def _assert_parity(exported: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert set(exported) == set(reference) == {"pred_score", "pred_label", "anomaly_map", "pred_mask"}
    assert exported["anomaly_map"].shape == reference["anomaly_map"].shape == (2, 1, *SIZE)
    assert np.abs(exported["anomaly_map"] - reference["anomaly_map"]).max() <= 1e-4
    assert np.abs(exported["pred_score"].ravel() - reference["pred_score"].ravel()).max() <= 1e-5
    assert np.array_equal(exported["pred_label"].ravel(), reference["pred_label"].ravel())


@pytest.mark.parametrize("export_type", ["onnx", "openvino"])
def test_exported_graph_matches_torch(
    export_type: str,
    model_and_inputs: tuple[Hlgfa, torch.Tensor],
    torch_outputs: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    model, images = model_and_inputs
    exporter = model.to_onnx if export_type == "onnx" else model.to_openvino
    path = exporter(export_root=tmp_path, input_size=(80, 96))
    _assert_parity(_run_openvino(path, images), torch_outputs)


def test_torch_export_loads_in_torch_inferencer(
    model_and_inputs: tuple[Hlgfa, torch.Tensor],
    torch_outputs: dict[str, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, images = model_and_inputs
    path = model.to_torch(export_root=tmp_path)
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # anomalib's opt-in for loading a pickled model we made
    inferencer = TorchInferencer(path=path, device="cpu")
    output = inferencer.model(images)
    exported = {name: value.detach().numpy() for name, value in output._asdict().items() if value is not None}
    _assert_parity(exported, torch_outputs)
