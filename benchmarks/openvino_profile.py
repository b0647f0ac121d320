"""Where an exported OpenVINO model spends its time: per-op totals from the CPU plugin's profiler.

Usage::

    python benchmarks/openvino_profile.py results/deployment/int8/weights/openvino/model.xml --batch 16

It compiles the model with ``PERF_COUNT`` on ``--threads`` threads, runs random images of
``--image-size`` (two warm-up calls, then ``--repeats``), and prints the mean total and the op types
(with the kernel OpenVINO chose) that take the most time per call; ``--by-node`` lists single nodes.
"""

import argparse
from collections import Counter

import numpy as np
import openvino as ov


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_xml", help="Exported OpenVINO model (model.xml).")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=400, help="Side of the random input images.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=15, help="Rows to print.")
    parser.add_argument("--by-node", action="store_true", help="One row per node instead of per op type.")
    args = parser.parse_args()

    # FP32 where not quantised, as benchmarks/deployment.py times it (BF16 is the default on CPUs that have it).
    config = {"INFERENCE_NUM_THREADS": args.threads, "PERF_COUNT": True, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(args.model_xml, "CPU", config)
    request = compiled.create_infer_request()
    images = np.random.default_rng(0).random((args.batch, 3, args.image_size, args.image_size), dtype=np.float32)
    for _ in range(2):
        request.infer(images)
    milliseconds: Counter = Counter()
    for _ in range(args.repeats):
        request.infer(images)
        for info in request.profiling_info:
            key = (info.node_name if args.by_node else "", info.node_type, info.exec_type)
            milliseconds[key] += info.real_time.total_seconds() * 1000 / args.repeats
    print(f"{sum(milliseconds.values()):.1f} ms per call, batch {args.batch}, {args.threads} thread(s)")
    for (node, op_type, kernel), ms in milliseconds.most_common(args.top):
        print(f"{ms:9.2f} ms  {op_type:18s} {kernel:24s} {node}")


if __name__ == "__main__":
    main()
