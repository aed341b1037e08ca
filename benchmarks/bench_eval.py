"""Benchmark the throughput of `converter.evaluation.evaluate` (what `rsconvert eval` runs).

It prepares photo-sized JPEG TFRecords (imagenet_to_gcs layout) and a converted random
ResNet-RS `.h5`, then measures images per second in four modes, each in a fresh child
process, round-robin:

* `eval`: `evaluate(DATA, SIZE, weights_file=H5, batch_size=B)`;
* `model`: the same model on the same batches, decoded into memory beforehand, through one
  `tf.function` forward pass; this is the ceiling for `eval`;
* `eager`: a plain loop that calls the model eagerly on each batch of a tf.data pipeline
  (parse, preprocess, `batch(drop_remainder=True)`, no parallel map, no prefetch);
* `input`: that same pipeline alone, with no model.

No evaluation can run faster than `model`, so `eval / eager` cannot exceed `model / eager`.
Both ratios are printed. The eager loop loses time to its input and to running the model op
by op, and `input` shows how much of its time per image the input can account for. tf.data's
default graph optimizations may parallelize that map and add a prefetch although the
pipeline requests neither.

Throughput is counted from the end of the first batch to the end of the last, so model
building and tracing are left out of every mode alike. Targets: eval >= 0.9x model and
eval >= 1.5x eager.

Usage: python benchmarks/bench_eval.py [--depth 50] [--image-size 160] [--batches 10]
                                       [--batch-size 32] [--runs 3] [--keep]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

from measurement import (MIB, REPO_ROOT, format_command, format_machine, machine_description,
                         median, run_round_robin)

DEFAULT_WORKDIR = REPO_ROOT / "benchmarks" / "work" / "eval"
MODES = ("eval", "model", "eager", "input")
TARGET_MODEL_RATIO = 0.9    # eval images/s / model-alone images/s
TARGET_EAGER_RATIO = 1.5    # eval images/s / plain eager loop images/s
# (width, height) of the generated JPEGs: common ImageNet photo sizes.
PHOTO_SIZES = ((500, 375), (375, 500), (500, 333), (640, 480))
JPEG_QUALITY = 90
NUM_SHARDS = 4


# --- preparation ----------------------------------------------------------------------

def photo_like_jpeg(rng, width: int, height: int) -> bytes:
    """Encode a smooth random image with fine noise, which compresses like a photo."""
    import numpy as np
    from PIL import Image

    coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def prepare(workdir: Path, depth: int, num_images: int, seed: int = 0) -> tuple[Path, Path]:
    """Write the TFRecords and the weights file unless present; return (data dir, .h5)."""
    import numpy as np

    data_dir = workdir / f"tfrecords-{num_images}"
    weights_file = workdir / f"resnet-rs-{depth}.h5"
    if not data_dir.is_dir():
        from converter.eval_data import write_tfrecords

        rng = np.random.default_rng(seed)
        examples = []
        for index in range(num_images):
            width, height = PHOTO_SIZES[index % len(PHOTO_SIZES)]
            label = int(rng.integers(1, 1001))
            examples.append((photo_like_jpeg(rng, width, height), label, f"image_{index}.JPEG"))
        write_tfrecords(examples, data_dir, num_shards=NUM_SHARDS)
    if not weights_file.is_file():
        from converter.checkpoint.synthetic import write_original_checkpoint
        from converter.convert import convert_checkpoint

        checkpoint = write_original_checkpoint(workdir / f"checkpoint-{depth}", depth,
                                               seed=seed, momentum=False)
        convert_checkpoint(checkpoint, weights_file, depth=depth)
        shutil.rmtree(workdir / f"checkpoint-{depth}")
    return data_dir, weights_file


# --- the three measured modes, each run in its own process ----------------------------

def _images_per_second(marks: list[tuple[float, int]]) -> float:
    """Return images/s between the first and the last (time, images done) mark."""
    (first_time, first_images), (last_time, last_images) = marks[0], marks[-1]
    return (last_images - first_images) / (last_time - first_time)


def measure_eval(data_dir: Path, weights_file: Path, image_size: int, batch_size: int) -> dict:
    from converter.evaluation import evaluate

    marks: list[tuple[float, int]] = []
    result = evaluate(data_dir, image_size, weights_file=weights_file, batch_size=batch_size,
                      show_progress=False,
                      progress=lambda p: marks.append((time.perf_counter(), p.images_done)))
    return {"images_per_second": _images_per_second(marks), "images": marks[-1][1],
            "reported_images_per_second": result.images_per_second}


def _load_model(weights_file: Path, image_size: int):
    from converter.keras_model import load_weights_file

    return load_weights_file(weights_file, input_shape=(image_size, image_size, 3),
                             classifier_activation=None, include_top=True)


def measure_model(data_dir: Path, weights_file: Path, image_size: int, batch_size: int) -> dict:
    import tensorflow as tf

    from converter.eval_data import make_dataset, open_eval_data

    dataset = make_dataset(open_eval_data(data_dir), image_size, batch_size)
    batches = [tf.constant(batch["image"]) for batch in dataset]
    model = _load_model(weights_file, image_size)
    forward = tf.function(lambda images: model(images, training=False), reduce_retracing=True)

    marks: list[tuple[float, int]] = []
    done = 0
    for images in batches:
        forward(images).numpy()
        done += int(images.shape[0])
        marks.append((time.perf_counter(), done))
    return {"images_per_second": _images_per_second(marks), "images": done}


def _plain_dataset(data_dir: Path, image_size: int, batch_size: int):
    """Return TFRecords -> map(parse + preprocess) -> batch(drop_remainder=True)."""
    import tensorflow as tf

    from converter.preprocessing import preprocess_image_bytes

    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                "image/class/label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        parsed = tf.io.parse_single_example(record, features)
        image = preprocess_image_bytes(parsed["image/encoded"], image_size)
        return image, parsed["image/class/label"] - 1

    files = sorted(str(path) for path in data_dir.glob("validation-*"))
    return tf.data.TFRecordDataset(files).map(parse).batch(batch_size, drop_remainder=True)


def measure_eager(data_dir: Path, weights_file: Path, image_size: int, batch_size: int) -> dict:
    import numpy as np

    dataset = _plain_dataset(data_dir, image_size, batch_size)
    model = _load_model(weights_file, image_size)

    marks: list[tuple[float, int]] = []
    done = correct = 0
    for images, labels in dataset:
        logits = model(images, training=False)
        correct += int(np.sum(np.argmax(logits, axis=1) == labels.numpy()))
        done += int(images.shape[0])
        marks.append((time.perf_counter(), done))
    return {"images_per_second": _images_per_second(marks), "images": done}


def measure_input(data_dir: Path, weights_file: Path, image_size: int, batch_size: int) -> dict:
    del weights_file  # the input pipeline alone runs no model
    marks: list[tuple[float, int]] = []
    done = 0
    for images, _ in _plain_dataset(data_dir, image_size, batch_size):
        done += int(images.shape[0])
        marks.append((time.perf_counter(), done))
    return {"images_per_second": _images_per_second(marks), "images": done}


MEASURES = {"eval": measure_eval, "model": measure_model, "eager": measure_eager,
            "input": measure_input}


# --- driver ---------------------------------------------------------------------------

def _spread(values: list[float]) -> str:
    return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def run_benchmark(args) -> None:
    args.workdir.mkdir(parents=True, exist_ok=True)
    num_images = args.batches * args.batch_size
    data_dir, weights_file = prepare(args.workdir, args.depth, num_images)
    machine = machine_description()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    commands = {mode: [sys.executable, str(Path(__file__).resolve()), "measure", mode,
                       "--data", str(data_dir), "--weights-file", str(weights_file),
                       "--image-size", str(args.image_size),
                       "--batch-size", str(args.batch_size)]
                for mode in MODES}
    measured = run_round_robin(commands, args.runs, env=env)
    machine["load_average_1min_at_end"] = f"{os.getloadavg()[0]:.2f}"

    rates = {mode: [row["images_per_second"] for row in measured[mode]] for mode in MODES}
    print("## Machine\n")
    print(format_machine(machine))
    print(f"\n## Evaluation throughput: ResNet-RS-{args.depth} at {args.image_size} px, "
          f"{num_images} photo-sized JPEGs in {NUM_SHARDS} TFRecord shards, batch "
          f"{args.batch_size}\n")
    print(f"| Mode | Images/s, median of {args.runs} (min-max) | Process s, median | "
          "Peak RSS MiB, median | Command |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        seconds = median([row["seconds"] for row in measured[mode]])
        rss = median([row["peak_rss_bytes"] for row in measured[mode]]) / MIB
        print(f"| {mode} | {_spread(rates[mode])} | {seconds:.1f} | {rss:,.0f} | "
              f"`{format_command(commands[mode])}` |")
    eval_rate = median(rates["eval"])
    print(f"\n- eval / model: {eval_rate / median(rates['model']):.2f} "
          f"(target >= {TARGET_MODEL_RATIO})")
    print(f"- eval / eager: {eval_rate / median(rates['eager']):.2f} "
          f"(target >= {TARGET_EAGER_RATIO})")
    print(f"- model / eager, the most eval / eager can reach here: "
          f"{median(rates['model']) / median(rates['eager']):.2f}")
    print(f"- input alone takes {median(rates['eager']) / median(rates['input']):.1%} of the "
          "eager loop's time per image")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine, "runs": measured}, indent=2))
    if not args.keep:
        shutil.rmtree(args.workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="subcommand")

    measure = subcommands.add_parser("measure", help="run one mode and print a JSON line")
    measure.add_argument("mode", choices=MODES)
    measure.add_argument("--data", type=Path, required=True)
    measure.add_argument("--weights-file", type=Path, required=True)
    measure.add_argument("--image-size", type=int, required=True)
    measure.add_argument("--batch-size", type=int, required=True)

    parser.add_argument("--depth", type=int, default=50, help="ResNet-RS depth")
    parser.add_argument("--image-size", type=int, default=160, help="eval image side in pixels")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--batches", type=int, default=10,
                        help="number of full batches of generated images")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per mode")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="folder for the TFRecords and the weights file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated data (later runs reuse it)")
    parser.add_argument("--json", type=Path, default=None, help="write every run to this file")
    args = parser.parse_args()

    if args.subcommand == "measure":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        row = MEASURES[args.mode](args.data, args.weights_file, args.image_size, args.batch_size)
        print(json.dumps(row))
    else:
        run_benchmark(args)


if __name__ == "__main__":
    main()
