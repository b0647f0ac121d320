"""INT8 variants of one exported HLGFA: what each quantisation choice costs in accuracy.

From an OpenVINO FP32 export (for example the one ``benchmarks/deployment.py`` writes) it quantises
the model as ``anomalib_hlgfa.quantization`` does, calibrated on the training images, once per
variant, and scores every test image with each (image and pixel AUROC, as the deployment benchmark):

- ``shipped``: the image-reading convolutions, the heads' output projections and everything after them
  FP32 (the default);
- ``heads_fp32``: every head convolution FP32 too (the previous release);
- ``first_quantised``: the image-reading convolutions quantised too (the release before);
- ``first_quantised_overflow_fix_off``: as above, with NNCF's overflow fix off (8-bit weights in the
  first layer; NNCF's default gives it 7 bits for CPUs without VNNI);
- ``first_quantised_overflow_fix_all``: as above, with 7-bit weights in every layer.

Usage::

    python benchmarks/int8_variants.py --fp32_xml results/deployment/fp32/weights/openvino/model.xml \
        --root ../shared/data --category solar_cell --output results/int8_variants

It prints a markdown table and writes ``results.md`` and the quantised models under ``--output``.
Speed is not measured here (``benchmarks/deployment.py`` and ``benchmarks/openvino_profile.py`` do).
"""

import argparse
from pathlib import Path

import openvino as ov
import torch
from anomalib.data import MVTecAD
from deployment import evaluate, openvino_predictor
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
from torchmetrics.functional.classification import binary_auroc

from anomalib_hlgfa.quantization import quantize_int8

VARIANTS = {
    "shipped": {},
    "heads_fp32": {"quantize_heads": False},
    "first_quantised": {"keep_first_convolutions": False, "quantize_heads": False},
    "first_quantised_overflow_fix_off": {
        "keep_first_convolutions": False,
        "quantize_heads": False,
        "advanced_parameters": AdvancedQuantizationParameters(overflow_fix=OverflowFix.DISABLE),
    },
    "first_quantised_overflow_fix_all": {
        "keep_first_convolutions": False,
        "quantize_heads": False,
        "advanced_parameters": AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32_xml", type=Path, required=True, help="OpenVINO FP32 export of a trained Hlgfa.")
    parser.add_argument("--root", type=Path, required=True, help="MVTec-layout dataset root.")
    parser.add_argument("--category", required=True, help="Category under --root (the model's training data).")
    parser.add_argument("--output", type=Path, default=Path("results/int8_variants"), help="Folder for the results.")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--image-size", type=int, default=256, help="The model's input side, for the pixel metric.")
    parser.add_argument("--threads", type=int, default=1, help="Inference threads.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)

    core = ov.Core()
    predictors = {"FP32": openvino_predictor(args.fp32_xml, args.threads)}
    for name in args.variants:
        calibration = MVTecAD(root=args.root, category=args.category, num_workers=0)
        quantised = quantize_int8(core.read_model(str(args.fp32_xml)), calibration, **VARIANTS[name])
        path = args.output / f"{name}.xml"
        ov.save_model(quantised, str(path))
        predictors[name] = openvino_predictor(path, args.threads)

    test = MVTecAD(root=args.root, category=args.category, eval_batch_size=16, num_workers=0)
    test.setup("test")
    results = evaluate(predictors, test, (args.image_size, args.image_size))
    lines = ["| variant | image AUROC | pixel AUROC |", "|---|---|---|"]
    for name in predictors:
        image = float(binary_auroc(results[name]["score"], results["gt_label"]))
        pixel = float(binary_auroc(results[name]["map"].flatten(), results["gt_mask"].flatten()))
        lines.append(f"| {name} | {image:.4f} | {pixel:.4f} |")
    table = "\n".join(lines) + "\n"
    (args.output / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
