"""The installed package: anomalib's CLI finds Hlgfa with no flag, and start-up stays light."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

ANOMALIB = Path(sys.executable).with_name("anomalib")


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def test_interpreter_start_up_does_not_import_torch(tmp_path: Path) -> None:
    probe = "import sys; print('torch' in sys.modules, 'anomalib_hlgfa_autoload' in sys.modules)"
    result = _run([sys.executable, "-c", probe], cwd=tmp_path)
    assert result.stdout.split() == ["False", "True"], result.stderr  # hook installed, torch untouched


def test_importing_anomalib_models_registers_hlgfa(tmp_path: Path) -> None:
    probe = "from anomalib.models import get_model; print(type(get_model('hlgfa', pre_trained=False)).__name__)"
    result = _run([sys.executable, "-c", probe], cwd=tmp_path)
    assert result.stdout.strip().splitlines()[-1] == "Hlgfa", result.stderr


@pytest.mark.parametrize("model_name", ["Hlgfa", "anomalib_hlgfa.Hlgfa"])
def test_cli_train_fits_and_tests(model_name: str, tiny_dataset: Path, tmp_path: Path) -> None:
    result = _run(
        [
            str(ANOMALIB), "train",
            "--model", model_name,
            "--model.pre_trained", "false",
            "--model.layers", "[blocks.1, blocks.2]",
            "--model.hidden_channels", "8",
            "--model.image_size", "[64, 64]",
            "--model.max_epochs", "1",
            "--data", "anomalib.data.MVTecAD",
            "--data.root", str(tiny_dataset),
            "--data.category", "gravel",
            "--data.train_batch_size", "4",
            "--data.eval_batch_size", "4",
            "--data.num_workers", "0",
            "--default_root_dir", str(tmp_path / "results"),
            "--trainer.enable_progress_bar", "false",
        ],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for metric in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):
        assert metric in result.stdout, result.stdout[-3000:]
    assert list((tmp_path / "results").rglob("model.ckpt")), "no checkpoint written"


def test_anomalib_benchmark_pipeline_runs_a_grid_of_hlgfa_models(tiny_dataset: Path, tmp_path: Path) -> None:
    # configs/benchmark.yaml's form, with a tiny model and a grid over one of its arguments.
    config = tmp_path / "benchmark.yaml"
    config.write_text(
        f"""
accelerator: cpu
benchmark:
  seed: 42
  model:
    class_path: Hlgfa
    init_args:
      pre_trained: false
      layers: [blocks.1, blocks.2]
      prior_channels: 2
      image_size: [64, 64]
      max_epochs: 1
      hidden_channels:
        grid: [4, 8]
  data:
    class_path: MVTecAD
    init_args:
      root: {tiny_dataset}
      category: gravel
      train_batch_size: 4
      eval_batch_size: 4
      num_workers: 0
"""
    )
    result = _run([str(ANOMALIB), "benchmark", "--config", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    tables = list((tmp_path / "runs" / "benchmark").glob("*/results.csv"))
    assert len(tables) == 1, (result.stdout + result.stderr)[-3000:]  # a failed job leaves no table
    with tables[0].open() as file:
        rows = list(csv.DictReader(file))
    assert [row["model.class_path"] for row in rows] == ["Hlgfa", "Hlgfa"]
    assert sorted(row["model.init_args.hidden_channels"] for row in rows) == ["4", "8"]
    for row in rows:
        for metric in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO"):
            assert 0.0 <= float(row[metric]) <= 1.0, row
        assert math.isfinite(float(row["fit_duration"])), row
