"""Timing and peak-memory measurement of whole processes, and a description of the machine.

Each measurement starts a small Python wrapper that spawns the command, waits for it with
`os.wait4` and reports the command's wall time and peak resident set size (ru_maxrss).
The wrapper is needed because Linux carries ru_maxrss across `exec`. A command spawned
directly by a large process, such as a driver that has just compared two 700 MiB files,
would report at least that process's peak RSS instead of its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20

# Run as `python -I -c WRAPPER REPORT_FILE COMMAND...`: spawn COMMAND, wait for it and write
# {"seconds", "maxrss_kib", "returncode"} to REPORT_FILE; exit with the command's status.
WRAPPER = """
import json, os, sys, time
report, command = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.posix_spawnp(command[0], command, os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as f:
    json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss, "returncode": code}, f)
sys.exit(code if code >= 0 else 128 - code)
"""


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished command: wall seconds, peak RSS in bytes and its output."""

    command: tuple[str, ...]
    seconds: float
    peak_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str


class CommandFailed(RuntimeError):
    """A measured command exited with a non-zero status."""


def run_measured(command: Sequence[str], env: dict[str, str] | None = None,
                 cwd: str | Path | None = None) -> Run:
    """Run `command` to completion and return its wall time and peak RSS.

    Raises CommandFailed, with the command's stderr, when it exits non-zero.
    """
    with tempfile.TemporaryDirectory(prefix="measure-") as directory:
        report = Path(directory) / "report.json"
        out_path, err_path = Path(directory) / "stdout", Path(directory) / "stderr"
        # Output goes to files, so no pipe can fill up and block the command.
        with open(out_path, "w") as out, open(err_path, "w") as err:
            wrapper = subprocess.run([sys.executable, "-I", "-c", WRAPPER, str(report),
                                      *command], stdout=out, stderr=err, env=env, cwd=cwd)
        stdout, stderr = out_path.read_text(), err_path.read_text()
        if not report.is_file():
            raise CommandFailed(f"{shlex.join(command)} could not be started (status "
                                f"{wrapper.returncode}):\n{stderr[-4000:]}")
        measured = json.loads(report.read_text())
    # Linux reports ru_maxrss in KiB.
    run = Run(tuple(command), measured["seconds"], measured["maxrss_kib"] * 1024,
              measured["returncode"], stdout, stderr)
    if run.returncode != 0:
        raise CommandFailed(f"{shlex.join(command)} exited with status {run.returncode}:\n"
                            f"{stderr[-4000:]}")
    return run


def run_round_robin(commands: dict[str, list[str]], runs: int,
                    env: dict[str, str] | None = None) -> dict[str, list[dict]]:
    """Run each mode's command `runs` times, alternating modes; return the rows per mode.

    Each command prints a JSON object as its last stdout line; its row is that object plus
    the process's `seconds` and `peak_rss_bytes`.
    """
    measured: dict[str, list[dict]] = {mode: [] for mode in commands}
    for round_index in range(runs):
        for mode, command in commands.items():
            print(f"run {round_index + 1}/{runs}: {mode}", file=sys.stderr, flush=True)
            run = run_measured(command, env=env)
            row = json.loads(run.stdout.strip().splitlines()[-1])
            row.update(seconds=run.seconds, peak_rss_bytes=run.peak_rss_bytes)
            measured[mode].append(row)
    return measured


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def format_command(command: Sequence[str]) -> str:
    """Return a shell-quoted command with the repository root and executables shortened."""
    text = shlex.join(command)
    rsconvert = shutil.which("rsconvert")
    if rsconvert:
        text = text.replace(rsconvert, "rsconvert")
    text = text.replace(sys.executable, "python")
    return text.replace(str(REPO_ROOT) + "/", "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _total_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_description() -> dict[str, str]:
    """Describe the CPU, cores, RAM, OS, Python and library versions of this machine."""
    memory = _total_memory_bytes()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "ram": f"{memory / (1 << 30):.1f} GiB" if memory else "unknown",
        "os": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": _package_version("tensorflow"),
        "keras": _package_version("keras"),
        "tf_keras": _package_version("tf-keras"),
        "h5py": _package_version("h5py"),
        "numpy": _package_version("numpy"),
        "load_average_1min": f"{load[0]:.2f}" if load else "unknown",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def format_machine(description: dict[str, str]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in description.items())
