"""ImageNet class list, evaluation data discovery, label files and the tf.data pipeline."""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import GOLDEN_DIR, require_reference
from converter import imagenet_classes
from converter.errors import DataError
from converter.eval_data import (MISSING_LABEL, check_labels, count_records, make_dataset,
                                 open_eval_data, read_labels_file, read_record_filenames,
                                 write_tfrecords)

IMAGE_SIZE = 32


def jpeg_bytes(width: int = 40, height: int = 30, mode: str = "RGB", seed: int = 0,
               image_format: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    channels = {"L": 1, "RGB": 3, "CMYK": 4}[mode]
    array = pixels[..., :channels] if channels > 1 else pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, image_format)
    return buffer.getvalue()


def golden_labels() -> dict[str, int]:
    """Return {file name: label 1..1000} of the golden images."""
    require_reference(GOLDEN_DIR)
    lines = (GOLDEN_DIR / "labels.tsv").read_text().splitlines()
    return {name: int(label) for name, label in (line.split("\t") for line in lines)}


def make_synset_folder(root: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    """Write {name: (bytes, label 1..1000)} into per-wnid subfolders of `root`."""
    for name, (data, label) in files.items():
        folder = root / imagenet_classes.wnids()[label - 1]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return root


def write_raw_records(path: Path, examples: list[dict]) -> None:
    """Write tf.train.Examples with arbitrary features, for labels write_tfrecords rejects."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for features in examples:
            feature = {}
            for key, value in features.items():
                if isinstance(value, bytes):
                    feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
                else:
                    feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=feature)).SerializeToString())


def collect(dataset) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {"id": [], "label": [], "valid": [], "image": []}
    for batch in dataset:
        for key in parts:
            parts[key].append(batch[key].numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


# ---------------------------------------------------------------------------------------
# Class list


def test_wnids_sorted_unique():
    wnids = imagenet_classes.wnids()
    assert len(wnids) == 1000
    assert list(wnids) == sorted(wnids)
    assert len(set(wnids)) == 1000
    assert all(imagenet_classes.WNID_PATTERN.match(w) for w in wnids)


def test_class_names_align():
    names = imagenet_classes.class_names()
    assert len(names) == 1000
    assert names[0].startswith("tench")
    assert names[imagenet_classes.class_index("n01443537")].startswith("goldfish")
    assert names[-1].startswith("toilet tissue")


def test_class_index_unknown_wnid():
    assert imagenet_classes.class_index("n01440764") == 0
    assert imagenet_classes.class_index("n15075141") == 999
    assert not imagenet_classes.is_imagenet_wnid("n00000000")
    with pytest.raises(KeyError):
        imagenet_classes.class_index("n00000000")


# ---------------------------------------------------------------------------------------
# TFRecords


def test_tfrecords_golden_counts():
    eval_set = open_eval_data(require_reference(GOLDEN_DIR) / "validation")
    assert eval_set.kind == "tfrecord"
    assert eval_set.record_counts == (12, 12)
    assert eval_set.num_images == 24
    assert eval_set.image_name(0) == "validation-00000-of-00002:0"
    assert eval_set.image_name(13) == "validation-00001-of-00002:1"


def test_write_tfrecords_roundtrip(tmp_path):
    examples = [(jpeg_bytes(seed=i), label, f"img_{i}.JPEG")
                for i, label in enumerate([1, 1000, 500, 2, 3])]
    paths = write_tfrecords(examples, tmp_path, num_shards=2)
    assert [p.name for p in paths] == ["validation-00000-of-00002", "validation-00001-of-00002"]
    eval_set = open_eval_data(tmp_path)
    assert eval_set.record_counts == (2, 3)
    batches = collect(make_dataset(eval_set, IMAGE_SIZE, batch_size=2))
    assert batches["id"].tolist() == [0, 1, 2, 3, 4]
    assert batches["label"].tolist() == [0, 999, 499, 1, 2]
    assert batches["valid"].all()
    assert batches["image"].shape == (5, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert eval_set.read_image_bytes(3) == examples[3][0]
    assert not list(tmp_path.glob(".*"))


def test_record_filenames(tmp_path):
    image = jpeg_bytes()
    write_raw_records(tmp_path / "validation-00000-of-00002", [
        {"image/encoded": image, "image/class/label": [1], "image/filename": b"a.JPEG"},
        {"image/encoded": image, "image/class/label": [2]},
    ])
    write_raw_records(tmp_path / "validation-00001-of-00002", [
        {"image/encoded": image, "image/class/label": [3], "image/filename": b""},
        {"image/encoded": image, "image/class/label": [4], "image/filename": b"d.JPEG"},
    ])
    eval_set = open_eval_data(tmp_path)
    assert read_record_filenames(eval_set) == ["a.JPEG", "", "", "d.JPEG"]
    assert read_record_filenames(eval_set, 3) == ["a.JPEG", "", ""]


def test_record_filenames_golden():
    eval_set = open_eval_data(require_reference(GOLDEN_DIR) / "validation")
    names = read_record_filenames(eval_set)
    assert names == list(golden_labels())


def test_record_filenames_folder_rejected(tmp_path):
    eval_set = open_eval_data(make_synset_folder(tmp_path, {"a.JPEG": (jpeg_bytes(), 1)}))
    with pytest.raises(ValueError, match="is an image folder, not TFRecords"):
        read_record_filenames(eval_set)


def test_write_tfrecords_bad_label(tmp_path):
    with pytest.raises(DataError, match=r"img\.JPEG has label 1001; expected 1\.\.1000"):
        write_tfrecords([(jpeg_bytes(), 1001, "img.JPEG")], tmp_path)
    assert not list(tmp_path.iterdir())


def test_count_records_truncated(tmp_path):
    path = write_tfrecords([(jpeg_bytes(seed=i), 1, f"{i}.JPEG") for i in range(3)], tmp_path)[0]
    assert count_records(path) == 3
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(DataError,
                       match=r"validation-00000-of-00001 is truncated in record 2"):
        count_records(path)
    path.write_bytes(data + b"\x00" * 5)
    with pytest.raises(DataError, match="is truncated at byte"):
        count_records(path)


def test_count_records_bad_checksum(tmp_path):
    path = write_tfrecords([(jpeg_bytes(), 1, "a.JPEG")], tmp_path)[0]
    data = bytearray(path.read_bytes())
    data[8] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt at byte 0"):
        open_eval_data(tmp_path)


def test_tfrecords_empty_shards(tmp_path):
    (tmp_path / "validation-00000-of-00001").write_bytes(b"")
    with pytest.raises(DataError, match="contain no records"):
        open_eval_data(tmp_path)


def test_tfrecord_labels_out_of_range(tmp_path):
    image = jpeg_bytes()
    write_raw_records(tmp_path / "validation-00000-of-00001", [
        {"image/encoded": image, "image/class/label": [5]},
        {"image/encoded": image, "image/class/label": [1001]},
        {"image/encoded": image, "image/class/label": [0]},
        {"image/encoded": image},
    ])
    eval_set = open_eval_data(tmp_path)
    batches = collect(make_dataset(eval_set, IMAGE_SIZE, batch_size=4))
    assert batches["label"].tolist() == [4, 1000, -1, MISSING_LABEL]
    with pytest.raises(DataError, match=r"record 1 of .*validation-00000-of-00001 has "
                                        r"image/class/label 1001, outside 1\.\.1000"):
        check_labels(eval_set, batches["id"], batches["label"])
    with pytest.raises(DataError, match=r"record 2 of .* has image/class/label 0, outside"):
        check_labels(eval_set, batches["id"][2:], batches["label"][2:])
    with pytest.raises(DataError, match=r"record 3 of .* has no image/class/label"):
        check_labels(eval_set, batches["id"][3:], batches["label"][3:])
    check_labels(eval_set, batches["id"][:1], batches["label"][:1])


def test_tfrecords_reject_labels_file(tmp_path):
    write_tfrecords([(jpeg_bytes(), 1, "a.JPEG")], tmp_path)
    with pytest.raises(DataError, match="applies only to a flat folder"):
        open_eval_data(tmp_path, labels_file=tmp_path / "labels.txt")


# ---------------------------------------------------------------------------------------
# Image folders


def test_synset_folder_golden(tmp_path):
    labels = golden_labels()
    jpegs = GOLDEN_DIR / "jpegs"
    make_synset_folder(tmp_path, {name: ((jpegs / name).read_bytes(), label)
                                  for name, label in labels.items()})
    eval_set = open_eval_data(tmp_path)
    assert eval_set.kind == "folder"
    assert eval_set.num_images == 24
    found = {path.name: label + 1 for path, label in zip(eval_set.files, eval_set.labels)}
    assert found == labels
    assert eval_set.image_name(0) == f"{imagenet_classes.wnids()[22]}/img_01_0008.JPEG"


@pytest.mark.parametrize("layout", ["wnid_lines", "solution_csv", "label_tsv"])
def test_flat_folder_label_files(tmp_path, layout):
    labels = golden_labels()
    images = tmp_path / "images"
    images.mkdir()
    for name in labels:
        shutil.copy(GOLDEN_DIR / "jpegs" / name, images / name)
    wnids = imagenet_classes.wnids()
    names = sorted(labels)
    if layout == "wnid_lines":
        text = "".join(f"{wnids[labels[n] - 1]}\n" for n in names)
    elif layout == "solution_csv":
        # Rows in another order, ImageId without extension, boxes after the wnid.
        text = "ImageId,PredictionString\n" + "".join(
            f"{Path(n).stem},{wnids[labels[n] - 1]} 1 2 3 4\n" for n in reversed(names))
    else:
        text = "".join(f"{n}\t{labels[n]}\n" for n in names)
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text(text)
    eval_set = open_eval_data(images, labels_file)
    assert [p.name for p in eval_set.files] == names
    assert [label + 1 for label in eval_set.labels] == [labels[n] for n in names]


def test_flat_folder_needs_labels(tmp_path):
    (tmp_path / "ILSVRC2012_val_00000001.JPEG").write_bytes(jpeg_bytes())
    with pytest.raises(DataError,
                       match="flat folder of 1 images without labels; pass --labels"):
        open_eval_data(tmp_path)


def test_empty_directory(tmp_path):
    with pytest.raises(DataError, match=r"directory .* is empty"):
        open_eval_data(tmp_path)


def test_directory_without_images(tmp_path):
    (tmp_path / "README.txt").write_text("no images here")
    with pytest.raises(DataError, match="contains no images"):
        open_eval_data(tmp_path)


def test_missing_and_file_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_eval_data(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is not a directory"):
        open_eval_data(tmp_path / "file")


def test_synset_folder_unknown_wnids(tmp_path):
    make_synset_folder(tmp_path, {"a.JPEG": (jpeg_bytes(), 1)})
    (tmp_path / "n99999999").mkdir()
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match=r"2 subfolder\(s\) of .* are not ImageNet-1k wnids: "
                                        r"cats, n99999999"):
        open_eval_data(tmp_path)


def test_synset_folder_without_images(tmp_path):
    (tmp_path / "n01440764").mkdir()
    (tmp_path / "n01440764" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="wnid subfolders of .* contain no"):
        open_eval_data(tmp_path)


def test_label_file_errors(tmp_path):
    names = ["a.JPEG", "b.JPEG"]
    cases = [
        ("n01440764\n", r"has 1 wnid lines but the folder has 2 images"),
        ("n01440764\nn00000000\n", r"line 2: 'n00000000' is not an ImageNet-1k wnid"),
        ("ImageId,PredictionString\na,n01440764 1 2 3 4\n",
         r"no label for 1 image\(s\): b\.JPEG"),
        ("a.JPEG\t1\nb.JPEG\t1001\n", r"line 2: b\.JPEG has label 1001, outside 1\.\.1000"),
        ("a.JPEG\t1\nb.JPEG\tfish\n", r"line 2: label 'fish' is not an integer"),
        ("a.JPEG\t1\t2\n", r"line 1: expected file<TAB>label"),
        ("\n\n", r"is empty"),
        ("490\n361\n", r"bare class numbers \('490' on line 1\).*devkit's class order"),
    ]
    for text, message in cases:
        path = tmp_path / "labels.txt"
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            read_labels_file(path, names)
    with pytest.raises(DataError, match="does not exist"):
        read_labels_file(tmp_path / "missing.txt", names)


def test_labels_rejected_for_synset_folder(tmp_path):
    make_synset_folder(tmp_path, {"a.JPEG": (jpeg_bytes(), 1)})
    with pytest.raises(DataError, match="subfolder names are the labels"):
        open_eval_data(tmp_path, labels_file=tmp_path / "labels.txt")


# ---------------------------------------------------------------------------------------
# Pipeline


@pytest.mark.parametrize("batch_size", [5, 7, 24, 64])
def test_pipeline_counts_every_image(batch_size):
    eval_set = open_eval_data(require_reference(GOLDEN_DIR) / "validation")
    batches = collect(make_dataset(eval_set, IMAGE_SIZE, batch_size))
    assert batches["id"].tolist() == list(range(24))
    assert batches["valid"].all()
    assert batches["label"].tolist() == [v - 1 for v in golden_labels().values()]


def test_pipeline_limit():
    eval_set = open_eval_data(require_reference(GOLDEN_DIR) / "validation")
    batches = collect(make_dataset(eval_set, IMAGE_SIZE, batch_size=4, limit=10))
    assert batches["id"].tolist() == list(range(10))


def test_pipeline_matches_reference_preprocessing():
    eval_set = open_eval_data(require_reference(GOLDEN_DIR) / "validation")
    batch = next(iter(make_dataset(eval_set, 160, batch_size=2)))
    for index in range(2):
        expected = np.load(GOLDEN_DIR / "preprocessed" / f"img_01_000{index}_i160.npy")
        np.testing.assert_allclose(batch["image"][index].numpy(), expected, rtol=0, atol=1e-5)


def test_pipeline_odd_and_corrupt_images(tmp_path):
    files = {
        "gray.JPEG": (jpeg_bytes(mode="L"), 1),
        "cmyk.JPEG": (jpeg_bytes(mode="CMYK"), 2),
        "png.JPEG": (jpeg_bytes(image_format="PNG"), 3),
        "tiny.JPEG": (jpeg_bytes(width=3, height=2), 4),
        "wide.JPEG": (jpeg_bytes(width=1200, height=16), 5),
        "corrupt.JPEG": (b"\xff\xd8\xff\xe0 this is not a JPEG", 6),
        "text.JPEG": (b"plain text", 7),
    }
    eval_set = open_eval_data(make_synset_folder(tmp_path, files))
    batches = collect(make_dataset(eval_set, IMAGE_SIZE, batch_size=3))
    assert batches["id"].tolist() == list(range(7))
    invalid = {eval_set.files[i].name for i in batches["id"][~batches["valid"]]}
    assert invalid == {"corrupt.JPEG", "text.JPEG"}
    assert np.isfinite(batches["image"]).all()
    assert batches["label"].tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_pipeline_unreadable_file_flagged(tmp_path):
    make_synset_folder(tmp_path, {"a.JPEG": (jpeg_bytes(), 1), "b.JPEG": (jpeg_bytes(), 1)})
    eval_set = open_eval_data(tmp_path)
    eval_set.files[1].unlink()
    batches = collect(make_dataset(eval_set, IMAGE_SIZE, batch_size=2))
    assert batches["valid"].tolist() == [True, False]



def test_broken_image_link_kept(tmp_path):
    root = make_synset_folder(tmp_path / "data", {"a.JPEG": (jpeg_bytes(), 1)})
    link = root / imagenet_classes.wnids()[0] / "gone.JPEG"
    link.symlink_to(tmp_path / "missing.JPEG")
    eval_set = open_eval_data(root)
    assert [p.name for p in eval_set.files] == ["a.JPEG", "gone.JPEG"]
    batches = collect(make_dataset(eval_set, IMAGE_SIZE, batch_size=2))
    assert batches["valid"].tolist() == [True, False]


def test_non_utf8_file_name_read(tmp_path):
    name = os.fsdecode(b"caf\xe9.JPEG")
    root = make_synset_folder(tmp_path / "data", {name: (jpeg_bytes(), 1)})
    eval_set = open_eval_data(root)
    batches = collect(make_dataset(eval_set, IMAGE_SIZE, batch_size=1))
    assert batches["valid"].tolist() == [True]


def test_missing_shards_warned(tmp_path, caplog):
    examples = [(jpeg_bytes(seed=i), 1, f"img_{i}.JPEG") for i in range(3)]
    paths = write_tfrecords(examples, tmp_path, num_shards=3)
    paths[1].unlink()
    with caplog.at_level(logging.WARNING, logger="converter.eval_data"):
        eval_set = open_eval_data(tmp_path)
    assert eval_set.record_counts == (1, 1)
    assert ("1 TFRecord shard(s) named by the others are missing from "
            f"{tmp_path}: validation-00001-of-00003.") in caplog.text


def test_all_shards_present_no_warning(tmp_path, caplog):
    write_tfrecords([(jpeg_bytes(), 1, "a.JPEG"), (jpeg_bytes(), 2, "b.JPEG")], tmp_path,
                    num_shards=2)
    with caplog.at_level(logging.WARNING, logger="converter.eval_data"):
        open_eval_data(tmp_path)
    assert "missing" not in caplog.text


def test_broken_shard_link_rejected(tmp_path):
    write_tfrecords([(jpeg_bytes(), 1, "a.JPEG")], tmp_path, num_shards=1)
    (tmp_path / "validation-00001-of-00002").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"1 TFRecord shard\(s\) in .* are symbolic links to "
                                        r"missing files: validation-00001-of-00002\."):
        open_eval_data(tmp_path)


def test_data_one_level_too_high(tmp_path):
    write_tfrecords([(jpeg_bytes(), 1, "a.JPEG")], tmp_path / "validation", num_shards=1)
    (tmp_path / "jpegs").mkdir()
    with pytest.raises(DataError, match=r"not ImageNet-1k wnids: jpegs, validation\. .* "
                                        rf"{tmp_path / 'validation'} contains TFRecords or "
                                        r"wnid folders; pass it as --data instead\."):
        open_eval_data(tmp_path)


def test_empty_shard_warned(tmp_path, caplog):
    write_tfrecords([(jpeg_bytes(), 1, "a.JPEG")], tmp_path, num_shards=1)
    (tmp_path / "validation-00000-of-00001").rename(tmp_path / "validation-00000-of-00002")
    (tmp_path / "validation-00001-of-00002").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="converter.eval_data"):
        eval_set = open_eval_data(tmp_path)
    assert eval_set.record_counts == (1, 0)
    assert f"1 TFRecord shard(s) in {tmp_path} are empty: validation-00001-of-00002." in caplog.text
