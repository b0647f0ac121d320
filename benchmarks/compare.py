"""Side-by-side benchmark: HLGFA against anomalib's PatchCore, EfficientAD, PaDiM and Reverse Distillation.

One command, offline. Every model sees the same MVTec-layout data, image size and seed, and every model
that takes a backbone gets the same frozen offline ImageNet ``tf_efficientnet_lite0`` (see
``benchmarks/baselines.py`` for each model's deviations from its anomalib defaults). Each job runs in
its own process: one process fits and tests (its peak RSS during the fit, validation included, is the
training memory; its peak during the test, anomalib's evaluator included, is reported apart), a second
one loads the trained model and measures inference speed (its peak RSS is the inference memory). A job that
fails, times out or passes the memory limit is recorded as failed with the reason, and the others go on.

Per model and category it reports image AUROC and F1, pixel AUROC and AUPRO (anomalib's evaluator, on
the test split), fit and test wall time, throughput at batch 32 and latency at batch 1 (pre- and
post-processing included, 256x256 inputs, torch on CPU), peak RSS for training, for the test and for
inference, the Lightning checkpoint's size, and a memory-bank model's bank (patches kept).

PatchCore on all training images does not finish here (its coreset selection runs out of time or
memory), so two stand-ins run on a seeded subset (``--patchcore-subset`` images): ``patchcore_subset``
with the usual 1 % coreset, and ``patchcore_full_bank``, whose coreset ratio is raised so that its memory
bank has the size 1 % of all training images' patches would give: its inference speed is the full
PatchCore's, whose nearest-neighbour search grows with the bank.

Usage::

    python benchmarks/efficientad_offline.py --output results/efficientad_offline   # once, ~10 min
    python benchmarks/compare.py --root ../shared/data --categories solar_cell magnetic_tile \
        --efficient-ad-assets results/efficientad_offline --output results/benchmark

Finished jobs are kept (``<output>/jobs/*.json``) and skipped when the command runs again, so an
interrupted run resumes; ``--rerun`` forces them, and ``--retime`` measures only the inference columns of
kept jobs again (the same trained models; for timing every model under the same load). The table is
written to ``results.csv``, ``results.md`` and ``results.png`` under ``--output``.
"""

import argparse
import csv
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

