"""configs/hlgfa.yaml documents every argument of Hlgfa, with its real default."""

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import yaml

from anomalib_hlgfa import Hlgfa
from anomalib_hlgfa.backbone import available_layers

CONFIG = Path(__file__).parents[1] / "configs" / "hlgfa.yaml"
COMPONENT_ARGUMENTS = {"pre_processor", "post_processor", "evaluator", "visualizer"}


def _normalise(value: object) -> object:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return list(value) if isinstance(value, tuple) else getattr(value, "value", value)


def test_config_lists_every_model_argument_with_its_default() -> None:
    init_args = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    signature = inspect.signature(Hlgfa.__init__).parameters
    expected = {name: p.default for name, p in signature.items() if name != "self" and name not in COMPONENT_ARGUMENTS}
    assert set(init_args) == set(expected)
    for name, default in expected.items():
        assert init_args[name] == _normalise(default), name


def test_anomalib_cli_parses_the_config(tmp_path: Path) -> None:
    anomalib = Path(sys.executable).with_name("anomalib")
    command = [str(anomalib), "train", "--config", str(CONFIG), "--data", "anomalib.data.MVTecAD", "--print_config"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["class_path"] == "anomalib_hlgfa.Hlgfa"
    assert printed["model"]["init_args"]["layers"] == ["blocks.2", "blocks.4", "blocks.6"]


def test_wide_resnet50_config_names_valid_layers_and_parses(tmp_path: Path) -> None:
    config = CONFIG.with_name("hlgfa_wide_resnet50.yaml")
    init_args = yaml.safe_load(config.read_text())["model"]["init_args"]
    assert init_args["backbone"] == "wide_resnet50_2"
    # Checked without weights (meta device): no hub needed for the names.
    assert set(init_args["layers"]) <= set(available_layers("wide_resnet50_2"))
    anomalib = Path(sys.executable).with_name("anomalib")
    command = [str(anomalib), "train", "--config", str(config), "--data", "anomalib.data.MVTecAD", "--print_config"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert yaml.safe_load(result.stdout)["model"]["init_args"]["layers"] == ["layer1", "layer2", "layer3"]


def test_wide_resnet50_config_keeps_every_other_default() -> None:
    """It claims to differ from the offline default in backbone and layers only: hold it to that."""
    init_args = yaml.safe_load(CONFIG.with_name("hlgfa_wide_resnet50.yaml").read_text())["model"]["init_args"]
    signature = inspect.signature(Hlgfa.__init__).parameters
    for name, value in init_args.items():
        if name not in {"backbone", "layers"}:
            assert value == _normalise(signature[name].default), name
