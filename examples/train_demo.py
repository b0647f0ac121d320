"""Train and test HLGFA end to end, offline, on a demo dataset built from scikit-image's CC0 textures.

It writes the dataset, trains HLGFA with the offline ImageNet backbone, tests it, and leaves:

- ``OUTPUT/metrics.json``: image AUROC and F1, pixel AUROC, F1 and AUPRO, fit and test seconds;
- ``OUTPUT/Hlgfa/MVTecAD/CATEGORY/latest/images/``: anomaly-map visualisations of every test image;
- ``OUTPUT/Hlgfa/MVTecAD/CATEGORY/latest/weights/lightning/model.ckpt``: the trained model.

Usage::

    python examples/train_demo.py --output results/demo
"""

import argparse
import json
import time
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_hlgfa import Hlgfa
from anomalib_hlgfa.demo_data import TEXTURES, make_demo_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("results/demo"), help="Folder for all results.")
    parser.add_argument("--category", choices=sorted(TEXTURES), default="gravel", help="Demo texture.")
    parser.add_argument("--epochs", type=int, default=10, help="Training epochs.")
    parser.add_argument("--image-size", type=int, default=256, help="Side of the demo images and model input.")
    parser.add_argument("--num-workers", type=int, default=2, help="Data-loader workers; at most your CPU cores.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data and the training.")
    args = parser.parse_args()

    dataset_root = make_demo_dataset(
        args.output / "dataset",
        category=args.category,
        image_size=args.image_size,
        seed=args.seed,
        overwrite=True,
    )
    seed_everything(args.seed, workers=True)
    datamodule = MVTecAD(
        root=dataset_root,
        category=args.category,
        train_batch_size=16,
        eval_batch_size=16,
        num_workers=args.num_workers,
    )
    model = Hlgfa(max_epochs=args.epochs, image_size=(args.image_size, args.image_size))
    engine = Engine(default_root_dir=args.output, logger=False)

    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    (metrics,) = engine.test(model=model, datamodule=datamodule)
    test_seconds = time.perf_counter() - start

    report = {
        "dataset": f"demo {args.category} ({dataset_root / args.category})",
        "epochs": args.epochs,
        "image_size": args.image_size,
        **{name: round(float(value), 4) for name, value in metrics.items()},
        "fit_seconds": round(fit_seconds, 1),
        "test_seconds": round(test_seconds, 1),
    }
    (args.output / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"Visualisations: {args.output}/Hlgfa/MVTecAD/{args.category}/latest/images")


if __name__ == "__main__":
    main()
