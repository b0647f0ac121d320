"""Deployment benchmark: a trained HLGFA in torch FP32, OpenVINO FP32 and OpenVINO INT8.

From one checkpoint it exports, through anomalib, an OpenVINO FP32 model and an INT8 model (NNCF
post-training quantisation of the backbone and heads, calibrated on the training images: see
``anomalib_hlgfa.quantization``), then on every test image of the category:

- parity of OpenVINO FP32 with torch: max absolute difference of the normalised anomaly map and image
  score, and the number of differing predicted labels;
- OpenVINO runs at FP32 (``INFERENCE_PRECISION_HINT``), INT8 where quantised; on a CPU with native BF16,
  where OpenVINO's default is BF16, two more rows measure that default;
- accuracy of each: image AUROC and pixel AUROC (at the model's input resolution, as anomalib tests);
- speed on this CPU at batch 1 and 16: latency per batch and images per second, on real test images
  at their stored size, pre- and post-processing included; the runtimes take turns call by call
  (median of ``--repeats`` calls each), so a drift of the machine's speed moves them alike.

Usage::

    python benchmarks/deployment.py --ckpt_path CKPT --root ../shared/data --category solar_cell \
        --output results/deployment [--threads N]

It prints a markdown table and writes ``results.json`` and ``results.md`` under ``--output``.
"""

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import CompressionType
from torch.nn import functional as F  # noqa: N812
from torchmetrics.functional.classification import binary_auroc

from anomalib_hlgfa import Hlgfa

Predictor = Callable[[torch.Tensor], dict[str, np.ndarray]]


