"""ImageNet top-1/top-5 evaluation of a converted ResNet-RS, counting every image once.

Accuracy is kept as integer sums over exactly the images in the data: the last partial
batch is evaluated and nothing repeats. An image that fails to decode stops the run with
its name, or, when skipping is allowed, is left out and counted as skipped. Top-1 compares the
argmax with the label and top-5 uses `in_top_k`, as the `metric_fn` of tensorflow/tpu
`models/official/resnet/resnet_main.py` did, so classes tied at the fifth logit all count
as hits.

With several GPUs (or logical CPU devices) the forward pass runs under
`tf.distribute.MirroredStrategy`, with `TF_CONFIG` set under
`MultiWorkerMirroredStrategy`; the per-replica counts are summed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from converter import imagenet_classes
from converter.arguments import (require_at_least, require_choice, require_crop_padding,
                                 require_image_size)
from converter.checkpoint.variables import WEIGHT_CHOICES
from converter.errors import DataError, OutputError, RsconvertError, WeightsFileError
from converter.eval_data import EvalSet, check_labels, open_eval_data
from converter.eval_progress import EvalProgress, progress_display
from converter.eval_results import (RESULT_SUFFIXES, TOP_K, EvalResult, not_comparable_reason,
                                    write_predictions_file, write_result_file)
from converter.h5_weights import recorded_image_size
from converter.output_files import check_output_path
from converter.variants import (CROP_PADDING, Variant, apply_variant, downloaded_checkpoint,
                                find_variant)

logger = logging.getLogger(__name__)

# Keras dtype policy per --precision. Under mixed_bfloat16 the weights stay float32 and
# the layers compute in bfloat16; the logits are cast to float32 before ranking.
PRECISION_POLICIES = {"float32": None, "bfloat16": "mixed_bfloat16"}
# Skipped images named one by one in the log before only the total is reported.
MAX_LOGGED_SKIPS = 10


class EvaluationCountError(DataError):
    """The number of images evaluated differs from the number in the data."""


@dataclasses.dataclass
class _Counts:
    top1_correct: int = 0
    top5_correct: int = 0
    counted: int = 0
    skipped: int = 0
    # This worker's skipped images; `skipped` is the total over all workers.
    skipped_ids: list[int] = dataclasses.field(default_factory=list)
    predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = dataclasses.field(
        default_factory=list)
    throughput: float = 0.0


@dataclasses.dataclass(frozen=True)
class _ModelInfo:
    depth: int
    weights: str
    param_count: int


def evaluate(data: str | Path, image_size: int | None = None, *,
             weights_file: str | Path | None = None, checkpoint: str | Path | None = None,
             variant: str | None = None, depth: int | None = None,
             labels_file: str | Path | None = None, batch_size: int = 64,
             limit: int | None = None, precision: str = "float32", crop_padding: int = CROP_PADDING,
             weights: str | None = None, skip_bad_images: bool = False,
             results_file: str | Path | None = None,
             predictions_file: str | Path | None = None, overwrite: bool = False,
             show_progress: bool | None = None,
             progress: Callable[[EvalProgress], None] | None = None,
             before_tensorflow: Callable[[], None] | None = None) -> EvalResult:
    """Evaluate ImageNet top-1/top-5 of a ResNet-RS on `data` and return the result.

    The model comes from an rsconvert `weights_file`, or from `checkpoint`, which is
    converted into a temporary directory first (`weights` "ema" or "raw"). `variant`
    fills depth, image size and, without either source, the default checkpoint location.
    `results_file` (.json or .csv) receives the result row and `predictions_file` one CSV
    row per image; both are written atomically after the run, and an existing file is an
    error before the run unless `overwrite`. `image_size` defaults to the variant's size,
    then to the size recorded in `weights_file`. `show_progress` draws a
    progress bar on stderr (default: when stderr is a terminal); otherwise a line is logged
    every LOG_EVERY_BATCHES batches. `progress`, when given, is called after every batch.
    `before_tensorflow` is called once the arguments and the data are checked, before
    TensorFlow is first used, so that bad input fails before TensorFlow loads.
    """
    _check_options(batch_size, limit, precision, crop_padding, weights)
    outputs = _check_output_files(results_file, predictions_file, overwrite)
    known_variant, weights_file, checkpoint, depth, image_size = _resolve_source(
        variant, weights_file, checkpoint, depth, image_size)

    eval_set = open_eval_data(data, labels_file)
    expected = eval_set.num_images if limit is None else min(limit, eval_set.num_images)
    logger.info("Evaluating %d of %d images in %s at %d px", expected, eval_set.num_images,
                eval_set.root, image_size)

    if before_tensorflow is not None:
        before_tensorflow()
    strategy = make_strategy()
    with strategy.scope():
        model, info = _load_model(weights_file, checkpoint, depth, weights, image_size,
                                  precision)
    # NOTE: only single-host runs are tested. Under MultiWorkerMirroredStrategy the counts
    # are summed over all workers, but skipped-image names and the predictions file hold
    # only this worker's images, and every worker writes the results file.
    counts = _run(model, eval_set, strategy, image_size=image_size, batch_size=batch_size,
                  crop_padding=crop_padding, limit=limit, skip_bad_images=skip_bad_images,
                  keep_predictions=predictions_file is not None, show_progress=show_progress,
                  progress=progress)

    seen = counts.counted + counts.skipped
    if seen != expected:
        raise EvaluationCountError(
            f"Evaluated {counts.counted} images and skipped {counts.skipped}, but the data "
            f"contains {expected}; the data changed during the run or the input pipeline "
            "lost images. Run the evaluation again.")
    if counts.counted == 0:
        raise DataError(f"None of the {expected} images in {eval_set.root} could be decoded.")

    result = _make_result(eval_set, counts, info, known_variant, image_size, precision,
                          crop_padding)
    try:
        if outputs["results"] is not None:
            write_result_file(result, outputs["results"], overwrite)
        if outputs["predictions"] is not None:
            write_predictions_file(eval_set, counts.predictions, outputs["predictions"],
                                   expected, overwrite)
    except RsconvertError as error:
        # The run may have taken hours, so its result row is kept in the message.
        raise type(error)(f"{error} The evaluation itself finished: "
                          f"{json.dumps(result.row())}") from None
    return result


# ---------------------------------------------------------------------------------------
# Options and model source


def _check_options(batch_size, limit, precision, crop_padding, weights) -> None:
    require_at_least("batch size", batch_size, 1, "1 or more images")
    if limit is not None:
        require_at_least("limit", limit, 1, "1 or more images, or no limit")
    require_choice("precision", precision, PRECISION_POLICIES)
    require_crop_padding(crop_padding)
    if weights is not None:
        require_choice("weights", weights, WEIGHT_CHOICES)


def _check_output_files(results_file, predictions_file,
                        overwrite: bool) -> dict[str, Path | None]:
    """Check both output paths before the run, so that a long evaluation is not lost."""
    outputs: dict[str, Path | None] = {"results": None, "predictions": None}
    if results_file is not None:
        _reject_directory("Results file", results_file, "results.json")
        path = check_output_path(results_file, overwrite)
        if path.suffix.lower() not in RESULT_SUFFIXES:
            raise OutputError(f"Results file {path} must end in .json or .csv; received "
                              f"suffix {path.suffix!r}.")
        outputs["results"] = path
    if predictions_file is not None:
        _reject_directory("Predictions file", predictions_file, "predictions.csv")
        outputs["predictions"] = check_output_path(predictions_file, overwrite)
    if (outputs["results"] is not None and outputs["predictions"] is not None
            and outputs["results"].resolve() == outputs["predictions"].resolve()):
        raise OutputError(f"Results file and predictions file are the same file "
                          f"({outputs['results']}); give two different paths.")
    return outputs


def _reject_directory(label: str, path: str | Path, example_name: str) -> None:
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{label} {path} is a directory; give a file name such as "
                          f"{path / example_name}.")


def _resolve_source(variant_name, weights_file, checkpoint, depth, image_size):
    """Merge --variant with the explicit options; return (variant, file, ckpt, depth, size)."""
    variant, depth, image_size = apply_variant(variant_name, depth, image_size)
    if variant is not None and weights_file is None and checkpoint is None:
        checkpoint = downloaded_checkpoint(variant, "pass --checkpoint or --weights-file")
    if weights_file is not None and checkpoint is not None:
        raise RsconvertError("Both --weights-file and --checkpoint were given; pass only one "
                             "model source.")
    if weights_file is None and checkpoint is None:
        raise RsconvertError("No model given; pass --weights-file FILE.h5, --checkpoint PATH "
                             "or --variant NAME.")
    if image_size is None and weights_file is not None:
        image_size = recorded_image_size(weights_file)
    if image_size is None:
        raise RsconvertError("Missing --image_size (pixels, e.g. 224); it is filled in only "
                             "by --variant or from a weights file converted with one.")
    require_image_size(image_size)
    return variant, weights_file, checkpoint, depth, image_size


def _check_provenance(path: Path, provenance: dict, depth: int | None,
                      weights: str | None) -> None:
    if not provenance["include_top"]:
        raise WeightsFileError(f"{path} is a notop file without the classifier; evaluation "
                               "needs a file converted with the classifier (include_top).")
    classes = int(provenance["num_classes"])
    if classes != imagenet_classes.NUM_CLASSES:
        hint = ""
        if classes == imagenet_classes.NUM_CLASSES + 1:
            hint = (" It looks like a 1001-class head with a background class at index 0, "
                    "which is not supported.")
        raise WeightsFileError(f"{path} has a {classes}-class classifier; evaluation needs the "
                               f"1000 ImageNet classes.{hint}")
    if depth is not None and int(provenance["depth"]) != depth:
        raise WeightsFileError(f"{path} contains a ResNet-RS-{provenance['depth']}, but "
                               f"depth {depth} was requested; drop --depth or pick the "
                               "matching file.")
    if weights is not None and provenance["weights"] != weights:
        raise WeightsFileError(f"{path} contains {provenance['weights']} weights, but "
                               f"--weights {weights} was requested; convert the checkpoint "
                               f"again with --weights {weights} or drop --weights.")


def _load_model(weights_file, checkpoint, depth, weights, image_size, precision):
    """Build and load the model; a checkpoint is converted into a temporary file first."""
    if weights_file is not None:
        return _load_weights_file(Path(weights_file), depth, weights, image_size, precision)

    from converter.convert import convert_checkpoint

    weights = weights or "ema"
    with tempfile.TemporaryDirectory(prefix="rsconvert-eval-") as directory:
        converted = Path(directory) / "weights.h5"
        logger.info("Converting %s (%s weights) into a temporary weights file", checkpoint,
                    weights)
        try:
            convert_checkpoint(checkpoint, converted, depth=depth, weights=weights,
                               expected_classes=imagenet_classes.NUM_CLASSES)
        except OutputError as error:
            raise type(error)(f"{error} --checkpoint converts into a temporary folder under "
                              f"{tempfile.gettempdir()}; set TMPDIR to a larger disk, or "
                              "convert with `rsconvert ckpt-to-h5` and pass --weights-file.") \
                from None
        return _load_weights_file(converted, depth, weights, image_size, precision)


def _load_weights_file(path: Path, depth, weights, image_size, precision):
    from converter.h5_weights import read_provenance
    from converter.keras_model import load_weights_file

    provenance = read_provenance(path)
    _check_provenance(path, provenance, depth, weights)
    model = load_weights_file(path, input_shape=(image_size, image_size, 3),
                              classifier_activation=None, include_top=True,
                              dtype=PRECISION_POLICIES[precision])
    info = _ModelInfo(depth=int(provenance["depth"]), weights=str(provenance["weights"]),
                      param_count=int(model.count_params()))
    logger.info("Loaded ResNet-RS-%d (%s weights, %d parameters) from %s", info.depth,
                info.weights, info.param_count, path)
    return model, info


# ---------------------------------------------------------------------------------------
# Devices


def make_strategy():
    """Return the tf.distribute strategy for the visible devices.

    With TF_CONFIG set, this is MultiWorkerMirroredStrategy. Otherwise it is a
    MirroredStrategy over all GPUs, or over all logical CPU devices when there is no GPU and
    several are configured. A single device gets the default strategy.
    """
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    if len(devices) > 1:
        logger.info("Running on %d devices: %s", len(devices),
                    ", ".join(d.name for d in devices))
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


# ---------------------------------------------------------------------------------------
# The evaluation loop


def _make_step(model, strategy, element_spec):
    import tensorflow as tf

    def replica_step(batch):
        logits = tf.cast(model(batch["image"], training=False), tf.float32)
        labels = tf.cast(batch["label"], tf.int32)
        counted = batch["valid"]
        top1 = (tf.argmax(logits, axis=1, output_type=tf.int32) == labels) & counted
        top5 = tf.math.in_top_k(labels, logits, TOP_K) & counted
        _, top5_classes = tf.math.top_k(logits, TOP_K)
        masks = (top1, top5, counted, tf.logical_not(counted))
        sums = [tf.reduce_sum(tf.cast(mask, tf.int64)) for mask in masks]
        return sums, top5_classes

    # The signature leaves the batch dimension open, so one trace serves every batch,
    # the partial last one included. jit_compile is off because XLA would compile a
    # program per batch shape.
    @tf.function(input_signature=[element_spec], jit_compile=False)
    def step(batch):
        sums, top5_classes = strategy.run(replica_step, args=(batch,))
        totals = [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                  for value in sums]
        return totals, top5_classes

    return step


def _local(strategy, value) -> np.ndarray:
    """Concatenate this worker's per-replica parts of a batch field into one array."""
    parts = [part.numpy() for part in strategy.experimental_local_results(value)]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _describe_failure(eval_set: EvalSet, image_id: int, image_size: int,
                      crop_padding: int) -> str:
    """Return why one image failed, by reading and decoding it again on its own."""
    import tensorflow as tf

    from converter.preprocessing import op_error_text, preprocess_image_bytes

    try:
        data = eval_set.read_image_bytes(image_id)
        preprocess_image_bytes(tf.constant(data), image_size, crop_padding=crop_padding)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    except tf.errors.OpError as error:
        return f"cannot be decoded ({op_error_text(error)})"
    return "failed in the input pipeline but decodes on its own (a transient read error?)"


