"""Export a trained HLGFA checkpoint to OpenVINO and run it on a folder of images, offline.

Writes, under ``--output``:

- ``weights/openvino/model.xml`` and ``model.bin``: the exported model, pre-processing (resize and
  normalisation), low-resolution view, anomaly-map generation and post-processing included;
- ``overlays/NAME.png``: each image with its anomaly map overlaid;
- ``predictions.csv``: ``image, pred_score, pred_label`` per image (normalised score; label 1 = anomalous).

Usage::

    python examples/openvino_inference.py --ckpt_path model.ckpt --images path/to/images --output results/ov

The export runs once; pass ``--model_xml`` to reuse an exported model instead.

Precision: the model runs at FP32, as it was validated, with ``--inference-precision f32`` (the
default). On CPUs with native BF16 (AVX-512 BF16 or AMX) OpenVINO would otherwise run it in BF16,
faster but about 1e-2 off FP32 on the normalised map; ``--inference-precision auto`` leaves the choice
to OpenVINO.
"""

import argparse
import csv
from pathlib import Path

from anomalib.deploy import OpenVINOInferencer
from anomalib.visualization.image.functional import overlay_images, visualize_anomaly_map
from PIL import Image

from anomalib_hlgfa import Hlgfa

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def export_openvino(ckpt_path: Path, output: Path) -> Path:
    """Export ``ckpt_path`` to ``output/weights/openvino/model.xml`` and return that path."""
    model = Hlgfa.load_from_checkpoint(ckpt_path, map_location="cpu")
    return model.to_openvino(export_root=output, input_size=model.input_size)


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder`` (not recursive), sorted; an error if there are none."""
    if not folder.is_dir():
        msg = f"--images {folder} is not a folder; give the folder that holds the images to inspect."
        raise NotADirectoryError(msg)
    images = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        msg = f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}."
        raise FileNotFoundError(msg)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt_path", type=Path, help="Trained Hlgfa checkpoint to export.")
    source.add_argument("--model_xml", type=Path, help="An already exported OpenVINO model.xml.")
    parser.add_argument("--images", type=Path, required=True, help="Folder of images to inspect.")
    parser.add_argument("--output", type=Path, default=Path("results/openvino"), help="Folder for all outputs.")
    parser.add_argument("--device", default="CPU", help="OpenVINO device. Defaults to CPU.")
    parser.add_argument(
        "--inference-precision",
        choices=["f32", "bf16", "f16", "auto"],
        default="f32",
        help="OpenVINO's inference precision; auto: the device's default (BF16 on CPUs that have it). Default f32.",
    )
    args = parser.parse_args()

    images = list_images(args.images)
    model_xml = args.model_xml or export_openvino(args.ckpt_path, args.output)
    precision = {} if args.inference_precision == "auto" else {"INFERENCE_PRECISION_HINT": args.inference_precision}
    inferencer = OpenVINOInferencer(path=model_xml, device=args.device, config=precision)

    overlays = args.output / "overlays"
    overlays.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in images:
        try:
            image = Image.open(path).convert("RGB")
        except OSError as error:
            msg = f"Cannot read image {path}: {error}. Remove or replace the file."
            raise OSError(msg) from error
        prediction = inferencer.predict(image)
        heatmap = visualize_anomaly_map(prediction.anomaly_map[0].squeeze(), colormap=True, normalize=False)
        overlay_images(image, heatmap.resize(image.size), alpha=0.5).save(overlays / f"{path.stem}.png")
        rows.append([path.name, f"{float(prediction.pred_score[0]):.6f}", int(prediction.pred_label[0])])

    with (args.output / "predictions.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "pred_score", "pred_label"])
        writer.writerows(rows)
    flagged = sum(row[2] for row in rows)
    print(f"{len(rows)} images, {flagged} flagged anomalous. Wrote {args.output / 'predictions.csv'} and {overlays}/")


if __name__ == "__main__":
    main()
