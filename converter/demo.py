"""`rsconvert demo`: the whole pipeline on a generated checkpoint, with no downloads.

It writes a random ResNet-RS-50 checkpoint in the exact tensorflow/tpu layout: original
variable names, EMA shadows, Momentum slots and global_step. It then converts it, loads the
`.h5` into the Keras 3 model, checks it against the original graph and evaluates a small
generated image set.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from converter.checkpoint.synthetic import write_original_checkpoint
from converter.errors import OutputError

logger = logging.getLogger(__name__)

DEMO_DEPTH = 50
DEMO_IMAGE_SIZE = 160
# Size of the generated eval set: 13 images in batches of 4 exercise the final partial batch.
DEMO_EVAL_IMAGES = 13
DEMO_EVAL_BATCH = 4


def write_demo_checkpoint(directory: str | Path, depth: int = DEMO_DEPTH, num_classes: int = 1000,
                          seed: int = 0, dtype: str = "float32", ema: bool = True,
                          momentum: bool = True, num_shards: int = 1) -> str:
    """Write a random original-layout checkpoint and return its prefix."""
    return write_original_checkpoint(directory, depth=depth, num_classes=num_classes, seed=seed,
                                     storage=dtype, ema=ema, momentum=momentum,
                                     num_shards=num_shards)


def demo_jpegs(count: int, seed: int = 0) -> list[tuple[bytes, int, str]]:
    """Return `count` smooth random JPEG images of assorted sizes with labels in 1..1000."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    examples = []
    for i in range(count):
        height, width = int(rng.integers(120, 400)), int(rng.integers(120, 400))
        rows = np.linspace(0.0, 1.0, height)[:, None, None]
        cols = np.linspace(0.0, 1.0, width)[None, :, None]
        base = rng.uniform(0, 255, 3)
        slope_rows, slope_cols = rng.normal(0, 90, 3), rng.normal(0, 90, 3)
        pixels = base + slope_rows * rows + slope_cols * cols
        pixels += rng.normal(0, 6, (height, width, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG")
        examples.append((buffer.getvalue(), int(rng.integers(1, 1001)), f"demo_{i:03d}.JPEG"))
    return examples


@dataclasses.dataclass
class DemoStep:
    name: str
    seconds: float
    detail: str
    ok: bool = True


def run_demo(workdir: str | Path | None = None, image_size: int = DEMO_IMAGE_SIZE,
             report=None) -> list[DemoStep]:
    """Run the demo pipeline in `workdir` (a new temporary directory when None).

    `report(step)` is called after each step, so the CLI can print as it goes.
    """
    report = report or (lambda step: None)
    steps: list[DemoStep] = []

    def record(name: str, start: float, detail: str, ok: bool = True) -> None:
        step = DemoStep(name, time.perf_counter() - start, detail, ok)
        steps.append(step)
        report(step)

    with tempfile.TemporaryDirectory(prefix="rsconvert-demo-") as scratch:
        root = Path(workdir) if workdir else Path(scratch)
        if root.exists() and not root.is_dir():
            raise OutputError(f"--workdir {root} is a file; pass a directory (it is created "
                              "when missing).")
        root.mkdir(parents=True, exist_ok=True)

        start = time.perf_counter()
        prefix = write_demo_checkpoint(root / "checkpoint")
        record("checkpoint", start, f"wrote a random ResNet-RS-{DEMO_DEPTH} checkpoint in the "
               f"tensorflow/tpu layout at {prefix}")

        from converter.convert import convert_checkpoint
        start = time.perf_counter()
        weights_file = root / f"resnet-rs-{DEMO_DEPTH}-i{image_size}.h5"
        conversion = convert_checkpoint(prefix, weights_file, overwrite=True,
                                        image_size=image_size, show_progress=False)
        record("ckpt-to-h5", start, conversion.summary())

        from converter.keras_model import load_weights_file
        start = time.perf_counter()
        model = load_weights_file(weights_file, input_shape=(image_size, image_size, 3))
        probe = np.random.default_rng(0).normal(size=(2, image_size, image_size, 3))
        logits = model.predict(probe.astype(np.float32), verbose=0)
        record("load", start, f"loaded {weights_file.name} into the Keras 3 model "
               f"({model.count_params():,} parameters); logits shape {logits.shape}, "
               f"finite: {bool(np.isfinite(logits).all())}")

        from converter.parity import run_parity_check
        start = time.perf_counter()
        parity = run_parity_check(prefix, weights_file, image_size=image_size, random_images=4)
        record("parity-check", start, "Keras model against the original graph: "
               + ("within tolerance" if parity.passed else "OUTSIDE tolerance")
               + "\n" + parity.format_table(), ok=parity.passed)
        if not parity.passed:
            return steps

        from converter.eval_data import write_tfrecords
        from converter.evaluation import evaluate
        start = time.perf_counter()
        data_dir = root / "eval-data"
        write_tfrecords(demo_jpegs(DEMO_EVAL_IMAGES), data_dir, num_shards=2)
        result = evaluate(data_dir, image_size, weights_file=weights_file,
                          batch_size=DEMO_EVAL_BATCH, show_progress=False)
        record("eval", start, f"evaluated {DEMO_EVAL_IMAGES} generated images in batches of "
               f"{DEMO_EVAL_BATCH}: {result.num_images} counted, top-1 {result.top1_correct}, "
               f"top-5 {result.top5_correct} (random weights, so accuracy is chance level)",
               ok=result.num_images == DEMO_EVAL_IMAGES)
    return steps
