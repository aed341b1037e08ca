"""`rsconvert eval` and `converter.evaluation.evaluate` on the golden RS-50 and built data."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pytest

from conftest import GOLDEN_DIR, require_reference
from converter import imagenet_classes
from converter.errors import (DataError, MappingError, OutputError, RsconvertError,
                              WeightsFileError)
from converter.eval_progress import EvalProgress
from converter.eval_results import EvalResult, not_comparable_reason
from converter.evaluation import evaluate
from converter.variants import get_variant
from test_eval_data import jpeg_bytes, make_synset_folder, write_raw_records

# What the original tensorflow/tpu eval pipeline reports for the golden checkpoint
# (EMA weights, 160 px) on golden-rs50-i160/validation.
GOLDEN_IMAGES = 24
GOLDEN_TOP1 = 8
GOLDEN_TOP5 = 16
# Smaller images for tests that check counting and errors, not accuracy.
SMALL_SIZE = 64


def golden_validation() -> Path:
    return require_reference(GOLDEN_DIR) / "validation"


def golden_labels() -> dict[str, int]:
    lines = (require_reference(GOLDEN_DIR) / "labels.tsv").read_text().splitlines()
    return {name: int(label) for name, label in (line.split("\t") for line in lines)}


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    code = "from converter.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def assert_clean_error(process: subprocess.CompletedProcess, message: str) -> None:
    assert process.returncode == 2, process.stderr
    assert message in process.stderr
    assert "Traceback" not in process.stderr
    assert process.stdout == ""


def assert_golden(result: EvalResult) -> None:
    assert result.num_images == GOLDEN_IMAGES
    assert result.top1_correct == GOLDEN_TOP1
    assert result.top5_correct == GOLDEN_TOP5
    assert result.num_skipped == 0


@pytest.fixture(scope="module")
def golden_weights(golden_h5) -> Path:
    return golden_h5["ema"]


# ---------------------------------------------------------------------------------------
# Golden counts


def test_golden_tfrecords(golden_weights, tmp_path):
    results_file = tmp_path / "result.json"
    predictions_file = tmp_path / "predictions.csv"
    result = evaluate(golden_validation(), 160, weights_file=golden_weights,
                      results_file=results_file, predictions_file=predictions_file)
    assert_golden(result)
    row = json.loads(results_file.read_text())
    assert row == json.loads(json.dumps(result.row()))
    assert row["model"] == "resnet-rs-50-i160"
    assert row["weights"] == "ema"
    assert row["precision"] == "float32"
    assert row["interpolation"] == "bicubic"
    assert row["top1"] == pytest.approx(100 * 8 / 24, abs=1e-4)
    assert row["top5_err"] == pytest.approx(100 * 8 / 24, abs=1e-4)
    assert row["param_count"] == 35_745_288
    assert row["images_per_second"] > 0
    # Only a full 50,000-image run is compared with the published top-1.
    assert "official_top1" not in row
    with open(predictions_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == GOLDEN_IMAGES
    assert list(rows[0])[:3] == ["image", "source", "label"]
    assert rows[0]["image"] == "img_01_0000.JPEG"
    assert rows[0]["source"] == "validation-00000-of-00002:0"
    assert rows[13]["source"] == "validation-00001-of-00002:1"
    assert [r["image"] for r in rows] == list(golden_labels())
    assert sum(r["label"] == r["top1"] for r in rows) == GOLDEN_TOP1
    assert sum(r["label"] in [r[f"top{k}"] for k in range(1, 6)] for r in rows) == GOLDEN_TOP5
    # label and top1..top5 are 0-based class indices; the wnid columns name them.
    wnids = imagenet_classes.wnids()
    assert [r["label_wnid"] for r in rows] == [wnids[int(r["label"])] for r in rows]
    assert [r["top1_wnid"] for r in rows] == [wnids[int(r["top1"])] for r in rows]
    assert [int(r["label"]) + 1 for r in rows] == list(golden_labels().values())


@pytest.mark.parametrize("batch_size", [5, 7])
def test_golden_odd_batch_sizes(golden_weights, batch_size):
    result = evaluate(golden_validation(), 160, weights_file=golden_weights,
                      batch_size=batch_size)
    assert_golden(result)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["synsets", "flat"])
def test_golden_image_folders(golden_weights, tmp_path, layout):
    labels = golden_labels()
    jpegs = GOLDEN_DIR / "jpegs"
    labels_file = None
    if layout == "synsets":
        make_synset_folder(tmp_path / "val", {name: ((jpegs / name).read_bytes(), label)
                                              for name, label in labels.items()})
    else:
        (tmp_path / "val").mkdir()
        for name in labels:
            shutil.copy(jpegs / name, tmp_path / "val" / name)
        labels_file = tmp_path / "labels.txt"
        labels_file.write_text("".join(f"{imagenet_classes.wnids()[labels[n] - 1]}\n"
                                       for n in sorted(labels)))
    result = evaluate(tmp_path / "val", 160, weights_file=golden_weights,
                      labels_file=labels_file, batch_size=7)
    assert_golden(result)


@pytest.mark.slow
def test_golden_from_checkpoint(golden_checkpoint):
    result = evaluate(golden_validation(), 160, checkpoint=golden_checkpoint, batch_size=12)
    assert_golden(result)
    assert result.weights == "ema"


@pytest.mark.slow
def test_golden_cli_csv(golden_weights, tmp_path):
    results_file = tmp_path / "result.csv"
    process = run_cli(["eval", "--data", str(golden_validation()), "--image_size", "160",
                       "--weights-file", str(golden_weights), "--batch-size", "10",
                       "--results-file", str(results_file)])
    assert process.returncode == 0, process.stderr
    printed = json.loads(process.stdout)
    assert printed["num_images"] == GOLDEN_IMAGES
    assert printed["top1_correct"] == GOLDEN_TOP1
    assert printed["top5_correct"] == GOLDEN_TOP5
    with open(results_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    assert rows[0]["top1_correct"] == str(GOLDEN_TOP1)
    assert list(rows[0]) == list(printed)


@pytest.mark.slow
def test_two_devices_same_counts(golden_weights):
    # Logical devices must be configured before TensorFlow initializes, hence a subprocess.
    script = textwrap.dedent(f"""
        import json
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from converter.evaluation import evaluate, make_strategy
        strategy = make_strategy()
        result = evaluate({str(golden_validation())!r}, 160,
                          weights_file={str(golden_weights)!r}, batch_size=5)
        print(json.dumps({{"replicas": strategy.num_replicas_in_sync,
                          "row": result.row()}}))
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert process.returncode == 0, process.stderr
    output = json.loads(process.stdout.strip().splitlines()[-1])
    assert output["replicas"] == 2
    assert output["row"]["num_images"] == GOLDEN_IMAGES
    assert output["row"]["top1_correct"] == GOLDEN_TOP1
    assert output["row"]["top5_correct"] == GOLDEN_TOP5