MODELS = (
    "hlgfa",
    "patchcore",
    "patchcore_subset",
    "patchcore_full_bank",
    "padim",
    "efficient_ad",
    "reverse_distillation",
)
SUBSET_MODELS = ("patchcore_subset", "patchcore_full_bank")
COLUMNS = (
    "category",
    "model",
    "status",
    "image_AUROC",
    "image_F1Score",
    "pixel_AUROC",
    "pixel_AUPRO",
    "fit_s",
    "fit_cpu_s",
    "test_s",
    "throughput_b32_img_s",
    "latency_b1_ms",
    "threads",
    "train_peak_rss_gb",
    "test_peak_rss_gb",
    "infer_peak_rss_gb",
    "checkpoint_mb",
    "train_images",
    "memory_bank",
    "budget",
    "reason",
)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak_rss() -> bool:
    """Restart the peak-RSS count from the current RSS (Linux ``clear_refs``); False where that is not possible.

    After a reset, ``peak_rss_gb`` counts from here: the test's evaluator can then be told apart from the fit.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far: less sensitive than wall time to other load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def trainer_budget(model: str, args: argparse.Namespace, train_images: int | None = None) -> dict:
    """Training length per model: one pass for the memory-bank models, a stated budget for the others.

    With ``train_images`` (the fit job), also what that budget needs to run: an EfficientAD budget
    shorter than an epoch (batch 1: one step per image) must still end with a validation, which
    computes the map-normalisation quantiles its test needs.
    """
    if model in {"patchcore", *SUBSET_MODELS, "padim"}:
        return {"max_epochs": 1}
    if model == "efficient_ad":
        budget = {"max_steps": args.efficient_ad_steps}
        if train_images is not None and args.efficient_ad_steps < train_images:
            budget["val_check_interval"] = args.efficient_ad_steps
        return budget
    if model == "reverse_distillation":
        return {"max_epochs": args.rd_epochs}
    return {}  # HLGFA: its own default (Hlgfa.max_epochs)


def fit_job(args: argparse.Namespace) -> dict:
    """Fit and test one model on one category; save the trained model for the inference job."""
    import torch
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from baselines import build_model
    from lightning.pytorch import seed_everything
    from lightning.pytorch.trainer.states import TrainerFn

    torch.set_num_threads(args.threads)
    seed_everything(args.seed, workers=True)
    image_size = (args.image_size, args.image_size)
    if args.model == "efficient_ad":
        os.environ["XDG_CACHE_HOME"] = str(Path(args.efficient_ad_assets).resolve() / "cache")
    model = build_model(
        args.model,
        image_size,
        efficient_ad_penalty_dir=str(Path(args.efficient_ad_assets) / "penalty") if args.efficient_ad_assets else None,
        efficient_ad_teacher_channels=args.efficient_ad_teacher_channels,
    )
    model.visualizer = None  # no image files: the benchmark times fit and test, not PNG writing
    datamodule = MVTecAD(
        root=args.root,
        category=args.category,
        train_batch_size=1 if args.model == "efficient_ad" else args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=0,  # one process: its peak RSS is the whole job's memory
        seed=args.seed,
    )
    datamodule.setup(TrainerFn.FITTING)
    all_train_images = len(datamodule.train_data)
    if args.model in SUBSET_MODELS:
        generator = torch.Generator().manual_seed(args.seed)
        keep = torch.randperm(all_train_images, generator=generator)[: args.patchcore_subset].tolist()
        datamodule.train_data = datamodule.train_data.subsample(sorted(keep))
    train_images = len(datamodule.train_data)
    if args.model == "patchcore_full_bank":
        # The coreset of all training images (1 % of their patches) cannot be selected on this machine; a
        # coreset of the same size from the subset gives PatchCore's full-data memory bank, and with it the
        # full PatchCore's inference cost (a nearest-neighbour search over that many patches).
        base_ratio = model.coreset_sampling_ratio
        if base_ratio * all_train_images > train_images:
            msg = (
                f"patchcore_full_bank: a bank of {base_ratio:.0%} of all {all_train_images} training images' "
                f"patches needs more than the {train_images}-image subset's patches; raise --patchcore-subset to "
                f"at least {math.ceil(base_ratio * all_train_images)}."
            )
            raise ValueError(msg)
        model.coreset_sampling_ratio = base_ratio * all_train_images / train_images

    run_dir = Path(args.job_dir) / "run"
    engine = Engine(default_root_dir=run_dir, logger=False, **trainer_budget(args.model, args, train_images))
    start, start_cpu = time.perf_counter(), cpu_seconds()
    engine.fit(model=model, datamodule=datamodule)
    fit_s, fit_cpu_s = time.perf_counter() - start, cpu_seconds() - start_cpu
    train_peak_rss_gb = peak_rss_gb()
    # The test's peak is mostly anomalib's evaluator (pixel AUROC and AUPRO keep every test pixel), the same
    # for every model: apart from the fit's, so that the training column is the training's own.
    test_peak_known = reset_peak_rss()
    start = time.perf_counter()
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    test_s = time.perf_counter() - start

    checkpoints = sorted(run_dir.rglob("*.ckpt"))
    checkpoint_mb = checkpoints[-1].stat().st_size / 2**20 if checkpoints else None
    torch.save(model, Path(args.job_dir) / "model.pt")
    memory_bank = getattr(getattr(model, "model", None), "memory_bank", None)
    return {
        **({"memory_bank": int(memory_bank.shape[0])} if isinstance(memory_bank, torch.Tensor) else {}),
        **{name: float(value) for name, value in metrics.items()},
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu_s,
        "test_s": test_s,
        "train_peak_rss_gb": train_peak_rss_gb,
        "test_peak_rss_gb": peak_rss_gb() if test_peak_known else None,
        "checkpoint_mb": checkpoint_mb,
        "train_images": train_images,
    }


def infer_job(args: argparse.Namespace) -> dict:
    """Load the trained model and time it on real test images, at batch 32 and at batch 1."""
    import torch
    from anomalib.data import MVTecAD
    from torch.nn import functional as F  # noqa: N812

    sys.path.insert(0, str(Path(__file__).parent))
    torch.set_num_threads(args.threads)
    if args.model == "efficient_ad":
        os.environ["XDG_CACHE_HOME"] = str(Path(args.efficient_ad_assets).resolve() / "cache")
    model = torch.load(Path(args.job_dir) / "model.pt", weights_only=False).eval()
    datamodule = MVTecAD(root=args.root, category=args.category, num_workers=0, seed=args.seed)
    datamodule.setup()
    size = (args.image_size, args.image_size)
    images = [
        F.interpolate(
            datamodule.test_data[index % len(datamodule.test_data)].image[None],
            size=size,
            mode="bilinear",
            antialias=True,
        )[0]
        for index in range(32)
    ]
    batch32 = torch.stack(images)
    batch1 = batch32[:1]

    def median_seconds(batch: torch.Tensor, repeats: int) -> float:
        with torch.inference_mode():
            model(batch)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                output = model(batch)
                times.append(time.perf_counter() - start)
        if not torch.isfinite(output.pred_score).all():
            msg = "non-finite scores at inference"
            raise RuntimeError(msg)
        return statistics.median(times)

    return {
        "throughput_b32_img_s": 32 / median_seconds(batch32, repeats=3),
        "latency_b1_ms": 1000 * median_seconds(batch1, repeats=20),
        "infer_peak_rss_gb": peak_rss_gb(),
    }


def run_worker(args: argparse.Namespace) -> None:
    """Entry point of a job process: run it and write its result JSON (or the error) atomically."""
    sys.path.insert(0, str(Path(__file__).parent))
    job_dir = Path(args.job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    out = job_dir / f"{args.worker}.json"
    try:
        result = {"status": "ok", **(fit_job(args) if args.worker == "fit" else infer_job(args))}
    except Exception as error:
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(error).__name__}: {error}"[:300]}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)


def run_process(command: list[str], log: Path, timeout_s: float, memory_limit_gb: float) -> str | None:
    """Run a job process, killing it at the timeout or the RSS limit. Returns the failure reason or None."""
    import psutil

    with log.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        watched = psutil.Process(process.pid)
        start = time.monotonic()
        while process.poll() is None:
            time.sleep(2)
            try:
                rss_gb = sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)]) / 2**30
            except psutil.Error:
                continue
            elapsed = time.monotonic() - start
            if rss_gb > memory_limit_gb or elapsed > timeout_s:
                process.kill()
                process.wait()
                if rss_gb > memory_limit_gb:
                    return f"killed at the {memory_limit_gb:.0f} GB memory limit after {elapsed / 60:.0f} min"
                return f"timed out after {timeout_s / 60:.0f} min"
    if process.returncode != 0:
        return f"process exited with code {process.returncode} (log: {log})"
    return None


def run_job(model: str, category: str, args: argparse.Namespace) -> dict:
    """Fit+test, then inference, each in its own process. Returns the job's row."""
    job_dir = Path(args.output) / "jobs" / f"{category}__{model}"
    row_file = Path(args.output) / "jobs" / f"{category}__{model}.json"
    stages = ("fit", "infer")
    kept = json.loads(row_file.read_text()) if row_file.exists() and not args.rerun else None
    if kept is not None and not (args.retime and kept.get("status") == "ok"):
        print(f"[{category} / {model}] kept from an earlier run: {row_file}", flush=True)
        return kept
    if kept is not None:  # --retime: the kept fit and its trained model, timed again
        stages = ("infer",)
    job_dir.mkdir(parents=True, exist_ok=True)
    common = [
        sys.executable,
        __file__,
        "--root",
        args.root,
        "--category",
        category,
        "--model",
        model,
        "--job-dir",
        str(job_dir),
        "--seed",
        str(args.seed),
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--patchcore-subset",
        str(args.patchcore_subset),
        "--efficient-ad-steps",
        str(args.efficient_ad_steps),
        "--efficient-ad-teacher-channels",
        str(args.efficient_ad_teacher_channels),
        "--rd-epochs",
        str(args.rd_epochs),
    ]
    if args.efficient_ad_assets:
        common += ["--efficient-ad-assets", args.efficient_ad_assets]
    row: dict = kept or {"category": category, "model": model}
    row["threads"] = args.threads
    budget = trainer_budget(model, args)
    row.setdefault("budget", " ".join(f"{k}={v}" for k, v in budget.items()) or "model default")
    for stage in stages:
        print(f"[{category} / {model}] {stage} ...", flush=True)
        reason = run_process(
            [*common, "--worker", stage],
            job_dir / f"{stage}.log",
            timeout_s=args.timeout_minutes * 60,
            memory_limit_gb=args.memory_limit_gb,
        )
        result_file = job_dir / f"{stage}.json"
        result = json.loads(result_file.read_text()) if result_file.exists() and reason is None else {}
        if reason is None and result.get("status") != "ok":
            reason = result.get("reason", "no result written")
        if reason is not None:
            row.update(status=f"failed ({stage})", reason=reason)
            break
        row.update({k: v for k, v in result.items() if k != "status"}, status="ok")
    print(f"[{category} / {model}] {row['status']} {row.get('reason', '')}", flush=True)
    tmp = row_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=2))
    tmp.replace(row_file)
    return row


