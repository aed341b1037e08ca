"""Measure a ResNet-RS forward pass with its weights as variables against frozen constants.

`rsconvert eval` runs the Keras model traced by `tf.function`, which reads its weights from
variables. Freezing the weights into the graph as constants lets TensorFlow's graph
optimizer and oneDNN specialize for them. This benchmark measures what that gains and what
it costs, each mode in a fresh child process, round-robin:

* `variables`: `tf.function(lambda x: model(x, training=False))`;
* `frozen`: the same traced function after `convert_variables_to_constants_v2`.

Each run reports four numbers. Images/s comes from the median batch time over the timed
batches. Seconds to first output run from the built model to the end of the first batch,
so they include tracing, freezing and graph optimization. Peak RSS is the process's. The
logit difference compares the first output with the traced model's output through its
variables. The model has random weights, which leave the speed unchanged.

Usage: python benchmarks/bench_frozen.py [--depth 50] [--image-size 160] [--batch-size 32]
                                         [--batches 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from measurement import MIB, format_machine, machine_description, median, run_round_robin

MODES = ("variables", "frozen")


def measure(mode: str, depth: int, image_size: int, batch_size: int, batches: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from converter.keras_model import ResNetRS

    model = ResNetRS(depth, input_shape=(image_size, image_size, 3), classifier_activation=None)
    images = tf.constant(np.random.default_rng(0).normal(
        size=(batch_size, image_size, image_size, 3)).astype(np.float32))

    start = time.perf_counter()
    spec = tf.TensorSpec((None, image_size, image_size, 3), tf.float32)
    traced = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    forward = traced
    if mode == "frozen":
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2)

        forward = convert_variables_to_constants_v2(traced)
    first = forward(images)
    first = np.asarray(first[0] if isinstance(first, (list, tuple)) else first)
    seconds_to_first = time.perf_counter() - start

    batch_seconds = []
    for _ in range(batches):
        begin = time.perf_counter()
        outputs = forward(images)
        np.asarray(outputs[0] if isinstance(outputs, (list, tuple)) else outputs)
        batch_seconds.append(time.perf_counter() - begin)
    # Largest |difference| from the traced model's output over its largest |logit|.
    expected = traced(images).numpy()
    difference = float(np.abs(first - expected).max() / np.abs(expected).max())
    return {"images_per_second": batch_size / median(batch_seconds),
            "seconds_to_first_output": seconds_to_first,
            "relative_logit_difference": difference}


def run_benchmark(args) -> None:
    machine = machine_description()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    commands = {mode: [sys.executable, str(Path(__file__).resolve()), "measure", mode,
                       "--depth", str(args.depth), "--image-size", str(args.image_size),
                       "--batch-size", str(args.batch_size), "--batches", str(args.batches)]
                for mode in MODES}
    measured = run_round_robin(commands, args.runs, env=env)
    machine["load_average_1min_at_end"] = f"{os.getloadavg()[0]:.2f}"

    print("## Machine\n")
    print(format_machine(machine))
    print(f"\n## ResNet-RS-{args.depth} forward pass at {args.image_size} px, batch "
          f"{args.batch_size}, {args.batches} timed batches per run\n")
    print(f"| Mode | Images/s, median of {args.runs} | Seconds to first output, median | "
          "Peak RSS MiB, median | Max logit difference / max logit |")
    print("|---|---|---|---|---|")
    rates = {}
    for mode in MODES:
        rows = measured[mode]
        rates[mode] = median([row["images_per_second"] for row in rows])
        first = median([row["seconds_to_first_output"] for row in rows])
        rss = median([row["peak_rss_bytes"] for row in rows]) / MIB
        difference = max(row["relative_logit_difference"] for row in rows)
        print(f"| {mode} | {rates[mode]:.2f} | {first:.1f} | {rss:,.0f} | {difference:.1e} |")
    print(f"\n- frozen / variables: {rates['frozen'] / rates['variables']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="subcommand")
    measure_parser = subcommands.add_parser("measure", help="run one mode, print a JSON line")
    measure_parser.add_argument("mode", choices=MODES)
    for options in (parser, measure_parser):
        options.add_argument("--depth", type=int, default=50, help="ResNet-RS depth")
        options.add_argument("--image-size", type=int, default=160, help="image side in pixels")
        options.add_argument("--batch-size", type=int, default=32, help="images per batch")
        options.add_argument("--batches", type=int, default=5, help="timed batches per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode")
    args = parser.parse_args()

    if args.subcommand == "measure":
        row = measure(args.mode, args.depth, args.image_size, args.batch_size, args.batches)
        print(json.dumps(row))
    else:
        run_benchmark(args)


if __name__ == "__main__":
    main()