@pytest.mark.slow
def test_bfloat16_counts_every_image(golden_weights):
    result = evaluate(golden_validation(), 160, weights_file=golden_weights, batch_size=7,
                      precision="bfloat16")
    assert result.precision == "bfloat16"
    assert result.num_images == GOLDEN_IMAGES
    assert 0 <= result.top1_correct <= result.top5_correct <= GOLDEN_IMAGES
    import keras
    assert keras.config.dtype_policy().name == "float32"


def test_limit(golden_weights):
    result = evaluate(golden_validation(), SMALL_SIZE, weights_file=golden_weights, limit=10,
                      batch_size=4)
    assert result.num_images == 10
    assert result.model == "resnet-rs-50"


# ---------------------------------------------------------------------------------------
# Odd and bad images


def odd_image_folder(root: Path, corrupt: bool) -> Path:
    files = {
        "gray.JPEG": (jpeg_bytes(mode="L"), 1),
        "cmyk.JPEG": (jpeg_bytes(mode="CMYK"), 2),
        "png_bytes.JPEG": (jpeg_bytes(image_format="PNG"), 3),
        "tiny.JPEG": (jpeg_bytes(width=2, height=3), 4),
        "wide.JPEG": (jpeg_bytes(width=2000, height=20), 5),
    }
    if corrupt:
        files["broken.JPEG"] = (b"\xff\xd8\xff\xe0 truncated", 6)
    return make_synset_folder(root, files)


