"""Benchmark `rsconvert ckpt-to-h5` against a tf_keras baseline and a byte-copy floor.

For each depth it writes a random float32 checkpoint in the tensorflow/tpu layout (model
variables, /ExponentialMovingAverage shadows, /Momentum slots and global_step) under the
work directory, then times three whole processes, round-robin, each in a fresh child:

* A: `rsconvert ckpt-to-h5 --checkpoint CKPT --output A.h5 --overwrite`;
* B: `benchmarks/convert_baseline.py`, tf_keras model + one `tf.train.load_variable` per
  tensor + `save_weights`;
* C: `benchmarks/convert_floor.py`, which copies only the EMA tensors' bytes, once into a
  plain file padded to A's output size (`raw`) and once into HDF5 datasets (`h5py`).

It also times `rsconvert --help`, `rsconvert list` and the bare import of the converter.
After the timed runs it checks that A and B wrote identical weights. It prints Markdown
tables of medians and ratios, and writes every run to `--json` when given.

Usage: python benchmarks/bench_convert.py [--depths 50 152 420] [--runs 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import measurement
from measurement import MIB, REPO_ROOT, Run, format_command, median, run_measured

DEFAULT_DEPTHS = (50, 152, 420)
DEFAULT_WORKDIR = REPO_ROOT / "benchmarks" / "work"
# Targets that the results are reported against.
TARGET_BASELINE_SPEEDUP = 20.0     # B / A wall time on the deepest model
TARGET_FLOOR_RATIO = 2.0           # A / C wall time
TARGET_RSS_HEADROOM = 600 * MIB    # A's peak RSS minus the largest tensor
TARGET_STARTUP_SECONDS = 1.0       # `rsconvert --help` and `rsconvert list`
# Checkpoint bytes per parameter: raw + EMA + Momentum, float32 (Momentum skips BN statistics,
# so this slightly overestimates), and output bytes per parameter: A, B, C-raw and C-h5py.
CHECKPOINT_BYTES_PER_PARAMETER = 12
OUTPUT_BYTES_PER_PARAMETER = 16
DISK_MARGIN = 1.2


def parameter_count(depth: int) -> int:
    from converter.architecture import original_variables

    total = 0
    for _, shape in original_variables(depth):
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return total


def check_free_disk(workdir: Path, depths: list[int]) -> None:
    """Exit with a message unless the largest depth's files fit on the work directory's disk."""
    workdir.mkdir(parents=True, exist_ok=True)
    largest = max(parameter_count(d) for d in depths)
    needed = int(largest * (CHECKPOINT_BYTES_PER_PARAMETER + OUTPUT_BYTES_PER_PARAMETER)
                 * DISK_MARGIN)
    free = shutil.disk_usage(workdir).free
    if free < needed:
        sys.exit(f"Not enough free disk under {workdir}: {free / (1 << 30):.1f} GiB free, the "
                 f"benchmark of depth {max(depths)} needs about {needed / (1 << 30):.1f} GiB. "
                 "Free space, pick smaller --depths or another --workdir.")


def ensure_checkpoint(workdir: Path, depth: int) -> str:
    """Write the depth's checkpoint under `workdir` unless it is already there; return its prefix."""
    directory = workdir / f"resnet-rs-{depth}"
    prefix = directory / "model.ckpt"
    if Path(f"{prefix}.index").is_file() and Path(f"{prefix}.data-00000-of-00001").is_file():
        return str(prefix)
    print(f"writing checkpoint of depth {depth} to {directory} ...", file=sys.stderr, flush=True)
    code = ("import sys; from converter.checkpoint.synthetic import write_original_checkpoint; "
            "write_original_checkpoint(sys.argv[1], int(sys.argv[2]), storage='float32', "
            "ema=True, momentum=True)")
    run_measured([sys.executable, "-c", code, str(directory), str(depth)], env=child_env())
    return str(prefix)


def needed_tensor_bytes(prefix: str) -> tuple[int, int]:
    """Return (total, largest) byte size of the EMA tensors a conversion reads."""
    from convert_floor import needed_entries

    _, entries = needed_entries(prefix)
    sizes = [entry.size for entry in entries]
    return sum(sizes), max(sizes)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def rsconvert_executable() -> str:
    path = shutil.which("rsconvert")
    if path is None:
        sys.exit("The rsconvert command is not on PATH; install the project with "
                 "`pip install -e .` first.")
    return path


