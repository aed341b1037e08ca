"""parity-check: passes on correct conversions, names the first damaged stage, rejects bad input."""

import json
import logging
import math
import shutil
import signal
import sys

import h5py
import numpy as np
import pytest

from conftest import GOLDEN_DIR
from converter.errors import DataError, OutputError, RsconvertError, WeightsFileError
from converter.parity import (BFLOAT16_MARGIN, FLOAT32_TOLERANCE, ParityReport, compare_stage,
                              photo_like_images, run_parity_check, topk_agreement)

GOLDEN_IMAGES = [GOLDEN_DIR / "jpegs" / f"img_01_000{i}.JPEG" for i in range(3)]
# Small inputs keep the ResNet-RS-50 runs short; photo-like images keep activations normal.
SMALL_SIZE = 96


def run_cli(monkeypatch, *args) -> int:
    """Run `rsconvert parity-check ARGS` through the real entry point; return the exit code."""
    from converter.cli import main

    monkeypatch.setattr(sys, "argv", ["rsconvert", "-q", "parity-check", *map(str, args)])
    # main() sets the handlers of these signals for the process it runs in.
    handlers = {signum: signal.getsignal(signum)
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        main()
    except SystemExit as done:
        return done.code
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return 0


def damaged_copy(source, target, damage) -> str:
    shutil.copy(source, target)
    with h5py.File(target, "r+") as f:
        damage(f)
    return str(target)


def swap_kernels(f):
    # Two same-shaped 3x3 kernels in blocks 1 and 2 of Keras BlockGroup4, which is the
    # original's block_group3.
    first, second = "BlockGroup4__block_1__conv_2", "BlockGroup4__block_2__conv_2"
    a = f[first][f"{first}/kernel:0"]
    b = f[second][f"{second}/kernel:0"]
    kernel_a, kernel_b = a[...], b[...]
    a[...] = kernel_b
    b[...] = kernel_a


def replace_variance(f):
    # A BN of Keras BlockGroup3, the original's block_group2.
    name = "BlockGroup3__block_1_batch_norm_1"
    variance = f[name][f"{name}/moving_variance:0"]
    variance[...] = np.ones(variance.shape, np.float32)


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_golden_passes(weights, golden_checkpoint, golden_h5):
    report = run_parity_check(golden_checkpoint, golden_h5[weights], image_size=160,
                              images=GOLDEN_IMAGES[:2], weights=weights)
    assert report.passed
    assert report.first_failing_stage is None
    assert [c.stage for c in report.stages] == ["stem", "block_group1", "block_group2",
                                                "block_group3", "block_group4", "pooled",
                                                "logits"]
    assert max(c.max_rel_diff for c in report.stages) <= FLOAT32_TOLERANCE
    assert report.logits.top1_matches == 2
    assert report.logits.top5_overlap == 1.0
    assert report.depth == 50
    assert report.num_classes == 1000


def test_demo_checkpoint_passes(write_checkpoint, tmp_path):
    from converter.convert import convert_checkpoint

    prefix = write_checkpoint(depth=50, num_classes=10, seed=3)
    weights_file = tmp_path / "demo.h5"
    convert_checkpoint(prefix, weights_file)
    report = run_parity_check(prefix, weights_file, image_size=SMALL_SIZE, random_images=3,
                              seed=5, batch_size=2)
    assert report.passed
    assert report.num_classes == 10
    assert report.num_images == 3
    assert report.stages[-1].shape == (3, 10)


def test_swapped_kernels_fail(golden_checkpoint, golden_h5, tmp_path, monkeypatch, capsys):
    damaged = damaged_copy(golden_h5["ema"], tmp_path / "swapped.h5", swap_kernels)
    code = run_cli(monkeypatch, "--checkpoint", golden_checkpoint, "--weights-file", damaged,
                   "--image-size", SMALL_SIZE, "--random", 2)
    output = capsys.readouterr().out
    assert code == 1
    assert "first stage beyond tolerance is block_group3" in output
    assert "block_group2" in output


def test_replaced_variance_fails(golden_checkpoint, golden_h5, tmp_path):
    damaged = damaged_copy(golden_h5["ema"], tmp_path / "variance.h5", replace_variance)
    report = run_parity_check(golden_checkpoint, damaged, image_size=SMALL_SIZE)
    by_stage = {c.stage: c for c in report.stages}
    assert not report.passed
    assert report.first_failing_stage == "block_group2"
    assert by_stage["block_group1"].within_tolerance
    assert by_stage["block_group2"].max_rel_diff > 0.1


def test_bfloat16_reports_gap(golden_checkpoint, golden_h5):
    report = run_parity_check(golden_checkpoint, golden_h5["ema"], image_size=160,
                              images=GOLDEN_IMAGES[:2], precision="bfloat16")
    gap = report.bfloat16_gap
    assert report.passed
    assert gap.max_abs_diff > 0
    assert gap.max_rel_diff < 0.1
    assert gap.agreement.images == 2
    for comparison in report.stages:
        assert comparison.precision_gap > 0, comparison.stage
        assert comparison.tolerance == pytest.approx(comparison.precision_gap + BFLOAT16_MARGIN)
    # The summary line and the logits row of the table give the same gap.
    assert gap.max_rel_diff == report.stages[-1].precision_gap
    assert "of the bfloat16 original's max |logit|" in report.format_table()


def test_bfloat16_still_fails_damage(golden_checkpoint, golden_h5, tmp_path):
    damaged = damaged_copy(golden_h5["ema"], tmp_path / "variance.h5", replace_variance)
    report = run_parity_check(golden_checkpoint, damaged, image_size=SMALL_SIZE,
                              precision="bfloat16")
    assert report.first_failing_stage == "block_group2"


def test_notop_compares_pooled(golden_checkpoint, tmp_path):
    from converter.convert import convert_checkpoint

    weights_file = tmp_path / "notop.h5"
    convert_checkpoint(golden_checkpoint, weights_file, include_top=False)
    report = run_parity_check(golden_checkpoint, weights_file, image_size=SMALL_SIZE)
    assert report.passed
    assert report.skipped_stages == ("logits",)
    assert report.logits is None
    assert [stage.stage for stage in report.stages][-1] == "pooled"
    assert len(report.stages) == 6


def test_json_report(golden_checkpoint, golden_h5, tmp_path, monkeypatch, capsys):
    path = tmp_path / "report.json"
    code = run_cli(monkeypatch, "--checkpoint", golden_checkpoint, "--weights-file",
                   golden_h5["ema"], "--image_size", 160, "--images", *GOLDEN_IMAGES[:2],
                   "--json", path)
    output = capsys.readouterr().out
    report = json.loads(path.read_text())
    assert code == 0
    assert "PASS" in output
    assert report["passed"] is True
    assert report["first_failing_stage"] is None
    assert [s["stage"] for s in report["stages"]][-1] == "logits"
    assert report["stages"][0]["shape"] == [2, 40, 40, 64]
    assert report["logits"]["top1_agreement"] == 1.0
    assert report["num_images"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_other_depth_rejected(golden_checkpoint, golden_h5, tmp_path, monkeypatch, capsys):
    def claim_depth_101(f):
        f.attrs["depth"] = 101

    other = damaged_copy(golden_h5["ema"], tmp_path / "other.h5", claim_depth_101)
    code = run_cli(monkeypatch, "--checkpoint", golden_checkpoint, "--weights-file", other,
                   "--image-size", SMALL_SIZE)
    error = capsys.readouterr().err
    assert code == 2
    assert "is for ResNet-RS-101 with 1000 classes" in error
    assert "is ResNet-RS-50 with 1000 classes" in error
    assert "Traceback" not in error


def test_missing_image_rejected(golden_checkpoint, golden_h5, tmp_path, monkeypatch, capsys):
    code = run_cli(monkeypatch, "--checkpoint", golden_checkpoint, "--weights-file",
                   golden_h5["ema"], "--images", GOLDEN_IMAGES[0], tmp_path / "absent.jpg")
    error = capsys.readouterr().err
    assert code == 2
    assert "Image file not found" in error
    assert "absent.jpg" in error


def test_images_and_random_rejected(golden_checkpoint, golden_h5, monkeypatch, capsys):
    code = run_cli(monkeypatch, "--checkpoint", golden_checkpoint, "--weights-file",
                   golden_h5["ema"], "--images", GOLDEN_IMAGES[0], "--random", 2)
    assert code == 2
    assert "not both" in capsys.readouterr().err


def test_positional_image(golden_checkpoint, golden_h5, monkeypatch, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="converter.parity"):
        code = run_cli(monkeypatch, "--checkpoint", golden_checkpoint, "--weights-file",
                       golden_h5["ema"], "--image-size", SMALL_SIZE, GOLDEN_IMAGES[0])
    output = capsys.readouterr().out
    assert code == 0
    assert f"{SMALL_SIZE} px, 1 image (1 image file, crop padding 32)" in output
    assert "PASS" in output
    assert "on 1 image" in caplog.text
    assert "on 1 images" not in caplog.text


def test_positional_and_random_rejected(golden_checkpoint, golden_h5, monkeypatch, capsys):
    code = run_cli(monkeypatch, "--checkpoint", golden_checkpoint, "--weights-file",
                   golden_h5["ema"], GOLDEN_IMAGES[0], "--random", 2)
    assert code == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("size", [0, -5])
def test_cli_bad_image_size(size, tmp_path, monkeypatch, capsys):
    # Both model paths are absent: the size check comes first.
    for variant in ([], ["--variant", "resnet-rs-50-i160"]):
        code = run_cli(monkeypatch, *variant, "--checkpoint", tmp_path / "absent",
                       "--weights-file", tmp_path / "absent.h5", "--image_size", size,
                       "--random", 1)
        error = capsys.readouterr().err
        assert code == 2
        assert error.startswith(f"Error: Invalid image size {size}; expected a positive "
                                "number of pixels")
        assert "Traceback" not in error


def test_json_path_directory(tmp_path):
    with pytest.raises(OutputError, match=r"JSON report path .* is a directory; give a file "
                                          r"name such as .*parity\.json\."):
        run_parity_check(tmp_path / "absent", tmp_path / "absent.h5", json_path=tmp_path)


def test_not_an_image_one_line(golden_checkpoint, golden_h5, tmp_path, monkeypatch, capsys):
    path = tmp_path / "notanimage.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    code = run_cli(monkeypatch, "--checkpoint", golden_checkpoint, "--weights-file",
                   golden_h5["ema"], "--images", path)
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"Error: Cannot decode image file {str(path)!r}: Unknown image "
                            "file format.")
    assert error.count("\n") == 1
    assert "function_node" not in error
    assert "[Op:" not in error
    assert ".." not in error.replace(str(path), "")


