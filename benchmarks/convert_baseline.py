"""Baseline converter for the benchmark: the straightforward tf_keras approach.

It builds `tf_keras.applications.ResNetRS{depth}(weights=None)`, reads every weight with
its own `tf.train.load_variable` call (the `/ExponentialMovingAverage` shadow) and assigns
it to the Keras layer of that name with `set_weights`, then calls `save_weights` on an
`.h5` path. Only the table of which checkpoint variable fills which Keras weight comes
from `converter.architecture`; the rest uses no rsconvert code.

Usage: python benchmarks/convert_baseline.py CHECKPOINT_PREFIX DEPTH OUTPUT.h5
"""

from __future__ import annotations

import argparse
import os


def convert(checkpoint: str, depth: int, output: str) -> int:
    """Write the EMA weights of `checkpoint` to `output`; return how many tensors were read."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf_keras

    from converter.architecture import layer_specs

    builder = getattr(tf_keras.applications, f"ResNetRS{depth}")
    model = builder(weights=None, include_preprocessing=False)
    num_read = 0
    for spec in layer_specs(depth, num_classes=1000, include_top=True):
        layer = model.get_layer(spec.name)
        values = []
        for weight in spec.weights:
            values.append(tf.train.load_variable(
                checkpoint, weight.original_name + "/ExponentialMovingAverage"))
            num_read += 1
        layer.set_weights(values)
    model.save_weights(output)
    return num_read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint prefix, e.g. DIR/model.ckpt")
    parser.add_argument("depth", type=int, help="ResNet-RS depth")
    parser.add_argument("output", help="output .h5 path")
    args = parser.parse_args()
    num_read = convert(args.checkpoint, args.depth, args.output)
    print(f"read {num_read} tensors with tf.train.load_variable; wrote {args.output}")


if __name__ == "__main__":
    main()
