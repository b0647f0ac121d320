"""The installed package: anomalib's CLI finds Hlgfa with no flag, and start-up stays light."""

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