def test_weights_choice_mismatch(golden_checkpoint, golden_h5):
    with pytest.raises(WeightsFileError, match="converted from the raw weights.*--weights raw"):
        run_parity_check(golden_checkpoint, golden_h5["raw"], image_size=SMALL_SIZE,
                         weights="ema")


def test_weights_default_from_file(golden_checkpoint, golden_h5):
    report = run_parity_check(golden_checkpoint, golden_h5["raw"], image_size=SMALL_SIZE,
                              random_images=1)
    assert report.weights == "raw"
    assert report.passed


def test_image_size_default_from_file(golden_checkpoint, tmp_path):
    from converter.convert import convert_checkpoint

    weights_file = tmp_path / "sized.h5"
    convert_checkpoint(golden_checkpoint, weights_file, image_size=SMALL_SIZE)
    report = run_parity_check(golden_checkpoint, weights_file, random_images=1)
    assert report.image_size == SMALL_SIZE
    assert report.stages[0].shape == (1, SMALL_SIZE // 4, SMALL_SIZE // 4, 64)


def test_report_names_resolved_prefix(golden_checkpoint, golden_h5):
    from pathlib import Path

    report = run_parity_check(Path(golden_checkpoint).parent, golden_h5["ema"],
                              image_size=SMALL_SIZE, random_images=1)
    assert report.checkpoint == golden_checkpoint
    assert report.format_table().splitlines()[0].endswith(golden_checkpoint)


def test_existing_json_needs_overwrite(golden_checkpoint, golden_h5, tmp_path):
    path = tmp_path / "report.json"
    path.write_text("kept")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        run_parity_check(golden_checkpoint, golden_h5["ema"], image_size=SMALL_SIZE,
                         random_images=1, json_path=path)
    assert path.read_text() == "kept"
    run_parity_check(golden_checkpoint, golden_h5["ema"], image_size=SMALL_SIZE,
                     random_images=1, json_path=path, overwrite=True)
    assert json.loads(path.read_text())["passed"] is True


def test_foreign_h5_rejected(golden_checkpoint, tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "tensorflow"
    with pytest.raises(WeightsFileError, match="not written by rsconvert"):
        run_parity_check(golden_checkpoint, path)


def test_missing_weights_file(golden_checkpoint, tmp_path):
    with pytest.raises(WeightsFileError, match="does not exist"):
        run_parity_check(golden_checkpoint, tmp_path / "absent.h5")


@pytest.mark.parametrize("options, message", [
    ({"precision": "float16"}, "Invalid precision"),
    ({"weights": "shadow"}, "Invalid weights"),
    ({"random_images": 0}, "Invalid number of random images"),
    ({"batch_size": 0}, "Invalid batch size"),
    ({"crop_padding": -5, "random_images": 1}, "Invalid crop padding -5"),
])
def test_bad_options_rejected(options, message, golden_checkpoint, golden_h5):
    with pytest.raises(RsconvertError, match=message):
        run_parity_check(golden_checkpoint, golden_h5["ema"], image_size=SMALL_SIZE, **options)


def test_corrupt_image_rejected(golden_checkpoint, golden_h5, tmp_path):
    path = tmp_path / "broken.JPEG"
    path.write_bytes(b"\xff\xd8\xff" + b"\x00" * 64)
    with pytest.raises(DataError, match="broken.JPEG"):
        run_parity_check(golden_checkpoint, golden_h5["ema"], images=[path])


def test_compare_stage_relative():
    reference = np.array([[2.0, -4.0]], np.float32)
    comparison = compare_stage("logits", reference + np.float32(0.01), reference, 1e-2)
    assert comparison.max_abs_diff == pytest.approx(0.01)
    assert comparison.max_rel_diff == pytest.approx(0.0025)
    assert comparison.reference_max_abs == 4.0
    assert comparison.within_tolerance


def test_compare_stage_zero_reference():
    zeros = np.zeros((2, 3), np.float32)
    assert compare_stage("stem", zeros, zeros, 1e-4).max_rel_diff == 0.0
    assert compare_stage("stem", zeros + 1, zeros, 1e-4).max_rel_diff == math.inf


def test_compare_stage_nan_fails():
    reference = np.ones((2, 3), np.float32)
    candidate = reference.copy()
    candidate[0, 0] = np.nan
    comparison = compare_stage("pooled", candidate, reference, 1.0)
    assert not comparison.within_tolerance


def test_compare_stage_shape_mismatch():
    with pytest.raises(RsconvertError, match=r"Stage stem: the Keras output has shape \[1, 2\]"):
        compare_stage("stem", np.zeros((1, 2)), np.zeros((2, 1)), 1.0)


def test_topk_agreement_counts():
    reference = np.array([[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0]], np.float32)
    candidate = reference.copy()
    # Image 1: the top class moves from 0 to 6, and 6 replaces 4 in the top 5.
    candidate[1] = [5, 6, 4, 3, 2, 1, 7]
    agreement = topk_agreement(candidate, reference)
    assert agreement.images == 2
    assert agreement.top1_matches == 1
    assert agreement.top5_overlap == pytest.approx((5 / 5 + 4 / 5) / 2)


def test_photo_like_images_seeded():
    first = photo_like_images(2, 32, seed=7)
    again = photo_like_images(2, 32, seed=7)
    other = photo_like_images(2, 32, seed=8)
    assert first.shape == (2, 32, 32, 3)
    assert first.dtype == np.float32
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_photo_like_images_smooth():
    images = photo_like_images(4, 64, seed=0)
    # Neighbouring pixels of photos are strongly correlated; white noise has no correlation.
    left, right = images[:, :, :-1].ravel(), images[:, :, 1:].ravel()
    assert np.corrcoef(left, right)[0, 1] > 0.9
    # Pixels stay within 0..255 before normalization.
    assert images.min() >= (0 - 255 * 0.485) / (255 * 0.229) - 1e-4
    assert images.max() <= (255 - 255 * 0.406) / (255 * 0.225) + 1e-4


def test_variant_fills_size(golden_checkpoint, golden_h5, monkeypatch, capsys):
    code = run_cli(monkeypatch, "--variant", "resnet-rs-50-i160", "--checkpoint",
                   golden_checkpoint, "--weights-file", golden_h5["ema"], "--random", 1)
    output = capsys.readouterr().out
    assert code == 0
    assert "ResNet-RS-50, 1000 classes, 160 px, 1 image (photo-like" in output


def test_variant_depth_conflict(golden_checkpoint, golden_h5, monkeypatch, capsys):
    code = run_cli(monkeypatch, "--variant", "resnet-rs-50-i160", "--depth", 101,
                   "--checkpoint", golden_checkpoint, "--weights-file", golden_h5["ema"])
    assert code == 2
    assert "conflicts with --variant" in capsys.readouterr().err


def test_report_tolerance_property():
    passing = compare_stage("stem", np.ones(2), np.ones(2), FLOAT32_TOLERANCE)
    failing = compare_stage("logits", np.ones(2) * 2, np.ones(2), 0.5)
    fields = dict(checkpoint="c", weights_file="w.h5", depth=50, num_classes=2, image_size=8,
                  inputs="test", num_images=1, weights="ema", precision="float32",
                  skipped_stages=(), logits=None)
    assert ParityReport(stages=(passing,), **fields).tolerance == FLOAT32_TOLERANCE
    assert ParityReport(stages=(passing, failing), **fields).tolerance == 0.5
    assert ParityReport(stages=(passing, failing), **fields).first_failing_stage == "logits"