def _run(model, eval_set: EvalSet, strategy, *, image_size, batch_size, crop_padding, limit,
         skip_bad_images, keep_predictions, show_progress, progress) -> _Counts:
    from converter.eval_data import make_dataset

    dataset = make_dataset(eval_set, image_size, batch_size, crop_padding=crop_padding,
                           limit=limit)
    distributed = strategy.experimental_distribute_dataset(dataset)
    step = _make_step(model, strategy, distributed.element_spec)
    total = eval_set.num_images if limit is None else min(limit, eval_set.num_images)
    counts = _Counts()
    if show_progress is None:
        show_progress = sys.stderr.isatty()

    start = time.perf_counter()
    # Throughput is timed from the end of the first batch, whose time includes tracing
    # the forward pass, to the end of the last.
    first_batch_end = first_batch_images = None
    with progress_display(total, show_progress, logger) as display:

        def record(batch_index, outputs, ids, labels, valid) -> None:
            nonlocal first_batch_end, first_batch_images
            (top1, top5, counted, skipped), top5_classes = outputs
            counts.top1_correct += int(top1)
            counts.top5_correct += int(top5)
            counts.counted += int(counted)
            counts.skipped += int(skipped)
            if keep_predictions:
                counts.predictions.append(
                    (ids[valid], labels[valid], _local(strategy, top5_classes)[valid]))

            now = time.perf_counter()
            if first_batch_end is None:
                first_batch_end, first_batch_images = now, counts.counted
            counts.throughput = _throughput(counts.counted, now - start,
                                            counts.counted - first_batch_images,
                                            now - first_batch_end)
            snapshot = EvalProgress(counts.counted + counts.skipped, total,
                                    counts.counted, counts.top1_correct, counts.top5_correct,
                                    now - start, counts.throughput)
            display(snapshot, batch_index)
            if progress is not None:
                progress(snapshot)

        # A step's results are read after the next step has been launched, so that a GPU
        # can run that step while the host reads. NOTE: this overlap is untested on GPU.
        # The first step is read at once because its end starts the throughput clock.
        pending = None
        for batch_index, batch in enumerate(distributed):
            ids = _local(strategy, batch["id"])
            labels = _local(strategy, batch["label"])
            valid = _local(strategy, batch["valid"])
            check_labels(eval_set, ids, labels)
            _handle_failed_images(eval_set, ids[~valid], counts, skip_bad_images, image_size,
                                  crop_padding)

            outputs = step(batch)
            if pending is not None:
                record(*pending)
            pending = (batch_index, outputs, ids, labels, valid)
            if batch_index == 0:
                record(*pending)
                pending = None
        if pending is not None:
            record(*pending)
    if counts.skipped:
        logger.warning("Skipped %d %s that could not be decoded.", counts.skipped,
                       "image" if counts.skipped == 1 else "images")
    return counts


