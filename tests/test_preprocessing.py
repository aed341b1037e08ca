"""Eval preprocessing: golden outputs of the original code, odd image files, bad files."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import GOLDEN_DIR, require_reference
from converter.errors import DataError, RsconvertError
from converter.preprocessing import (CROP_PADDING, MEAN_RGB, STDDEV_RGB, center_crop_window,
                                     load_images, normalize, preprocess_file,
                                     preprocess_image_bytes)

# Outputs of the original code, from the same TensorFlow build: only float32 rounding of the
# normalization may differ.
GOLDEN_TOLERANCE = 1e-4


def encode(array: np.ndarray, image_format: str, mode: str | None = None, **options) -> bytes:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def smooth_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB image with gradients and a few shapes, so that JPEG keeps it close."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, height)[:, None]
    cols = np.linspace(0.0, 1.0, width)[None, :]
    channels = [np.clip(255 * (a * rows + b * cols + c), 0, 255)
                for a, b, c in rng.uniform(0.0, 0.6, (3, 3))]
    return np.stack(channels, axis=-1).astype(np.uint8)


@pytest.mark.parametrize("image_size", [160, 224])
@pytest.mark.parametrize("name", ["img_01_0000", "img_01_0001"])
def test_golden_preprocessing(name, image_size):
    reference = require_reference(GOLDEN_DIR)
    expected = np.load(reference / "preprocessed" / f"{name}_i{image_size}.npy")
    actual = preprocess_file(reference / "jpegs" / f"{name}.JPEG", image_size)
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= GOLDEN_TOLERANCE


def test_unnormalized_pixels():
    path = require_reference(GOLDEN_DIR) / "jpegs" / "img_01_0000.JPEG"
    pixels = load_images([path], 160, normalized=False)[0]
    assert 100 < float(pixels.mean()) < 200
    assert np.abs(normalize(pixels) - preprocess_file(path, 160)).max() <= 1e-5


def test_golden_in_tf_data():
    reference = require_reference(GOLDEN_DIR)
    path = str(reference / "jpegs" / "img_01_0001.JPEG")
    dataset = tf.data.Dataset.from_tensor_slices([path]).map(tf.io.read_file).map(
        lambda data: preprocess_image_bytes(data, 160))
    (actual,) = list(dataset.as_numpy_iterator())
    expected = np.load(reference / "preprocessed" / "img_01_0001_i160.npy")
    assert actual.shape == (160, 160, 3)
    assert np.abs(actual - expected).max() <= GOLDEN_TOLERANCE


@pytest.mark.parametrize("height, width, image_size, expected", [
    # int(224 / 256 * 375) = 328; offsets ((375 - 328) + 1) // 2, ((500 - 328) + 1) // 2.
    (375, 500, 224, (24, 86, 328)),
    # int(160 / 192 * 333) = 277; odd leftovers round the offset up.
    (500, 333, 160, (112, 28, 277)),
    (7, 5, 160, (2, 1, 4)),
])
def test_crop_window_padding(height, width, image_size, expected):
    assert center_crop_window(height, width, image_size) == expected


def test_crop_window_fraction():
    # int(0.875 * 375) = 328 whatever the image size.
    assert center_crop_window(375, 500, 160, crop_fraction=0.875) == (24, 86, 328)
    assert center_crop_window(375, 500, 320, crop_fraction=0.875) == (24, 86, 328)


def test_crop_window_keeps_one_pixel():
    assert center_crop_window(1, 9, 224) == (0, 4, 1)


@pytest.mark.parametrize("options, message", [
    ({"crop_fraction": 0.0}, "crop fraction"),
    ({"crop_fraction": 1.5}, "crop fraction"),
    ({"crop_padding": -1}, "crop padding"),
])
def test_crop_options_rejected(options, message):
    with pytest.raises(RsconvertError, match=message):
        center_crop_window(100, 100, 224, **options)


def test_image_size_rejected():
    with pytest.raises(RsconvertError, match="image size"):
        preprocess_image_bytes(encode(smooth_rgb(20, 20), "JPEG"), 0)


@pytest.mark.parametrize("case", ["grayscale", "cmyk", "png", "tiny", "wide", "gif"])
def test_odd_images_decode(case, tmp_path):
    source = smooth_rgb(*{"tiny": (5, 7), "wide": (12, 900)}.get(case, (90, 120)))
    data = {
        "grayscale": lambda: encode(source, "JPEG", mode="L"),
        "cmyk": lambda: encode(source, "JPEG", mode="CMYK", quality=95),
        "png": lambda: encode(source, "PNG"),
        "tiny": lambda: encode(source, "JPEG"),
        "wide": lambda: encode(source, "JPEG"),
        "gif": lambda: encode(source, "GIF"),
    }[case]()
    path = tmp_path / f"{case}.JPEG"
    path.write_bytes(data)
    image = preprocess_file(path, 64)
    assert image.shape == (64, 64, 3)
    assert image.dtype == np.float32
    assert np.isfinite(image).all()


def to_pixels(normalized: np.ndarray) -> np.ndarray:
    return normalized * (255 * np.float32(STDDEV_RGB)) + 255 * np.float32(MEAN_RGB)


def test_grayscale_channels_equal():
    image = to_pixels(preprocess_image_bytes(encode(smooth_rgb(90, 120), "JPEG", mode="L"),
                                             64).numpy())
    assert np.abs(image[..., 0] - image[..., 1]).max() < 1e-3
    assert np.abs(image[..., 1] - image[..., 2]).max() < 1e-3


def test_cmyk_colors_not_inverted():
    source = smooth_rgb(90, 120)
    rgb = preprocess_image_bytes(encode(source, "JPEG", quality=95), 64).numpy()
    cmyk = preprocess_image_bytes(encode(source, "JPEG", mode="CMYK", quality=95), 64).numpy()
    # JPEG loss is a few pixel levels, while inverted channels would differ by ~100 levels.
    assert np.abs(to_pixels(cmyk) - to_pixels(rgb)).mean() < 8


def test_png_uses_same_window():
    source = smooth_rgb(90, 120, seed=3)
    offset_height, offset_width, side = center_crop_window(90, 120, 64)
    cropped = source[offset_height:offset_height + side, offset_width:offset_width + side]
    whole = preprocess_image_bytes(encode(source, "PNG"), 64).numpy()
    # A square image with crop fraction 1 is resized without cropping.
    expected = preprocess_image_bytes(encode(np.ascontiguousarray(cropped), "PNG"), 64,
                                      crop_fraction=1.0).numpy()
    assert np.array_equal(whole, expected)


def test_crop_fraction_changes_output():
    data = encode(smooth_rgb(90, 120), "JPEG")
    padded = preprocess_image_bytes(data, 64, crop_padding=CROP_PADDING).numpy()
    fraction = preprocess_image_bytes(data, 64, crop_fraction=0.5).numpy()
    assert np.abs(padded - fraction).max() > 0.1


def test_corrupt_bytes_raise_in_graph():
    with pytest.raises(tf.errors.InvalidArgumentError):
        preprocess_image_bytes(b"definitely not an image", 64)


@pytest.mark.parametrize("case", ["garbage", "truncated"])
def test_corrupt_file_names_it(case, tmp_path):
    data = encode(smooth_rgb(90, 120), "JPEG")
    path = tmp_path / f"broken_{case}.JPEG"
    path.write_bytes(b"\x00garbage" * 20 if case == "garbage" else data[: len(data) // 3])
    with pytest.raises(DataError, match=f"broken_{case}.JPEG"):
        preprocess_file(path, 64)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="not found: .*absent.JPEG"):
        preprocess_file(tmp_path / "absent.JPEG", 64)


def test_empty_file_names_it(tmp_path):
    path = tmp_path / "empty.JPEG"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty.JPEG.* is empty"):
        preprocess_file(path, 64)


def test_normalize_numpy_matches_tf():
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    assert np.array_equal(normalize(pixels), normalize(tf.constant(pixels)).numpy())


def test_normalize_maps_mean_to_zero():
    mean_pixel = 255 * np.asarray(MEAN_RGB, dtype=np.float64)
    assert np.abs(normalize(mean_pixel[None, :])).max() < 1e-6


def test_load_images_batch(tmp_path):
    paths = []
    for index, size in enumerate([(90, 120), (120, 90), (33, 33)]):
        path = tmp_path / f"image_{index}.JPEG"
        path.write_bytes(encode(smooth_rgb(*size, seed=index), "JPEG"))
        paths.append(path)
    batch = load_images(paths, 48)
    assert batch.shape == (3, 48, 48, 3)
    assert batch.dtype == np.float32
    assert np.array_equal(batch[1], preprocess_file(paths[1], 48))


def test_load_images_empty():
    with pytest.raises(DataError, match="No image files"):
        load_images([], 64)
