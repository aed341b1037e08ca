"""ImageNet eval preprocessing of the ResNet-RS release, in TensorFlow ops.

The checkpoints were evaluated with tensorflow/tpu `resnet_preprocessing.py` as it stood in
April 2021 (`CROP_PADDING = 32`) and `resnet_main.py`:

1. decode only a centered square of the JPEG with side
   `int(image_size / (image_size + 32) * min(height, width))`, the product taken in float32,
   at offsets `((height - side) + 1) // 2` and `((width - side) + 1) // 2`;
2. resize the uint8 crop with TF1 `resize_bicubic` (align_corners=False, no half-pixel
   centers) to `image_size` x `image_size`, without clipping;
3. subtract `255 * MEAN_RGB` and divide by `255 * STDDEV_RGB`, both float32 constants.

`crop_fraction` switches step 1 to a fixed fraction of the short side, as the later Model
Garden configs do (`center_crop_fraction`, default 0.875), keeping the offsets of step 1.

ImageNet contains grayscale and CMYK JPEGs and a few PNGs named `.JPEG`. TensorFlow's JPEG
decoder turns the first two into RGB itself. Other formats are recognised from their first
bytes, decoded whole, and cropped to the same window.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from converter.arguments import require_crop_padding
from converter.errors import DataError, RsconvertError
from converter.variants import CROP_PADDING

logger = logging.getLogger(__name__)

# Per-channel RGB mean and standard deviation of ImageNet on the 0..1 scale.
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)

# The original code multiplied on the 0..255 scale in Python doubles, then made float32
# constants of the products; the same rounding keeps outputs bit-identical.
_MEAN_255 = np.array([m * 255 for m in MEAN_RGB], dtype=np.float32)
_STDDEV_255 = np.array([s * 255 for s in STDDEV_RGB], dtype=np.float32)

# Every JPEG starts with the SOI marker followed by the first marker's 0xFF.
_JPEG_MAGIC = b"\xff\xd8\xff"


def normalize(images):
    """Normalize 0..255 RGB pixels: `(x - 255 * MEAN_RGB) / (255 * STDDEV_RGB)`.

    Takes and returns a NumPy array or a TensorFlow tensor, float32, with the RGB channels
    on the last axis.
    """
    if isinstance(images, np.ndarray):
        pixels = images.astype(np.float32, copy=False)
        return (pixels - _MEAN_255) / _STDDEV_255
    pixels = tf.cast(images, tf.float32)
    return (pixels - tf.constant(_MEAN_255)) / tf.constant(_STDDEV_255)


def _check_crop_options(image_size: int, crop_padding: int, crop_fraction: float | None) -> None:
    if int(image_size) != image_size or image_size < 1:
        raise RsconvertError(f"Invalid image size {image_size!r}; expected a positive integer "
                             "number of pixels, e.g. 224.")
    if crop_fraction is None:
        require_crop_padding(crop_padding)
    elif not 0.0 < crop_fraction <= 1.0:
        raise RsconvertError(f"Invalid crop fraction {crop_fraction!r}; expected a value in "
                             "(0, 1], e.g. 0.875.")


def _crop_side(height: tf.Tensor, width: tf.Tensor, image_size: int, crop_padding: int,
               crop_fraction: float | None) -> tf.Tensor:
    if crop_fraction is None:
        ratio = image_size / (image_size + crop_padding)
    else:
        ratio = crop_fraction
    short_side = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.cast(ratio * short_side, tf.int32)
    # NOTE: the original code fails when the crop rounds to 0 px, at a short side of 1 px.
    # This keeps one pixel instead, so such an image still yields an output.
    return tf.maximum(side, 1)


def _center_crop_window(shape: tf.Tensor, image_size: int, crop_padding: int,
                        crop_fraction: float | None) -> tf.Tensor:
    """Return [offset_height, offset_width, side, side] of the centered eval crop."""
    height, width = shape[0], shape[1]
    side = _crop_side(height, width, image_size, crop_padding, crop_fraction)
    # NOTE: Model Garden's `center_crop_image_v2` offsets by int((dim - fraction * short) / 2)
    # from the untruncated side, which can land one pixel before this offset.
    offset_height = ((height - side) + 1) // 2
    offset_width = ((width - side) + 1) // 2
    return tf.stack([offset_height, offset_width, side, side])


def center_crop_window(height: int, width: int, image_size: int,
                       crop_padding: int = CROP_PADDING,
                       crop_fraction: float | None = None) -> tuple[int, int, int]:
    """Return (offset_height, offset_width, side) of the eval crop of a height x width image."""
    _check_crop_options(image_size, crop_padding, crop_fraction)
    window = _center_crop_window(tf.constant([height, width, 3], tf.int32), image_size,
                                 crop_padding, crop_fraction)
    offset_height, offset_width, side, _ = (int(v) for v in window.numpy())
    return offset_height, offset_width, side


def _decode_jpeg_crop(image_bytes: tf.Tensor, image_size: int, crop_padding: int,
                      crop_fraction: float | None) -> tf.Tensor:
    shape = tf.image.extract_jpeg_shape(image_bytes)
    window = _center_crop_window(shape, image_size, crop_padding, crop_fraction)
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)


def _decode_other_crop(image_bytes: tf.Tensor, image_size: int, crop_padding: int,
                       crop_fraction: float | None) -> tf.Tensor:
    # PNG, GIF (first frame) and BMP; 16-bit PNGs are scaled to uint8.
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    window = _center_crop_window(tf.shape(image), image_size, crop_padding, crop_fraction)
    return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])


def is_jpeg(image_bytes) -> tf.Tensor:
    """Return a boolean tensor: whether the encoded image starts with the JPEG marker."""
    return tf.equal(tf.strings.substr(image_bytes, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)


def preprocess_image_bytes(image_bytes, image_size: int, crop_padding: int = CROP_PADDING,
                           crop_fraction: float | None = None,
                           normalized: bool = True) -> tf.Tensor:
    """Decode, center-crop, resize and normalize one encoded image as the release eval did.

    Works eagerly and inside `tf.data` map functions. `image_bytes` is a scalar string
    tensor; the result is float32 [image_size, image_size, 3], normalized for a model built
    without include_preprocessing. With `normalized=False` it is the resized pixels in about
    0..255 (bicubic resizing overshoots a little), the input of a model built with it.
    `crop_fraction`, when given, replaces the `crop_padding` rule with
    `side = int(crop_fraction * min(height, width))`. A corrupt or unsupported image
    raises `tf.errors.InvalidArgumentError` when the op runs.
    """
    _check_crop_options(image_size, crop_padding, crop_fraction)
    image_bytes = tf.convert_to_tensor(image_bytes, dtype=tf.string)
    crop = tf.cond(
        is_jpeg(image_bytes),
        lambda: _decode_jpeg_crop(image_bytes, image_size, crop_padding, crop_fraction),
        lambda: _decode_other_crop(image_bytes, image_size, crop_padding, crop_fraction))
    # The op behind TF1 `tf.compat.v1.image.resize_bicubic`, called directly to skip its
    # deprecation message; uint8 in, float32 out.
    resized = tf.raw_ops.ResizeBicubic(
        images=crop[tf.newaxis], size=[image_size, image_size], align_corners=False,
        half_pixel_centers=False)[0]
    resized = tf.reshape(resized, [image_size, image_size, 3])
    return normalize(resized) if normalized else resized


def op_error_text(error: tf.errors.OpError) -> str:
    """Return the first line of a TensorFlow op error without its op and device decoration."""
    text = (error.message or type(error).__name__).splitlines()[0]
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text).strip().rstrip(".")
    return text or type(error).__name__


def preprocess_file(path: str | os.PathLike, image_size: int, crop_padding: int = CROP_PADDING,
                    crop_fraction: float | None = None, normalized: bool = True) -> np.ndarray:
    """Read and preprocess one image file eagerly; returns float32 [S, S, 3].

    `normalized` is as in preprocess_image_bytes.

    Raises DataError naming the file when it is missing, unreadable or not a decodable image.
    """
    _check_crop_options(image_size, crop_padding, crop_fraction)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DataError(f"Image file not found: {os.fspath(path)!r}. Check the path.") from None
    except OSError as error:
        raise DataError(f"Cannot read image file {os.fspath(path)!r}: {error}.") from None
    if not data:
        raise DataError(f"Image file {os.fspath(path)!r} is empty; expected a JPEG or PNG image.")
    try:
        image = preprocess_image_bytes(tf.constant(data), image_size, crop_padding, crop_fraction,
                                       normalized)
        return image.numpy()
    except tf.errors.InvalidArgumentError as error:
        raise DataError(f"Cannot decode image file {os.fspath(path)!r}: {op_error_text(error)}. "
                        "Replace or remove the file.") from None


def load_images(paths: Sequence[str | os.PathLike], image_size: int,
                crop_padding: int = CROP_PADDING, crop_fraction: float | None = None,
                normalized: bool = True) -> np.ndarray:
    """Preprocess image files into one float32 batch [N, S, S, 3] (N = len(paths)).

    `normalized` is as in preprocess_image_bytes.
    """
    if not paths:
        raise DataError("No image files given; pass at least one image path.")
    images = np.empty((len(paths), image_size, image_size, 3), dtype=np.float32)
    for index, path in enumerate(paths):
        images[index] = preprocess_file(path, image_size, crop_padding, crop_fraction,
                                        normalized)
        logger.debug("Preprocessed %s", path)
    return images
