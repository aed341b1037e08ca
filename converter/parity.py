"""Parity check: the converted Keras model against the original graph, stage by stage.

Both models receive one identical float32 tensor, with images preprocessed once, so the
check measures the conversion and the model code alone. Preprocessing has its own tests.
The original side is `converter.reference_graph`, built from the checkpoint's own variable
names.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from converter import imagenet_classes
from converter.arguments import (require_at_least, require_choice, require_crop_padding,
                                 require_image_size)
from converter.checkpoint.variables import WEIGHT_CHOICES
from converter.errors import DataError, OutputError, RsconvertError, WeightsFileError
from converter.variants import CROP_PADDING

logger = logging.getLogger(__name__)

# Largest allowed max|keras - original| / max|original| per stage.
# float32: both graphs compute in float32 and differ only in summation order, from oneDNN
# vs Eigen kernels and folded vs unfolded batch norm. Measured on a 2-core CPU with
# TensorFlow 2.21: up to 5e-6 on the reference ResNet-RS-50 checkpoint at 160 px and 5e-7
# on a random ResNet-RS-420 at 224 px. 1e-4 leaves 20x headroom, while in the tests one
# swapped kernel or one replaced BN variance moves a stage by 0.2 or more.
FLOAT32_TOLERANCE = 1e-4
# bfloat16: the original rounds every tensor to 8 significant bits, which moves the stages of
# ResNet-RS-50 by up to 0.06 against the float32 original. A correct float32 Keras model is
# about as far from that graph as the float32 original is, so each stage may differ by that
# gap, measured on the same images, plus this margin. By the triangle inequality a conversion
# within FLOAT32_TOLERANCE stays within gap + 1e-4, while the damage above adds 0.18 or more.
BFLOAT16_MARGIN = 1e-3

DEFAULT_IMAGE_SIZE = 224
DEFAULT_RANDOM_IMAGES = 2
DEFAULT_BATCH_SIZE = 8
# Suggested in the error for a --json path that is a directory.
DEFAULT_JSON_NAME = "parity.json"


@dataclasses.dataclass(frozen=True)
class StageComparison:
    """How far one stage output of the Keras model is from the original's."""

    stage: str
    shape: tuple[int, ...]
    max_abs_diff: float
    # max|keras - original| / max|original|: one scale per stage, so that entries near zero
    # cannot inflate it.
    max_rel_diff: float
    reference_max_abs: float
    tolerance: float
    # bfloat16 checks only: max rel diff of the bfloat16 original against the float32 one.
    precision_gap: float | None = None

    @property
    def within_tolerance(self) -> bool:
        # Written so that NaN fails.
        return self.max_rel_diff <= self.tolerance


@dataclasses.dataclass(frozen=True)
class TopKAgreement:
    """Agreement of two logit batches on the predicted classes."""

    images: int
    top1_matches: int
    # Mean over images of |top-5(a) ∩ top-5(b)| / 5.
    top5_overlap: float

    @property
    def top1_agreement(self) -> float:
        return self.top1_matches / self.images


