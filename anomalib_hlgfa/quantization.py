"""INT8 post-training quantisation of an exported HLGFA, calibrated on training images.

anomalib's default INT8 PTQ quantises every activation of the exported graph and calibrates on the
validation split (the test images, for MVTec-layout data). For HLGFA both are wrong:

- Calibration must see normal training images only; test images would leak labels into deployment.
- From each refinement head's output projection on, the graph computes the prediction, the
  misalignment map and its normalisation. Their activation ranges, calibrated on normal images, clip
  every anomalous value to the same ceiling, so all defects score alike (measured: image AUROC fell to
  0.50 on solar_cell). So the output projections and every op that depends on them (the misalignment,
  fusion, blur and normalisation) stay in FP32. What is quantised is the frozen backbone, where most of
  the compute is, and the heads up to their output projections (in FP32 their 3x3 convolutions took about 15 % of
  INT8 inference time; quantised, accuracy is unchanged: ``benchmarks/int8_variants.py``).
- Except the backbone's first convolution of each view, the one that reads the image. Quantised with
  NNCF's defaults it cost 1.3-1.5 points of image AUROC (solar_cell); kept FP32, INT8 matches FP32,
  for about 3 % of INT8 speed. The ops before it (normalisation, the low-resolution view's pooling)
  then stay FP32 too: they feed only FP32 convolutions, so quantising them would only add conversions.
"""

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import nncf
    import openvino as ov
    from anomalib.data import AnomalibDataModule
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

# Parameter names survive export as constant names. A convolution whose weights match stays FP32 with
# every op that depends on it: the heads' output projections, or with ``quantize_heads=False`` every
# head convolution (the previous release's scope).
HEAD_PREFIX = re.compile(r"model\.(clean_)?heads\.")
FP32_ROOTS = re.compile(r"model\.(clean_)?heads\.\d+\.output_projection\.|model\.anomaly_map_generator\.")


def _weight_name(node: "ov.Node") -> str:
    """Friendly name of the constant a convolution's weights come from ('' if not a named constant)."""
    source = node.input_value(1).get_node()
    while source.get_type_name() == "Convert" and source.get_input_size() > 0:
        source = source.input_value(0).get_node()
    return source.get_friendly_name() if source.get_type_name() == "Constant" else ""


CONVOLUTIONS = frozenset({"Convolution", "GroupConvolution"})


def fp32_scope(
    model: "ov.Model",
    keep_first_convolutions: bool = True,
    quantize_heads: bool = True,
) -> "nncf.IgnoredScope":
    """The nodes NNCF must leave FP32: the heads' outputs and all after them, and the image-reading convolutions.

    Args:
        model (ov.Model): Exported HLGFA (FP32).
        keep_first_convolutions (bool): Keep the image-reading convolutions, and the ops before them,
            FP32. Defaults to ``True``; ``False`` only to measure what that costs.
        quantize_heads (bool): Quantise the heads up to their output projections. Defaults to ``True``;
            ``False`` keeps every head convolution FP32 (the previous release), to measure what it costs.

    Returns:
        nncf.IgnoredScope: The nodes NNCF must leave in FP32.

    Raises:
        ValueError: If no head convolution is found (not an HLGFA graph, or export renamed parameters).
    """
    import nncf

    ignored: set[str] = set()
    first_convolutions: set[str] = set()
    before_convolutions: set[str] = set()  # pre-processing: no convolution upstream
    after_convolution: set[str] = set()  # nodes with a convolution upstream
    for node in model.get_ordered_ops():  # topological order: parents come before children
        name = node.get_friendly_name()
        parents = [value.get_node().get_friendly_name() for value in node.input_values()]
        is_convolution = node.get_type_name() in CONVOLUTIONS
        downstream_of_convolution = any(parent in after_convolution for parent in parents)
        if is_convolution and not downstream_of_convolution:
            first_convolutions.add(name)
        if is_convolution or downstream_of_convolution:
            after_convolution.add(name)
        elif node.get_type_name() not in {"Parameter", "Constant"}:
            before_convolutions.add(name)
        weights = _weight_name(node) if is_convolution else ""
        is_root = bool(FP32_ROOTS.match(weights)) or (not quantize_heads and bool(HEAD_PREFIX.match(weights)))
        if is_root or any(parent in ignored for parent in parents):
            ignored.add(name)
    if not ignored:
        msg = (
            "No HLGFA refinement-head convolution found in the exported graph: expected weights named "
            f"{FP32_ROOTS.pattern!r}. Export the model with anomalib_hlgfa's Hlgfa."
        )
        raise ValueError(msg)
    if keep_first_convolutions:
        ignored |= first_convolutions | before_convolutions
    return nncf.IgnoredScope(names=sorted(ignored), validate=False)


def quantize_int8(
    model: "ov.Model",
    datamodule: "AnomalibDataModule | None",
    keep_first_convolutions: bool = True,
    quantize_heads: bool = True,
    advanced_parameters: "AdvancedQuantizationParameters | None" = None,
) -> "ov.Model":
    """Quantise the backbone and the heads' inner layers to INT8, calibrated on normal training images.

    Args:
        model (ov.Model): Exported HLGFA (FP32).
        datamodule (AnomalibDataModule | None): The data the model was trained on.
        keep_first_convolutions (bool): See :func:`fp32_scope`. Defaults to ``True``.
        quantize_heads (bool): See :func:`fp32_scope`. Defaults to ``True``.
        advanced_parameters (AdvancedQuantizationParameters | None): NNCF's advanced options, for
            measuring alternatives (``benchmarks/int8_variants.py``). Defaults to NNCF's.

    Returns:
        ov.Model: The quantised model.

    Raises:
        ValueError: If no datamodule is given.
    """
    import nncf

    if datamodule is None:
        msg = (
            "INT8_PTQ calibrates on the training images: pass the datamodule the model was trained on "
            "(CLI: --data anomalib.data.MVTecAD --data.root ROOT --data.category CAT)."
        )
        raise ValueError(msg)
    datamodule.setup("fit")
    dataloader = datamodule.train_dataloader()
    calibration = nncf.Dataset(dataloader, lambda batch: batch.image.numpy())
    # subset_size counts dataset items, here batches: cover the whole training set.
    return nncf.quantize(
        model,
        calibration,
        subset_size=len(dataloader),
        ignored_scope=fp32_scope(model, keep_first_convolutions, quantize_heads),
        advanced_parameters=advanced_parameters,
    )