def test_odd_images_evaluate(golden_weights, tmp_path):
    result = evaluate(odd_image_folder(tmp_path, corrupt=False), SMALL_SIZE,
                      weights_file=golden_weights, batch_size=2)
    assert result.num_images == 5
    assert result.num_skipped == 0


def test_corrupt_image_stops_run(golden_weights, tmp_path):
    data = odd_image_folder(tmp_path / "val", corrupt=True)
    results_file = tmp_path / "result.json"
    with pytest.raises(DataError, match=r"image file .*n01496331/broken\.JPEG cannot be "
                                        r"decoded "
                                        r"\(Invalid JPEG data, size 14\)\. Replace or remove "
                                        r"it, or pass --skip-bad-images"):
        evaluate(data, SMALL_SIZE, weights_file=golden_weights, batch_size=4,
                 results_file=results_file)
    assert not results_file.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "val"]


def test_corrupt_image_skipped(golden_weights, tmp_path, caplog):
    data = odd_image_folder(tmp_path / "val", corrupt=True)
    predictions_file = tmp_path / "predictions.csv"
    with caplog.at_level(logging.INFO, logger="converter.evaluation"):
        result = evaluate(data, SMALL_SIZE, weights_file=golden_weights, batch_size=4,
                          skip_bad_images=True, predictions_file=predictions_file,
                          show_progress=False)
    assert result.num_images == 5
    assert result.num_skipped == 1
    assert result.skipped_images == ("n01496331/broken.JPEG",)
    assert result.row()["num_skipped"] == 1
    # The last progress line counts like the result row: 5 evaluated, 1 skipped, of 6.
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Evaluated")]
    assert progress[-1].startswith("Evaluated 5 of 6 images (1 skipped): top-1 ")
    assert "Skipped 1 image that could not be decoded." in caplog.text
    lines = predictions_file.read_text().splitlines()
    assert len(lines) == 1 + 5
    assert not any("broken" in line for line in lines)
    # Image folders have no separate file name: the image column repeats the source.
    assert lines[1].split(",")[:2] == ["n01440764/gray.JPEG", "n01440764/gray.JPEG"]


def test_progress_counts_text():
    def progress(done, counted):
        return EvalProgress(images_done=done, images_total=5, images_counted=counted,
                            top1_correct=2, top5_correct=3, elapsed_seconds=1.0,
                            images_per_second=4.0)

    assert progress(5, 4).counts_text() == "Evaluated 4 of 5 images (1 skipped)"
    assert progress(5, 4).images_skipped == 1
    assert progress(3, 3).counts_text() == "Evaluated 3 of 5 images"
    assert progress(5, 4).top1 == 50.0


