"""The record of one evaluation and the files written from it.

`EvalResult` contains the integer counts behind top-1/top-5 and returns the flat result
row. `write_result_file` writes that row as JSON or CSV, and `write_predictions_file` writes
one CSV row per image. `not_comparable_reason` returns why a run's top-1 cannot be set
beside the published one, or None when it can.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from converter import imagenet_classes
from converter.errors import OutputError
from converter.eval_data import EvalSet, read_record_filenames
from converter.output_files import atomic_output
from converter.variants import CROP_PADDING, Variant

RESULT_SUFFIXES = (".json", ".csv")
# The size of the ILSVRC2012 validation set that the official top-1 numbers refer to.
OFFICIAL_EVAL_IMAGES = 50_000
TOP_K = imagenet_classes.TOP_K
INTERPOLATION = "bicubic"
# Decimals of the percentages in result rows.
PERCENT_DECIMALS = 4


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """One evaluation: what was run and the integer counts behind the accuracies."""

    model: str
    depth: int
    image_size: int
    weights: str
    precision: str
    crop_padding: int
    num_images: int
    top1_correct: int
    top5_correct: int
    num_skipped: int
    param_count: int
    images_per_second: float
    official_top1: float | None = None
    skipped_images: tuple[str, ...] = ()
    interpolation: str = INTERPOLATION

    @property
    def top1(self) -> float:
        """Top-1 accuracy in percent."""
        return 100.0 * self.top1_correct / self.num_images

    @property
    def top5(self) -> float:
        """Top-5 accuracy in percent."""
        return 100.0 * self.top5_correct / self.num_images

    def row(self) -> dict:
        """Return the flat result row (timm's field names; accuracies in percent)."""
        row = {
            "model": self.model,
            "depth": self.depth,
            "image_size": self.image_size,
            "weights": self.weights,
            "precision": self.precision,
            "crop_padding": self.crop_padding,
            "interpolation": self.interpolation,
            "num_images": self.num_images,
            "top1": round(self.top1, PERCENT_DECIMALS),
            "top1_err": round(100.0 - self.top1, PERCENT_DECIMALS),
            "top5": round(self.top5, PERCENT_DECIMALS),
            "top5_err": round(100.0 - self.top5, PERCENT_DECIMALS),
            "top1_correct": self.top1_correct,
            "top5_correct": self.top5_correct,
            "num_skipped": self.num_skipped,
            "param_count": self.param_count,
            "images_per_second": round(self.images_per_second, 2),
        }
        if self.official_top1 is not None:
            row["official_top1"] = self.official_top1
            row["top1_diff"] = round(self.top1 - self.official_top1, PERCENT_DECIMALS)
        return row


def not_comparable_reason(variant: Variant | None, *, image_size: int, weights: str,
                          num_images: int, num_skipped: int = 0,
                          crop_padding: int = CROP_PADDING) -> str | None:
    """Return why a top-1 cannot be set beside the published one, or None when it can.

    The published top-1 of each variant was measured with the EMA weights at the variant's
    own image size, with the release's crop padding, on all 50,000 ILSVRC2012 validation
    images. Every condition that is not met is named, separated by semicolons.
    """
    if variant is None:
        return "no official variant has this depth and image size"
    reasons = []
    if variant.image_size != image_size:
        reasons.append(f"the image size is {image_size}, not the official {variant.image_size}")
    if weights != "ema":
        reasons.append(f"the weights are {weights}, and the official top-1 used the EMA weights")
    if crop_padding != CROP_PADDING:
        reasons.append(f"the crop padding is {crop_padding}, not the official {CROP_PADDING}")
    if num_images != OFFICIAL_EVAL_IMAGES:
        reasons.append(f"{num_images:,} images were evaluated, not all "
                       f"{OFFICIAL_EVAL_IMAGES:,} ILSVRC2012 validation images")
    if num_skipped:
        reasons.append("1 image was skipped" if num_skipped == 1
                       else f"{num_skipped:,} images were skipped")
    return "; ".join(reasons) or None


def write_result_file(result: EvalResult, path: str | Path, overwrite: bool = False) -> None:
    """Write the result row as JSON or as a one-row CSV, chosen by the file's suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in RESULT_SUFFIXES:
        raise OutputError(f"Results file {path} must end in .json or .csv; received suffix "
                          f"{suffix!r}.")
    row = result.row()
    with atomic_output(path, overwrite=overwrite) as temp:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            if suffix == ".json":
                json.dump(row, handle, indent=2)
                handle.write("\n")
            else:
                writer = csv.DictWriter(handle, fieldnames=list(row))
                writer.writeheader()
                writer.writerow(row)


# `image` is the record's image/filename when a TFRecord stores one, else `source`: the
# `shard:record` of a TFRecord or the path relative to an image folder. `label` and
# top1..top5 are 0-based model class indices (a TFRecord label minus 1); the wnid columns
# name the label's and the top-1 prediction's classes.
PREDICTION_COLUMNS = (("image", "source", "label") + tuple(f"top{k}" for k in range(1, TOP_K + 1))
                      + ("label_wnid", "top1_wnid"))


def write_predictions_file(eval_set: EvalSet, parts, path: Path, num_images: int,
                           overwrite: bool = False) -> None:
    """Write one CSV row per counted image, in id order: names, class indices, wnids.

    `num_images` is how many images the run read, skipped ones included.
    """
    if parts:
        ids = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        classes = np.concatenate([p[2] for p in parts])
    else:
        ids = labels = np.zeros([0], np.int64)
        classes = np.zeros([0, TOP_K], np.int32)
    order = np.argsort(ids, kind="stable")
    filenames = None
    if eval_set.kind == "tfrecord":
        filenames = read_record_filenames(eval_set, num_images)
    wnids = imagenet_classes.wnids()
    with atomic_output(path, overwrite=overwrite) as temp:
        # A file name that is not valid UTF-8 is written with \x escapes.
        with open(temp, "w", newline="", encoding="utf-8",
                  errors="backslashreplace") as handle:
            writer = csv.writer(handle)
            writer.writerow(PREDICTION_COLUMNS)
            for index in order:
                image_id = int(ids[index])
                source = eval_set.image_name(image_id)
                image = (filenames[image_id] if filenames else "") or source
                label, top5 = int(labels[index]), [int(c) for c in classes[index]]
                writer.writerow([image, source, label, *top5, wnids[label], wnids[top5[0]]])