def torch_predictor(model: Hlgfa) -> Predictor:
    """The checkpoint in torch: pre-processor, model and post-processor, as exported."""

    def predict(images: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.no_grad():
            output = model(images)
        return {name: value.numpy() for name, value in output._asdict().items() if value is not None}

    return predict


def openvino_predictor(model_xml: Path, threads: int, precision: str | None = "f32") -> Predictor:
    """An exported OpenVINO model compiled for the CPU, on ``threads`` threads.

    ``precision`` is OpenVINO's inference precision for the ops that are not quantised: ``"f32"``, or
    ``None`` for the CPU's default (BF16 where the CPU has native BF16, else FP32).
    """
    config = {"INFERENCE_NUM_THREADS": threads} | ({"INFERENCE_PRECISION_HINT": precision} if precision else {})
    compiled = ov.Core().compile_model(str(model_xml), "CPU", config)

    def predict(images: torch.Tensor) -> dict[str, np.ndarray]:
        results = compiled(images.numpy())
        return {output.get_any_name(): value for output, value in results.items()}

    return predict


def evaluate(predictors: dict[str, Predictor], datamodule: MVTecAD, map_size: tuple[int, int]) -> dict:
    """Run every predictor over the test set; return scores, maps, labels and ground truth."""
    collected: dict[str, dict[str, list]] = {name: {"score": [], "map": [], "label": []} for name in predictors}
    gt_labels, gt_masks = [], []
    for batch in datamodule.test_dataloader():
        gt_labels.append(batch.gt_label)
        masks = batch.gt_mask.float().unsqueeze(1)
        gt_masks.append(F.interpolate(masks, size=map_size, mode="nearest").squeeze(1).bool())
        for name, predict in predictors.items():
            output = predict(batch.image)
            collected[name]["score"].append(torch.from_numpy(output["pred_score"]).reshape(-1))
            collected[name]["map"].append(torch.from_numpy(output["anomaly_map"]).reshape(-1, *map_size))
            collected[name]["label"].append(torch.from_numpy(output["pred_label"]).reshape(-1))
    return {
        "gt_label": torch.cat(gt_labels).int(),
        "gt_mask": torch.cat(gt_masks).int(),
        **{name: {key: torch.cat(values) for key, values in fields.items()} for name, fields in collected.items()},
    }


def time_predictors(predictors: dict[str, Predictor], images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per call of each predictor, the predictors taking turns call by call.

    This machine's speed drifts by up to a third over minutes; taking turns exposes every runtime to the
    same drift, so their ratios hold even when the absolute times move. Two warm-up calls each first.
    """
    for predict in predictors.values():
        for _ in range(2):
            predict(images)
    timings: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(repeats):
        for name, predict in predictors.items():
            start = time.perf_counter()
            predict(images)
            timings[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", type=Path, required=True, help="Trained Hlgfa checkpoint.")
    parser.add_argument("--root", type=Path, required=True, help="MVTec-layout dataset root.")
    parser.add_argument("--category", required=True, help="Category under --root.")
    parser.add_argument("--output", type=Path, default=Path("results/deployment"), help="Folder for the results.")
    parser.add_argument("--repeats", type=int, default=20, help="Timed calls per runtime and batch size.")
    parser.add_argument("--num_workers", type=int, default=2, help="Data-loader workers.")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="Inference threads, torch and OpenVINO alike."
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = Hlgfa.load_from_checkpoint(args.ckpt_path, map_location="cpu").eval()
    map_size = tuple(model.input_size)

    start = time.perf_counter()
    fp32_xml = model.to_openvino(export_root=args.output / "fp32")
    fp32_export_seconds = time.perf_counter() - start
    # Hlgfa's INT8 PTQ calibrates on the datamodule's training images (never the test images).
    calibration = MVTecAD(root=args.root, category=args.category, num_workers=args.num_workers)
    start = time.perf_counter()
    int8_xml = model.to_openvino(
        export_root=args.output / "int8",
        compression_type=CompressionType.INT8_PTQ,
        datamodule=calibration,
    )
    int8_export_seconds = time.perf_counter() - start

    predictors = {
        "torch FP32": torch_predictor(model),
        "OpenVINO FP32": openvino_predictor(fp32_xml, args.threads),
        "OpenVINO INT8": openvino_predictor(int8_xml, args.threads),
    }
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        # What a plain compile_model gives on this CPU: BF16 wherever the model is not INT8.
        predictors["OpenVINO FP32 IR, BF16 (CPU default)"] = openvino_predictor(fp32_xml, args.threads, None)
        predictors["OpenVINO INT8, BF16 elsewhere (CPU default)"] = openvino_predictor(int8_xml, args.threads, None)
    test = MVTecAD(root=args.root, category=args.category, eval_batch_size=16, num_workers=args.num_workers)
    test.setup("test")
    results = evaluate(predictors, test, map_size)

    reference, fp32 = results["torch FP32"], results["OpenVINO FP32"]
    parity = {
        "test_images": len(results["gt_label"]),
        "max_abs_diff_normalised_map": float((fp32["map"] - reference["map"]).abs().max()),
        "max_abs_diff_normalised_score": float((fp32["score"] - reference["score"]).abs().max()),
        "differing_labels": int((fp32["label"] != reference["label"]).sum()),
    }
    accuracy = {
        name: {
            "image_AUROC": float(binary_auroc(results[name]["score"], results["gt_label"])),
            "pixel_AUROC": float(binary_auroc(results[name]["map"].flatten(), results["gt_mask"].flatten())),
        }
        for name in predictors
    }

    speed_images = next(iter(test.test_dataloader())).image
    speed = {}
    for batch_size in (1, 16):
        images = speed_images[:batch_size]
        for name, seconds in time_predictors(predictors, images, args.repeats).items():
            speed[f"{name} @ batch {batch_size}"] = {
                "latency_ms_per_batch": round(seconds * 1000, 1),
                "images_per_second": round(batch_size / seconds, 2),
            }

    report = {
        "checkpoint": str(args.ckpt_path),
        "data": f"{args.root}/{args.category}",
        "input": f"test images at stored size {tuple(speed_images.shape[-2:])}, model input {map_size}",
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads (torch and OpenVINO)",
        "openvino": ov.__version__,
        "torch": torch.__version__,
        "export_seconds": {"FP32": round(fp32_export_seconds, 1), "INT8_PTQ": round(int8_export_seconds, 1)},
        "parity_openvino_fp32_vs_torch": parity,
        "accuracy": accuracy,
        "speed": speed,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(report, indent=2) + "\n")

    torch_rate = {b: speed[f"torch FP32 @ batch {b}"]["images_per_second"] for b in (1, 16)}
    lines = [
        "| runtime | image AUROC | pixel AUROC | batch 1 latency (ms) | batch 1 img/s | batch 16 img/s | "
        "speed-up vs torch (b1 / b16) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in predictors:
        one, sixteen = speed[f"{name} @ batch 1"], speed[f"{name} @ batch 16"]
        lines.append(
            f"| {name} | {accuracy[name]['image_AUROC']:.4f} | {accuracy[name]['pixel_AUROC']:.4f} | "
            f"{one['latency_ms_per_batch']} | {one['images_per_second']} | {sixteen['images_per_second']} | "
            f"{one['images_per_second'] / torch_rate[1]:.2f}x / {sixteen['images_per_second'] / torch_rate[16]:.2f}x |",
        )
    lines += [
        "",
        f"OpenVINO FP32 vs torch on {parity['test_images']} test images: max |map diff| "
        f"{parity['max_abs_diff_normalised_map']:.2e}, max |score diff| {parity['max_abs_diff_normalised_score']:.2e}, "
        f"{parity['differing_labels']} differing labels.",
    ]
    table = "\n".join(lines) + "\n"
    (args.output / "results.md").write_text(table)
    print(json.dumps(report, indent=2))
    print(table)


if __name__ == "__main__":
    main()