@dataclasses.dataclass(frozen=True)
class PrecisionGap:
    """The bfloat16 original's logits against the float32 original's."""

    max_abs_diff: float
    max_rel_diff: float
    agreement: TopKAgreement


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """Result of one parity check; `passed` is True when every stage is within tolerance."""

    checkpoint: str
    weights_file: str
    depth: int
    num_classes: int
    image_size: int
    inputs: str
    num_images: int
    weights: str
    precision: str
    stages: tuple[StageComparison, ...]
    skipped_stages: tuple[str, ...]
    logits: TopKAgreement | None
    bfloat16_gap: PrecisionGap | None = None

    @property
    def first_failing_stage(self) -> str | None:
        for comparison in self.stages:
            if not comparison.within_tolerance:
                return comparison.stage
        return None

    @property
    def passed(self) -> bool:
        return self.first_failing_stage is None

    @property
    def tolerance(self) -> float:
        """Tolerance of the first failing stage, else the largest one applied."""
        for comparison in self.stages:
            if not comparison.within_tolerance:
                return comparison.tolerance
        return max((c.tolerance for c in self.stages), default=FLOAT32_TOLERANCE)

    def to_dict(self) -> dict:
        """Return the report as JSON-ready data; infinities and NaN become strings."""
        data = dataclasses.asdict(self)
        data["passed"] = self.passed
        data["first_failing_stage"] = self.first_failing_stage
        for stage, comparison in zip(data["stages"], self.stages):
            stage["shape"] = list(comparison.shape)
            stage["within_tolerance"] = comparison.within_tolerance
        if self.logits is not None:
            data["logits"]["top1_agreement"] = self.logits.top1_agreement
        if self.bfloat16_gap is not None:
            data["bfloat16_gap"]["agreement"]["top1_agreement"] = (
                self.bfloat16_gap.agreement.top1_agreement)
        return _json_safe(data)

    def format_table(self) -> str:
        """Return a readable multi-line summary with one row per stage."""
        with_gap = self.precision == "bfloat16"
        header = (f"{'stage':<14}{'shape':<20}{'max |diff|':>12}{'max rel diff':>14}"
                  + (f"{'bf16 gap':>11}" if with_gap else "") + f"{'tolerance':>11}  result")
        lines = [
            f"Parity check: {Path(self.weights_file).name} against the original graph of "
            f"{self.checkpoint}",
            f"ResNet-RS-{self.depth}, {self.num_classes} classes, {self.image_size} px, "
            f"{_plural(self.num_images, 'image')} ({self.inputs}), "
            f"{self.weights} weights, "
            f"{self.precision} original",
            "",
            header,
        ]
        for c in self.stages:
            shape = "x".join(str(d) for d in c.shape)
            gap = f"{c.precision_gap:>11.3g}" if with_gap else ""
            result = "ok" if c.within_tolerance else "FAIL"
            lines.append(f"{c.stage:<14}{shape:<20}{c.max_abs_diff:>12.3g}"
                         f"{c.max_rel_diff:>14.3g}{gap}{c.tolerance:>11.3g}  {result}")
        for stage in self.skipped_stages:
            lines.append(f"{stage:<14}not in the weights file")
        lines.append("")
        if self.logits is not None:
            lines.append("Keras vs original logits: " + _format_agreement(self.logits))
        if self.bfloat16_gap is not None:
            gap = self.bfloat16_gap
            lines.append(
                f"bfloat16 vs float32 original: logits max |diff| {gap.max_abs_diff:.3g} "
                f"({gap.max_rel_diff:.2%} of the bfloat16 original's max |logit|), "
                + _format_agreement(gap.agreement))
        if self.passed:
            lines.append(f"PASS: all {len(self.stages)} stages within tolerance.")
        else:
            failing = next(c for c in self.stages if c.stage == self.first_failing_stage)
            lines.append(f"FAIL: first stage beyond tolerance is {failing.stage} "
                         f"(max rel diff {failing.max_rel_diff:.3g} > {failing.tolerance:.3g}).")
        return "\n".join(lines)


def _format_agreement(agreement: TopKAgreement) -> str:
    return (f"top-1 agreement {agreement.top1_matches}/{agreement.images} "
            f"({agreement.top1_agreement:.1%}), top-5 overlap {agreement.top5_overlap:.1%}")


def _json_safe(value):
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def compare_stage(stage: str, candidate: np.ndarray, reference: np.ndarray,
                  tolerance: float = math.inf) -> StageComparison:
    """Compare one stage output; `reference` is the original graph's."""
    if candidate.shape != reference.shape:
        raise RsconvertError(f"Stage {stage}: the Keras output has shape {list(candidate.shape)} "
                             f"but the original graph's has {list(reference.shape)}.")
    difference = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    max_abs_diff = float(difference.max())
    reference_max_abs = float(np.abs(reference).max())
    if reference_max_abs > 0:
        max_rel_diff = max_abs_diff / reference_max_abs
    else:
        max_rel_diff = 0.0 if max_abs_diff == 0 else math.inf
    if not np.isfinite(candidate).all() or not np.isfinite(reference).all():
        max_rel_diff = math.nan
    return StageComparison(stage, tuple(int(d) for d in reference.shape), max_abs_diff,
                           max_rel_diff, reference_max_abs, tolerance)


def compare_stages(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                   precision: str, float32_reference: dict[str, np.ndarray] | None = None
                   ) -> tuple[StageComparison, ...]:
    """Compare every stage present in `candidate`, in network order, with its tolerance.

    For precision "bfloat16", `float32_reference` contains the float32 original's stages,
    and each stage's tolerance is its own bfloat16-vs-float32 gap plus BFLOAT16_MARGIN.
    """
    from converter.reference_graph import STAGES

    comparisons = []
    for stage in (s for s in STAGES if s in candidate):
        if precision == "float32":
            comparisons.append(compare_stage(stage, candidate[stage], reference[stage],
                                             FLOAT32_TOLERANCE))
            continue
        if float32_reference is None:
            raise ValueError("a bfloat16 comparison needs the float32 original's stages")
        # Scaled by max|bfloat16 original| like the candidate's difference, so the two add.
        gap = compare_stage(stage, float32_reference[stage], reference[stage]).max_rel_diff
        comparison = compare_stage(stage, candidate[stage], reference[stage],
                                   gap + BFLOAT16_MARGIN)
        comparisons.append(dataclasses.replace(comparison, precision_gap=gap))
    return tuple(comparisons)


