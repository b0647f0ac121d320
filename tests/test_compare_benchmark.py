"""benchmarks/compare.py's bookkeeping and memory columns, and benchmarks/evaluator_memory.py.

Kept jobs are reused, --retime times them again without refitting, and the test's peak memory is counted apart.
"""

import argparse
import json
from pathlib import Path

import pytest

from anomalib_hlgfa.demo_data import make_demo_dataset

from .conftest import load_script


@pytest.fixture
def fake_stages(monkeypatch: pytest.MonkeyPatch):
    """Replace the job processes: each stage writes its result file, and the stages run are recorded."""
    compare = load_script("benchmarks/compare.py")
    stages: list[str] = []
    results = {"fit": {"image_AUROC": 0.9, "fit_s": 100.0}, "infer": {"throughput_b32_img_s": 20.0}}

    def run_process(command: list[str], log: Path, timeout_s: float, memory_limit_gb: float) -> None:
        stage = command[command.index("--worker") + 1]
        stages.append(stage)
        (log.parent / f"{stage}.json").write_text(json.dumps({"status": "ok", **results[stage]}))

    monkeypatch.setattr(compare, "run_process", run_process)
    return compare, stages, results


def test_kept_jobs_are_reused_and_retime_runs_only_inference(fake_stages, tmp_path: Path) -> None:
    compare, stages, results = fake_stages
    args = compare.parse_args([*_argv(tmp_path), "--threads", "1"])

    first = compare.run_job("hlgfa", "cat", args)
    assert stages == ["fit", "infer"]
    assert first["throughput_b32_img_s"] == 20.0

    assert compare.run_job("hlgfa", "cat", args) == first  # kept: nothing runs
    assert stages == ["fit", "infer"]

    results["infer"] = {"throughput_b32_img_s": 25.0}
    retime = compare.parse_args([*_argv(tmp_path), "--retime", "--threads", "2"])
    retimed = compare.run_job("hlgfa", "cat", retime)
    assert stages == ["fit", "infer", "infer"]  # no refit
    assert retimed["throughput_b32_img_s"] == 25.0
    assert retimed["image_AUROC"] == 0.9  # the kept fit's columns stay
    assert retimed["fit_s"] == 100.0
    assert retimed["threads"] == 2
    assert json.loads((tmp_path / "out" / "jobs" / "cat__hlgfa.json").read_text()) == retimed


def test_retime_leaves_a_failed_job_as_it_was(fake_stages, tmp_path: Path) -> None:
    compare, stages, _ = fake_stages
    jobs = tmp_path / "out" / "jobs"
    jobs.mkdir(parents=True)
    failed = {"category": "cat", "model": "patchcore", "status": "failed (fit)", "reason": "timed out after 55 min"}
    (jobs / "cat__patchcore.json").write_text(json.dumps(failed))
    args = compare.parse_args([*_argv(tmp_path), "--retime"])
    assert compare.run_job("patchcore", "cat", args) == failed
    assert stages == []


def _argv(tmp_path: Path) -> list[str]:
    return ["--root", str(tmp_path), "--output", str(tmp_path / "out")]


def test_peak_rss_restarts_after_a_reset() -> None:
    """The test's peak is counted apart from the fit's: after the reset, a freed allocation no longer counts."""
    compare = load_script("benchmarks/compare.py")
    allocation = bytearray(400 * 2**20)
    allocation[::4096] = b"x" * len(allocation[::4096])  # touch every page so that it is resident
    del allocation
    peak_with_allocation = compare.peak_rss_gb()
    if not compare.reset_peak_rss():
        pytest.skip("this system cannot reset the peak RSS (Linux /proc/self/clear_refs)")
    assert compare.peak_rss_gb() < peak_with_allocation - 0.3


def test_evaluator_memory_computes_hlgfa_test_metrics(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """benchmarks/evaluator_memory.py computes every test metric on its synthetic maps and reports the peak."""
    script = load_script("benchmarks/evaluator_memory.py")
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("Linux only: the script restarts the peak count through /proc/self/clear_refs")
    monkeypatch.setattr("sys.argv", ["evaluator_memory.py", "--images", "6", "--side", "32", "--batch-size", "4"])
    script.main()
    output = capsys.readouterr().out
    # Every other image is defective, with a square where its map is higher: every metric is perfect.
    assert "'image_AUROC': 1.0" in output
    assert "'pixel_AUROC': 1.0" in output
    assert "'pixel_AUPRO': 1.0" in output
    assert "6 images of 32 x 32 = 0.0 M test pixels" in output
    assert "bytes per pixel" in output


def _fit_job_args(model: str, root: Path, job_dir: Path, subset: int) -> argparse.Namespace:
    """The arguments ``compare.py`` hands a fit job, for a 64 px run of ``model`` on ``root``'s gravel category."""
    return argparse.Namespace(
        model=model,
        root=str(root),
        category="gravel",
        job_dir=str(job_dir),
        seed=0,
        image_size=64,
        batch_size=4,
        threads=1,
        patchcore_subset=subset,
        efficient_ad_assets=None,
        efficient_ad_steps=1,
        efficient_ad_teacher_channels=384,
        rd_epochs=1,
    )


@pytest.mark.parametrize("model", ["patchcore_subset", "patchcore_full_bank"])
def test_patchcore_stand_ins_keep_the_memory_bank_their_names_promise(
    model: str, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On 4 of 8 training images: a 1 % coreset of the subset, or a bank as large as 1 % of all 8 images' patches."""
    compare = load_script("benchmarks/compare.py")
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))  # as a job process runs it
    result = compare.fit_job(_fit_job_args(model, tiny_dataset, tmp_path, subset=4))

    patches_per_image = (64 // 8) ** 2  # lite0 blocks.2, stride 8: PatchCore's patch grid
    images_in_bank = 8 if model == "patchcore_full_bank" else 4
    assert result["train_images"] == 4
    ratio = load_script("benchmarks/baselines.py").PATCHCORE_CORESET_RATIO
    assert result["memory_bank"] == int(images_in_bank * patches_per_image * ratio + 1e-9)
    assert 0.0 <= result["image_AUROC"] <= 1.0


def test_full_bank_refuses_a_subset_too_small_to_hold_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1 % of 101 images' patches is more than 1 image has: the error names the smallest subset that works."""
    root = make_demo_dataset(tmp_path / "data", category="gravel", num_train=101, num_test_good=1,
                             num_test_per_defect=1, image_size=64)  # fmt: skip
    compare = load_script("benchmarks/compare.py")
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    with pytest.raises(ValueError, match="raise --patchcore-subset to at least 2"):
        compare.fit_job(_fit_job_args("patchcore_full_bank", root, tmp_path / "job", subset=1))