def test_predictions_record_filenames(golden_weights, tmp_path):
    image = jpeg_bytes()
    data = tmp_path / "val"
    data.mkdir()
    write_raw_records(data / "validation-00000-of-00001", [
        {"image/encoded": image, "image/class/label": [1], "image/filename": b"a.JPEG"},
        {"image/encoded": image, "image/class/label": [2]},
        {"image/encoded": image, "image/class/label": [3], "image/filename": b""},
        {"image/encoded": image, "image/class/label": [4], "image/filename": b"d.JPEG"},
    ])
    predictions_file = tmp_path / "predictions.csv"
    result = evaluate(data, SMALL_SIZE, weights_file=golden_weights, batch_size=2, limit=3,
                      predictions_file=predictions_file)
    with open(predictions_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert result.num_images == 3
    assert [r["image"] for r in rows] == ["a.JPEG", "validation-00000-of-00001:1",
                                          "validation-00000-of-00001:2"]
    assert [r["source"] for r in rows] == [f"validation-00000-of-00001:{i}" for i in range(3)]
    assert [r["label"] for r in rows] == ["0", "1", "2"]


def test_all_images_corrupt(golden_weights, tmp_path):
    make_synset_folder(tmp_path, {"a.JPEG": (b"junk", 1), "b.JPEG": (b"junk", 2)})
    with pytest.raises(DataError, match="None of the 2 images .* could be decoded"):
        evaluate(tmp_path, SMALL_SIZE, weights_file=golden_weights, skip_bad_images=True)


def test_tfrecord_bad_label(golden_weights, tmp_path):
    image = jpeg_bytes()
    write_raw_records(tmp_path / "validation-00000-of-00001", [
        {"image/encoded": image, "image/class/label": [3]},
        {"image/encoded": image, "image/class/label": [1001]},
    ])
    with pytest.raises(DataError, match=r"record 1 of .*validation-00000-of-00001 has "
                                        r"image/class/label 1001, outside 1\.\.1000"):
        evaluate(tmp_path, SMALL_SIZE, weights_file=golden_weights)


# ---------------------------------------------------------------------------------------
# Model and option errors


@pytest.fixture(scope="module")
def background_class_weights(module_tmp_path):
    """A weights file with a 1001-class head, as checkpoints with a background class have."""
    from converter.checkpoint.synthetic import write_original_checkpoint
    from converter.convert import convert_checkpoint

    prefix = write_original_checkpoint(module_tmp_path / "background", num_classes=1001,
                                       ema=False, momentum=False)
    path = module_tmp_path / "rs50-1001.h5"
    convert_checkpoint(prefix, path, weights="raw", show_progress=False)
    return prefix, path


def test_weights_file_1001_classes(background_class_weights):
    _, path = background_class_weights
    with pytest.raises(WeightsFileError, match=r"has a 1001-class classifier; evaluation needs "
                                               r"the 1000 ImageNet classes\. .*background"):
        evaluate(golden_validation(), SMALL_SIZE, weights_file=path)


def test_checkpoint_1001_classes(background_class_weights):
    prefix, _ = background_class_weights
    with pytest.raises(MappingError, match="1001"):
        evaluate(golden_validation(), SMALL_SIZE, checkpoint=prefix, weights="raw")


def test_weights_file_mismatches(golden_weights, tmp_path):
    with pytest.raises(WeightsFileError, match="contains a ResNet-RS-50, but depth 101"):
        evaluate(golden_validation(), SMALL_SIZE, weights_file=golden_weights, depth=101)
    with pytest.raises(WeightsFileError, match="contains ema weights, but --weights raw"):
        evaluate(golden_validation(), SMALL_SIZE, weights_file=golden_weights, weights="raw")
    notop = tmp_path / "notop.h5"
    shutil.copy(golden_weights, notop)
    with h5py.File(notop, "r+") as handle:
        handle.attrs["include_top"] = 0
    with pytest.raises(WeightsFileError, match="notop file without the classifier"):
        evaluate(golden_validation(), SMALL_SIZE, weights_file=notop)


def test_option_errors(tmp_path):
    data = golden_validation()
    model = {"weights_file": tmp_path / "model.h5"}
    cases = [
        (dict(model, batch_size=0), RsconvertError, "Invalid batch size 0"),
        (dict(model, limit=0), RsconvertError, "Invalid limit 0"),
        (dict(model, precision="float16"), RsconvertError, "Invalid precision 'float16'"),
        (dict(model, crop_padding=-1), RsconvertError, "Invalid crop padding -1"),
        (dict(model, weights="best"), RsconvertError, "Invalid weights 'best'"),
        ({}, RsconvertError, "No model given"),
        (dict(model, checkpoint=tmp_path), RsconvertError, "Both --weights-file and "),
        (dict(model, results_file=tmp_path / "r.txt"), OutputError, r"must end in \.json or "),
        (dict(model, results_file=tmp_path / "no" / "r.json"), OutputError, "does not exist"),
        (dict(model, results_file=tmp_path), OutputError,
         r"Results file .* is a directory; give a file name such as .*results\.json\."),
        (dict(model, predictions_file=tmp_path), OutputError,
         r"Predictions file .* is a directory; give a file name such as .*predictions\.csv\."),
        (dict(model, results_file=tmp_path / "same.csv",
              predictions_file=tmp_path / "same.csv"), OutputError, "are the same file"),
        (dict(model, variant="resnet-rs-51-i160"), RsconvertError, "Unknown variant"),
        (dict(model, variant="resnet-rs-50-i160", depth=101), RsconvertError, "conflicts"),
        (dict(model, image_size=0), RsconvertError, "Invalid image size 0"),
    ]
    for options, error, message in cases:
        options = {"image_size": SMALL_SIZE, **options}
        with pytest.raises(error, match=message):
            evaluate(data, **options)
    with pytest.raises(WeightsFileError, match="does not exist"):
        evaluate(data, weights_file=tmp_path / "model.h5")
    with pytest.raises(WeightsFileError, match="does not exist"):
        evaluate(data, SMALL_SIZE, weights_file=tmp_path / "model.h5")


def test_image_size_missing(golden_weights):
    # The golden_h5 fixture converts without an image size.
    with pytest.raises(RsconvertError, match="Missing --image_size"):
        evaluate(golden_validation(), weights_file=golden_weights)


def test_image_size_from_weights_file(golden_checkpoint, tmp_path):
    from converter.convert import convert_checkpoint

    weights_file = tmp_path / "sized.h5"
    convert_checkpoint(golden_checkpoint, weights_file, image_size=160)
    result = evaluate(golden_validation(), weights_file=weights_file)
    assert result.image_size == 160
    assert result.model == "resnet-rs-50-i160"
    assert_golden(result)


def test_existing_outputs_need_overwrite(golden_weights, tmp_path):
    results_file = tmp_path / "result.json"
    predictions_file = tmp_path / "predictions.csv"
    for path in (results_file, predictions_file):
        path.write_text("kept")
        with pytest.raises(OutputError, match="already exists; pass --overwrite"):
            evaluate(golden_validation(), SMALL_SIZE, weights_file=golden_weights, limit=2,
                     results_file=results_file if path == results_file else None,
                     predictions_file=path if path == predictions_file else None)
        assert path.read_text() == "kept"
    evaluate(golden_validation(), SMALL_SIZE, weights_file=golden_weights, limit=2,
             results_file=results_file, predictions_file=predictions_file, overwrite=True)
    assert json.loads(results_file.read_text())["num_images"] == 2
    assert len(predictions_file.read_text().splitlines()) == 3


def test_variant_without_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("RSCONVERT_CHECKPOINTS", str(tmp_path))
    with pytest.raises(RsconvertError,
                       match=r"resnet-rs-152-i224 not found at .*rsconvert fetch"):
        evaluate(golden_validation(), variant="resnet-rs-152-i224")


# ---------------------------------------------------------------------------------------
# Results


def test_result_kept_when_results_file_fails(golden_weights, tmp_path, monkeypatch):
    import converter.evaluation
    from converter.errors import DiskFullError

    def full_disk(result, path, overwrite):
        raise DiskFullError(f"Failed to write {path}: No space left on device.")

    monkeypatch.setattr(converter.evaluation, "write_result_file", full_disk)
    with pytest.raises(DiskFullError) as error:
        evaluate(golden_validation(), 160, weights_file=golden_weights, limit=4,
                 results_file=tmp_path / "result.json")
    message = str(error.value)
    assert message.startswith(f"Failed to write {tmp_path / 'result.json'}: No space left")
    row = json.loads(message.split("The evaluation itself finished: ", 1)[1])
    assert row["num_images"] == 4
    assert row["model"] == "resnet-rs-50-i160"


OFFICIAL_RUN = dict(image_size=160, weights="ema", num_images=50_000, num_skipped=0,
                    crop_padding=32)


def test_official_run_comparable():
    assert not_comparable_reason(get_variant("resnet-rs-50-i160"), **OFFICIAL_RUN) is None


@pytest.mark.parametrize("change, reason", [
    (dict(num_images=49_999),
     "49,999 images were evaluated, not all 50,000 ILSVRC2012 validation images"),
    (dict(num_skipped=1), "1 image was skipped"),
    (dict(num_skipped=2), "2 images were skipped"),
    (dict(image_size=192), "the image size is 192, not the official 160"),
    (dict(weights="raw"), "the weights are raw, and the official top-1 used the EMA weights"),
    (dict(crop_padding=0), "the crop padding is 0, not the official 32"),
])
def test_official_top1_not_comparable(change, reason):
    variant = get_variant("resnet-rs-50-i160")
    assert not_comparable_reason(variant, **{**OFFICIAL_RUN, **change}) == reason


def test_every_unmet_condition_named():
    variant = get_variant("resnet-rs-50-i160")
    reason = not_comparable_reason(variant, **{**OFFICIAL_RUN, "weights": "raw",
                                               "num_images": 24})
    assert reason == ("the weights are raw, and the official top-1 used the EMA weights; 24 "
                      "images were evaluated, not all 50,000 ILSVRC2012 validation images")


def test_unofficial_variant_not_comparable():
    assert not_comparable_reason(None, **OFFICIAL_RUN) == ("no official variant has this depth "
                                                           "and image size")


def test_result_row_official_fields():
    result = EvalResult(model="resnet-rs-50-i160", depth=50, image_size=160, weights="ema",
                        precision="float32", crop_padding=32, num_images=50_000,
                        top1_correct=39_450, top5_correct=47_000, num_skipped=0,
                        param_count=35_745_288, images_per_second=100.0, official_top1=78.8)
    row = result.row()
    assert row["top1"] == 78.9
    assert row["top1_err"] == 21.1
    assert row["top5"] == 94.0
    assert row["official_top1"] == 78.8
    assert row["top1_diff"] == pytest.approx(0.1)
    assert list(row)[-2:] == ["official_top1", "top1_diff"]


# ---------------------------------------------------------------------------------------
# CLI errors: exit status 2, one message, no traceback


def test_cli_empty_directory(tmp_path, golden_weights):
    (tmp_path / "val").mkdir()
    process = run_cli(["eval", "--data", str(tmp_path / "val"), "--image_size", "64",
                       "--weights-file", str(golden_weights)])
    assert_clean_error(process, "Error: Evaluation data directory")
    assert "is empty" in process.stderr


def test_cli_unknown_wnids(tmp_path, golden_weights):
    (tmp_path / "n12345678").mkdir()
    process = run_cli(["eval", "--data", str(tmp_path), "--image_size", "64",
                       "--weights-file", str(golden_weights)])
    assert_clean_error(process, "are not ImageNet-1k wnids: n12345678")


def test_cli_tfrecord_bad_label(tmp_path, golden_weights):
    write_raw_records(tmp_path / "validation-00000-of-00001",
                      [{"image/encoded": jpeg_bytes(), "image/class/label": [0]}])
    results_file = tmp_path / "result.json"
    process = run_cli(["eval", "--data", str(tmp_path), "--image_size", "64",
                       "--weights-file", str(golden_weights), "--results-file",
                       str(results_file)])
    assert_clean_error(process, "validation-00000-of-00001 has image/class/label 0, outside "
                                "1..1000")
    assert not results_file.exists()


def test_cli_background_class_file(background_class_weights):
    _, path = background_class_weights
    process = run_cli(["eval", "--data", str(golden_validation()), "--image_size", "64",
                       "--weights-file", str(path)])
    assert_clean_error(process, "has a 1001-class classifier")