def topk_agreement(candidate: np.ndarray, reference: np.ndarray,
                   k: int = imagenet_classes.TOP_K) -> TopKAgreement:
    """Count top-1 matches and the mean top-k overlap of two [N, classes] logit arrays."""
    k = min(k, reference.shape[-1])
    top1_matches = int(np.sum(candidate.argmax(-1) == reference.argmax(-1)))
    top_candidate = np.argsort(-candidate, axis=-1)[:, :k]
    top_reference = np.argsort(-reference, axis=-1)[:, :k]
    shared = [len(set(a) & set(b)) / k for a, b in zip(top_candidate, top_reference)]
    return TopKAgreement(int(reference.shape[0]), top1_matches, float(np.mean(shared)))


def photo_like_images(count: int, image_size: int, seed: int = 0) -> np.ndarray:
    """Draw smooth random RGB images and normalize them like the eval; float32 [N, S, S, 3].

    Each image is a sum of random fields drawn on 4x4, S/8 and S/2 grids and resized
    bicubically to S (amplitudes 255, 40 and 10 on the 0..255 scale), clipped to 0..255.
    Like photos, and unlike white noise, they keep a deep network's activations in the
    range its batch-norm statistics were calibrated for.
    """
    import tensorflow as tf

    from converter.preprocessing import normalize

    if count < 1:
        raise RsconvertError(f"Invalid number of random images {count!r}; expected 1 or more.")
    rng = np.random.default_rng(seed)
    scales = ((4, 255.0, "uniform"), (max(1, image_size // 8), 40.0, "normal"),
              (max(1, image_size // 2), 10.0, "normal"))
    pixels = np.zeros((count, image_size, image_size, 3), dtype=np.float32)
    for grid, amplitude, kind in scales:
        if kind == "uniform":
            field = rng.uniform(0.0, amplitude, (count, grid, grid, 3))
        else:
            field = rng.normal(0.0, amplitude, (count, grid, grid, 3))
        pixels += tf.image.resize(field.astype(np.float32), [image_size, image_size],
                                  method="bicubic").numpy()
    return normalize(np.clip(pixels, 0.0, 255.0))


def _check_options(weights: str | None, precision: str, image_size: int | None,
                   images: Sequence, random_images: int | None, batch_size: int,
                   crop_padding: int) -> None:
    from converter.reference_graph import PRECISIONS

    if weights is not None:
        require_choice("weights", weights, WEIGHT_CHOICES)
    require_choice("precision", precision, PRECISIONS)
    if image_size is not None:
        require_image_size(image_size)
    require_crop_padding(crop_padding)
    if images and random_images is not None:
        raise RsconvertError("Pass either image files (IMAGE arguments or --images) or "
                             "--random N, not both.")
    require_at_least("batch size", batch_size, 1, "1 or more")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _check_json_path(json_path: str | os.PathLike) -> None:
    path = Path(json_path)
    if path.is_dir():
        raise OutputError(f"JSON report path {path} is a directory; give a file name such as "
                          f"{path / DEFAULT_JSON_NAME}.")


def _check_weights_file(provenance: dict, weights_file: str, checkpoint: str, depth: int,
                        num_classes: int, weights: str) -> None:
    """Raise WeightsFileError when the .h5 was converted for another model or weight set."""
    file_depth = int(provenance["depth"])
    file_classes = int(provenance["num_classes"])
    if (file_depth, file_classes) != (depth, num_classes):
        raise WeightsFileError(
            f"Weights file {weights_file} is for ResNet-RS-{file_depth} with {file_classes} "
            f"classes, but checkpoint {checkpoint} is ResNet-RS-{depth} with {num_classes} "
            "classes. Pass the .h5 converted from this checkpoint.")
    file_weights = provenance.get("weights")
    if file_weights and file_weights != weights:
        raise WeightsFileError(
            f"Weights file {weights_file} was converted from the {file_weights} weights, but "
            f"--weights {weights} was requested; pass --weights {file_weights}.")


def _keras_stage_outputs(weights_file: str, images: np.ndarray,
                         batch_size: int) -> dict[str, np.ndarray]:
    from converter.keras_model import load_weights_file, stage_outputs_model

    image_size = images.shape[1]
    # A notop file gets average pooling, so that its pooled features are compared too.
    model = load_weights_file(weights_file, input_shape=(image_size, image_size, 3),
                              classifier_activation=None, pooling="avg")
    stages = stage_outputs_model(model)
    outputs = stages.predict(images, batch_size=batch_size, verbose=0)
    return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}


def run_parity_check(checkpoint: str | os.PathLike, weights_file: str | os.PathLike, *,
                     depth: int | None = None, image_size: int | None = None,
                     images: Sequence[str | os.PathLike] = (), random_images: int | None = None,
                     seed: int = 0, weights: str | None = None, precision: str = "float32",
                     crop_padding: int = CROP_PADDING, batch_size: int = DEFAULT_BATCH_SIZE,
                     json_path: str | os.PathLike | None = None,
                     overwrite: bool = False) -> ParityReport:
    """Compare the Keras model of `weights_file` with the original graph of `checkpoint`.

    Inputs are the image files in `images`, preprocessed like the release eval, or
    `random_images` photo-like random images drawn with `seed` (DEFAULT_RANDOM_IMAGES when
    neither is given). `image_size` defaults to the size recorded in `weights_file`, else
    DEFAULT_IMAGE_SIZE, and `weights` ("ema" or "raw") to the weights the file was converted
    from. `precision` selects how the original graph runs; the Keras model runs in float32.
    With `json_path` the full report is also written there atomically; an existing file
    there is an error unless `overwrite`.
    Raises RsconvertError subclasses for bad input: a weights file for another depth or
    class count, a missing image, a checkpoint that does not match.
    """
    from converter.checkpoint import load_model_variables
    from converter.checkpoint.locate import resolve_prefix
    from converter.h5_weights import read_provenance
    from converter.output_files import atomic_output, check_output_path
    from converter.preprocessing import load_images
    from converter.reference_graph import STAGES, ReferenceNetwork, check_variables

    _check_options(weights, precision, image_size, images, random_images, batch_size,
                   crop_padding)
    if json_path is not None:
        _check_json_path(json_path)
        check_output_path(json_path, overwrite)
    checkpoint, weights_file = resolve_prefix(checkpoint), os.fspath(weights_file)
    provenance = read_provenance(weights_file)
    if image_size is None:
        image_size = provenance["image_size"] or DEFAULT_IMAGE_SIZE
    if weights is None:
        weights = provenance["weights"]

    if images:
        inputs = load_images(list(images), image_size, crop_padding)
        description = f"{_plural(len(images), 'image file')}, crop padding {crop_padding}"
    else:
        count = DEFAULT_RANDOM_IMAGES if random_images is None else random_images
        inputs = photo_like_images(count, image_size, seed)
        description = f"photo-like random images, seed {seed}"

    variables = load_model_variables(checkpoint, weights)
    described = check_variables(variables, depth)
    _check_weights_file(provenance, weights_file, checkpoint, described.depth,
                        described.num_classes, weights)
    original = ReferenceNetwork(variables, described.depth, precision)

    logger.info("Running the Keras model of %s on %s", weights_file,
                _plural(len(inputs), "image"))
    keras_outputs = _keras_stage_outputs(weights_file, inputs, batch_size)
    logger.info("Running the original %s graph of %s", precision, checkpoint)
    original_outputs = original(inputs, batch_size).stages

    float32_outputs = None
    if precision == "bfloat16":
        logger.info("Running the original float32 graph for the bfloat16 comparison")
        float32_outputs = ReferenceNetwork(variables, original.depth, "float32")(
            inputs, batch_size).stages
    comparisons = compare_stages(keras_outputs, original_outputs, precision, float32_outputs)

    logits = None
    if "logits" in keras_outputs:
        logits = topk_agreement(keras_outputs["logits"], original_outputs["logits"])
    gap = None
    if float32_outputs is not None:
        # Scaled by max|bfloat16 logit| like each stage's bf16 gap, so that the two agree.
        gap_stage = compare_stage("logits", float32_outputs["logits"], original_outputs["logits"])
        gap = PrecisionGap(gap_stage.max_abs_diff, gap_stage.max_rel_diff,
                           topk_agreement(original_outputs["logits"], float32_outputs["logits"]))

    report = ParityReport(
        checkpoint=checkpoint, weights_file=weights_file, depth=original.depth,
        num_classes=original.num_classes, image_size=image_size, inputs=description,
        num_images=len(inputs), weights=weights, precision=precision, stages=comparisons,
        skipped_stages=tuple(s for s in STAGES if s not in keras_outputs), logits=logits,
        bfloat16_gap=gap)
    if json_path is not None:
        with atomic_output(json_path, overwrite=overwrite) as temp:
            temp.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report