def output_path(workdir: Path, depth: int, suffix: str) -> Path:
    return workdir / f"out-{depth}-{suffix}"


def conversion_commands(prefix: str, depth: int, workdir: Path, output_size: int | None
                        ) -> dict[str, list[str]]:
    rsconvert = rsconvert_executable()
    commands = {
        "A rsconvert": [rsconvert, "ckpt-to-h5", "--checkpoint", prefix,
                        "--output", str(output_path(workdir, depth, "a.h5")), "--overwrite"],
        "B tf_keras baseline": [sys.executable, str(REPO_ROOT / "benchmarks/convert_baseline.py"),
                                prefix, str(depth), str(output_path(workdir, depth, "b.h5"))],
        "C floor, raw": [sys.executable, str(REPO_ROOT / "benchmarks/convert_floor.py"), prefix,
                         str(output_path(workdir, depth, "c.raw")), "--mode", "raw"],
        "C floor, h5py": [sys.executable, str(REPO_ROOT / "benchmarks/convert_floor.py"), prefix,
                          str(output_path(workdir, depth, "c.h5")), "--mode", "h5py"],
    }
    if output_size is not None:
        commands["C floor, raw"] += ["--size", str(output_size)]
    return commands


def check_same_weights(first: Path, second: Path) -> int:
    """Raise unless every weight of `first` has an identical array in `second`; return the count."""
    import numpy as np

    from converter.h5_weights import read_weights

    expected, actual = read_weights(first), read_weights(second)
    compared = 0
    for layer, arrays in expected.items():
        if layer not in actual or len(actual[layer]) != len(arrays):
            raise RuntimeError(f"{second} lacks the weights of layer {layer} found in {first}")
        for index, (left, right) in enumerate(zip(arrays, actual[layer])):
            if left.shape != right.shape or not np.array_equal(left, right):
                raise RuntimeError(f"weight {index} of layer {layer} differs between {first} "
                                   f"and {second}")
            compared += 1
    return compared


def measure_depth(depth: int, runs: int, workdir: Path, keep: bool, skip_baseline: bool) -> dict:
    prefix = ensure_checkpoint(workdir, depth)
    checkpoint_bytes = sum(p.stat().st_size for p in Path(prefix).parent.iterdir())
    needed_bytes, largest_bytes = needed_tensor_bytes(prefix)
    env = child_env()

    # One untimed conversion gives A's output size, which the raw floor pads up to.
    run_measured(conversion_commands(prefix, depth, workdir, None)["A rsconvert"], env=env)
    output_size = output_path(workdir, depth, "a.h5").stat().st_size
    commands = conversion_commands(prefix, depth, workdir, output_size)
    if skip_baseline:
        del commands["B tf_keras baseline"]

    measured: dict[str, list[Run]] = {side: [] for side in commands}
    for round_index in range(runs):
        for side, command in commands.items():
            os.sync()  # write back the previous run's output before the next starts
            print(f"depth {depth}, run {round_index + 1}/{runs}: {side}", file=sys.stderr,
                  flush=True)
            measured[side].append(run_measured(command, env=env))

    compared = None
    if not skip_baseline:
        compared = check_same_weights(output_path(workdir, depth, "a.h5"),
                                      output_path(workdir, depth, "b.h5"))
    for path in workdir.glob(f"out-{depth}-*"):
        path.unlink()
    if not keep:
        shutil.rmtree(Path(prefix).parent)
    return {
        "depth": depth,
        "parameters": parameter_count(depth),
        "checkpoint_bytes": checkpoint_bytes,
        "needed_bytes": needed_bytes,
        "largest_tensor_bytes": largest_bytes,
        "output_bytes": output_size,
        "weights_identical_a_b": compared,
        "sides": {side: {"command": format_command(commands[side]),
                         "seconds": [r.seconds for r in measured[side]],
                         "peak_rss_bytes": [r.peak_rss_bytes for r in measured[side]]}
                  for side in commands},
    }