def _throughput(images: int, seconds: float, images_after_first: int,
                seconds_after_first: float) -> float:
    """Images per second after the first batch, or overall while there is only one batch."""
    if images_after_first > 0 and seconds_after_first > 0:
        return images_after_first / seconds_after_first
    return images / seconds if seconds > 0 else 0.0


def _handle_failed_images(eval_set, failed_ids, counts, skip_bad_images, image_size,
                          crop_padding) -> None:
    if failed_ids.size == 0:
        return
    if not skip_bad_images:
        image_id = int(failed_ids[0])
        reason = _describe_failure(eval_set, image_id, image_size, crop_padding)
        raise DataError(f"{eval_set.describe_image(image_id)} {reason}. Replace or remove it, "
                        "or pass --skip-bad-images to leave it out and count it as skipped.")
    for image_id in failed_ids:
        if len(counts.skipped_ids) < MAX_LOGGED_SKIPS:
            logger.warning("Skipping %s: it %s.", eval_set.describe_image(int(image_id)),
                           _describe_failure(eval_set, int(image_id), image_size, crop_padding))
        counts.skipped_ids.append(int(image_id))


# ---------------------------------------------------------------------------------------
# Result


def _make_result(eval_set: EvalSet, counts: _Counts, info: _ModelInfo,
                 variant: Variant | None, image_size: int, precision: str,
                 crop_padding: int) -> EvalResult:
    variant = variant or find_variant(info.depth, image_size)
    reason = not_comparable_reason(variant, image_size=image_size, weights=info.weights,
                                   num_images=counts.counted, num_skipped=counts.skipped,
                                   crop_padding=crop_padding)
    if variant is not None and reason is not None:
        logger.info("Not compared with the official top-1 of %s (%.1f%%): %s.", variant.name,
                    variant.official_top1, reason)
    return EvalResult(
        model=variant.name if variant is not None else f"resnet-rs-{info.depth}",
        depth=info.depth, image_size=image_size, weights=info.weights, precision=precision,
        crop_padding=crop_padding, num_images=counts.counted,
        top1_correct=counts.top1_correct, top5_correct=counts.top5_correct,
        num_skipped=counts.skipped, param_count=info.param_count,
        images_per_second=counts.throughput,
        official_top1=variant.official_top1 if reason is None else None,
        skipped_images=tuple(eval_set.image_name(i) for i in counts.skipped_ids))
