"""Shared fixtures: tiny models and small generated datasets, so the suite runs in minutes on 2 CPU cores."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from anomalib_hlgfa import HlgfaModel
from anomalib_hlgfa.demo_data import TEXTURES, make_demo_dataset

SCRIPTS = Path(__file__).parents[1]


def load_script(relative_path: str) -> ModuleType:
    """Import a script of ``benchmarks/`` or ``examples/`` by path; its folder is importable while it loads."""
    path = SCRIPTS / relative_path
    sys.path.insert(0, str(path.parent))  # e.g. robustness.py imports its sibling baselines.py
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


# Shallow levels of a randomly initialised lite0 and narrow heads: fast, same code paths as the default.
TINY = {"pre_trained": False, "layers": ("blocks.1", "blocks.2"), "hidden_channels": 8, "prior_channels": 2}


@pytest.fixture
def tiny_model() -> HlgfaModel:
    torch.manual_seed(0)
    return HlgfaModel(**TINY)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MVTec-layout dataset: 8 normal training images and 12 test images of 64 x 64 px."""
    return make_demo_dataset(
        tmp_path_factory.mktemp("data"),
        category="gravel",
        num_train=8,
        num_test_good=3,
        num_test_per_defect=3,
        image_size=64,
    )


def texture_crops(count: int, size: int, seed: int = 0, category: str = "gravel") -> torch.Tensor:
    """Normal images: ``(count, 3, size, size)`` random crops of a texture, scaled to ``[-1, 1]``."""
    rng = np.random.default_rng(seed)
    texture = torch.from_numpy(TEXTURES[category]()).float() / 127.5 - 1
    crops = []
    for _ in range(count):
        top, left = rng.integers(0, texture.shape[0] - size, size=2)
        crops.append(texture[top : top + size, left : left + size])
    return torch.stack(crops).unsqueeze(1).repeat(1, 3, 1, 1)