def measure_startup(runs: int) -> dict:
    rsconvert = rsconvert_executable()
    commands = {
        "rsconvert --help": [rsconvert, "--help"],
        "rsconvert list": [rsconvert, "list"],
        "import converter.convert": [sys.executable, "-c", "import converter.convert"],
        "import ml_dtypes": [sys.executable, "-c", "import ml_dtypes"],
        "import numpy, h5py": [sys.executable, "-c", "import numpy, h5py"],
    }
    env = child_env()
    measured: dict[str, list[Run]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            measured[name].append(run_measured(command, env=env))
    return {name: {"command": format_command(commands[name]),
                   "seconds": [r.seconds for r in measured[name]],
                   "peak_rss_bytes": [r.peak_rss_bytes for r in measured[name]]}
            for name in commands}


def _spread(values: list[float]) -> str:
    return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def format_depth(result: dict, runs: int) -> str:
    sides = result["sides"]
    lines = [
        f"### Depth {result['depth']}: {result['parameters']:,} parameters, checkpoint "
        f"{result['checkpoint_bytes'] / MIB:,.0f} MiB, EMA tensors read "
        f"{result['needed_bytes'] / MIB:,.0f} MiB (largest {result['largest_tensor_bytes'] / MIB:.1f}"
        f" MiB), output {result['output_bytes'] / MIB:,.0f} MiB",
        "",
        f"| Side | Wall s, median of {runs} (min-max) | Peak RSS MiB, median | Command |",
        "|---|---|---|---|",
    ]

    for side, data in sides.items():
        rss = median(data["peak_rss_bytes"]) / MIB
        lines.append(f"| {side} | {_spread(data['seconds'])} | {rss:,.0f} | "
                     f"`{data['command']}` |")
    a_seconds = median(sides["A rsconvert"]["seconds"])
    a_rss = median(sides["A rsconvert"]["peak_rss_bytes"])

    lines.append("")
    if "B tf_keras baseline" in sides:
        speedup = median(sides["B tf_keras baseline"]["seconds"]) / a_seconds
        lines.append(f"- B / A: {speedup:.1f}x (target >= {TARGET_BASELINE_SPEEDUP:.0f}x at the "
                     "largest depth)")
    for floor in ("C floor, raw", "C floor, h5py"):
        ratio = a_seconds / median(sides[floor]["seconds"])
        lines.append(f"- A / {floor}: {ratio:.2f} (target <= {TARGET_FLOOR_RATIO:.0f})")
    limit = result["largest_tensor_bytes"] + TARGET_RSS_HEADROOM
    lines.append(f"- A peak RSS {a_rss / MIB:,.0f} MiB vs largest tensor + 600 MiB = "
                 f"{limit / MIB:,.0f} MiB: {'met' if a_rss < limit else 'missed'}")
    if result["weights_identical_a_b"] is not None:
        lines.append(f"- A and B outputs: {result['weights_identical_a_b']} weights compared, "
                     "all identical")
    return "\n".join(lines)


def format_startup(result: dict, runs: int) -> str:
    lines = [
        f"| Command | Wall s, median of {runs} (min-max) | Peak RSS MiB, median |",
        "|---|---|---|",
    ]
    for data in result.values():
        rss = median(data["peak_rss_bytes"]) / MIB
        lines.append(f"| `{data['command']}` | {_spread(data['seconds'])} | {rss:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEFAULT_DEPTHS),
                        help="ResNet-RS depths to benchmark")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side and depth")
    parser.add_argument("--startup-runs", type=int, default=5,
                        help="timed runs of each start-up command")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="folder for checkpoints and outputs (git-ignored by default)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the checkpoints (later runs reuse them)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="leave out B, the slow tf_keras baseline")
    parser.add_argument("--json", type=Path, default=None, help="write every run to this file")
    args = parser.parse_args()

    check_free_disk(args.workdir, args.depths)
    machine = measurement.machine_description()
    startup = measure_startup(args.startup_runs)
    depths = [measure_depth(depth, args.runs, args.workdir, args.keep, args.skip_baseline)
              for depth in args.depths]
    machine["load_average_1min_at_end"] = f"{os.getloadavg()[0]:.2f}"

    print("## Machine\n")
    print(measurement.format_machine(machine))
    print(f"\n## Start-up (target < {TARGET_STARTUP_SECONDS:.0f} s)\n")
    print(format_startup(startup, args.startup_runs))
    print("\n## Conversion\n")
    print("\n\n".join(format_depth(result, args.runs) for result in depths))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine, "startup": startup,
                                         "depths": depths}, indent=2))


if __name__ == "__main__":
    main()