def kept_row(model: str, category: str, args: argparse.Namespace) -> dict:
    """The kept result of a job, or a 'not run' row."""
    row_file = Path(args.output) / "jobs" / f"{category}__{model}.json"
    if row_file.exists():
        return json.loads(row_file.read_text())
    return {"category": category, "model": model, "status": "not run", "reason": "no kept result"}


def fmt(value: object, digits: int = 3) -> str:
    """A table cell: floats rounded, missing values empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_outputs(rows: list[dict], args: argparse.Namespace) -> None:
    """Write results.csv, results.md and results.png."""
    from baselines import DEVIATIONS

    out = Path(args.output)
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    header = (
        "| category | model | image AUROC | image F1 | pixel AUROC | AUPRO | fit s | fit CPU s | test s | img/s b32 "
        "| ms b1 | threads | train GB | test GB | infer GB | ckpt MB | train imgs | bank | budget |"
    )
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads per job "
        f"in the threads column; date {datetime.now(UTC):%Y-%m-%d}; seed {args.seed}; image size {args.image_size}.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for row in rows:
        if row.get("status") != "ok":
            lines.append(f"| {row['category']} | {row['model']} | {row['status']}: {row.get('reason', '')} |")
            continue
        cells = [row["category"], row["model"]]
        cells += [fmt(row.get(key)) for key in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO")]
        cells += [fmt(row.get(key), 0) for key in ("fit_s", "fit_cpu_s", "test_s")]
        cells += [fmt(row.get("throughput_b32_img_s"), 1), fmt(row.get("latency_b1_ms"), 0), fmt(row.get("threads"))]
        cells += [fmt(row.get(key), 2) for key in ("train_peak_rss_gb", "test_peak_rss_gb", "infer_peak_rss_gb")]
        cells += [fmt(row.get("checkpoint_mb"), 1), fmt(row.get("train_images")), fmt(row.get("memory_bank"))]
        cells += [row.get("budget", "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Deviations from anomalib's defaults:", ""]
    lines += [f"- {name}: {text}" for name, text in DEVIATIONS.items() if any(r["model"] == name for r in rows)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, out / "results.png")


def plot(rows: list[dict], path: Path) -> None:
    """Bar charts of accuracy, throughput and fit time per category and model."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    ok = [row for row in rows if row.get("status") == "ok"]
    if not ok:
        return
    categories = sorted({row["category"] for row in ok})
    panels = [
        ("image_AUROC", "image AUROC"),
        ("pixel_AUROC", "pixel AUROC"),
        ("pixel_AUPRO", "pixel AUPRO"),
        ("throughput_b32_img_s", "images/s (batch 32)"),
        ("fit_s", "fit time (s)"),
    ]
    figure, axes = plt.subplots(len(categories), len(panels), figsize=(4 * len(panels), 3.2 * len(categories)))
    axes = [axes] if len(categories) == 1 else axes
    for row_axes, category in zip(axes, categories, strict=True):
        subset = [row for row in ok if row["category"] == category]
        for axis, (key, title) in zip(row_axes, panels, strict=True):
            axis.barh([row["model"] for row in subset], [row.get(key) or 0 for row in subset])
            axis.set_title(f"{category}: {title}", fontsize=9)
            axis.tick_params(labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of the driver and of the job processes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="Folder with MVTec-layout categories.")
    parser.add_argument("--categories", nargs="+", default=["solar_cell", "magnetic_tile"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--output", default="results/benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--patchcore-subset",
        type=int,
        default=200,
        help="Training images for patchcore_subset and patchcore_full_bank.",
    )
    parser.add_argument("--efficient-ad-assets", help="Output folder of benchmarks/efficientad_offline.py.")
    parser.add_argument("--efficient-ad-teacher-channels", type=int, default=384)
    parser.add_argument("--efficient-ad-steps", type=int, default=3000)
    parser.add_argument("--rd-epochs", type=int, default=20)
    parser.add_argument("--timeout-minutes", type=float, default=60)
    parser.add_argument("--memory-limit-gb", type=float, default=20)
    parser.add_argument("--rerun", action="store_true", help="Run jobs again even if a result is kept.")
    parser.add_argument(
        "--retime",
        action="store_true",
        help="Measure the inference columns of kept jobs again (their trained models), without refitting: "
        "to time every model under the same load.",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="Run nothing: write the tables from the kept jobs; a job never run shows as 'not run'.",
    )
    # Set by the driver for the job processes.
    parser.add_argument("--worker", choices=("fit", "infer"), help=argparse.SUPPRESS)
    parser.add_argument("--category", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--job-dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    """Run every model on every category, one process per job, and write the tables."""
    args = parse_args()
    if args.worker:
        run_worker(args)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    for category in args.categories:
        if not (Path(args.root) / category / "train" / "good").is_dir():
            sys.exit(f"No training images at {Path(args.root) / category / 'train' / 'good'}: check --root.")
    if "efficient_ad" in args.models and not args.efficient_ad_assets and not args.report_only:
        sys.exit(
            "EfficientAD needs its offline teacher and penalty images: run "
            "`python benchmarks/efficientad_offline.py --output DIR` once and pass --efficient-ad-assets DIR, "
            "or leave efficient_ad out of --models."
        )
    Path(args.output).mkdir(parents=True, exist_ok=True)
    if args.report_only:
        rows = [kept_row(model, category, args) for category in args.categories for model in args.models]
    else:
        rows = [run_job(model, category, args) for category in args.categories for model in args.models]
    write_outputs(rows, args)


if __name__ == "__main__":
    main()
