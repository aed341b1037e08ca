"""The CLI's help and `list` paths must start without importing TensorFlow or Keras.

Each case runs the command in a fresh interpreter and then lists `sys.modules`, so the check
depends on what was imported, never on how long it took.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from converter.cli import cli

HEAVY_PACKAGES = ("tensorflow", "keras", "tf_keras")

# Runs the CLI with the arguments after `-c`, then prints the loaded top-level package names
# as the last line of stdout.
PROBE = """
import json
import sys
from converter.cli import main
try:
    main()
except SystemExit as done:
    if done.code not in (0, None):
        raise
print()
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def loaded_packages(*args: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


# The group's help, `list` itself, and the help of every registered command.
STARTUP_ARGS = [("--help",), ("--version",), ("list",), ("list", "--json")] + [
    (name, "--help") for name in sorted(cli.commands)]


@pytest.mark.parametrize("args", STARTUP_ARGS, ids=lambda args: " ".join(args))
def test_command_skips_tensorflow(args):
    loaded = loaded_packages(*args)
    for package in HEAVY_PACKAGES:
        assert package not in loaded, f"rsconvert {' '.join(args)} imported {package}"


def test_probe_sees_imports():
    # The probe must report packages the CLI does import, or the checks above prove nothing.
    loaded = loaded_packages("--help")
    assert "click" in loaded
    assert "converter" in loaded


def test_startup_cases_include_commands():
    # Guards against an empty command registry, which would shrink the cases above to none.
    assert ("list", "--help") in STARTUP_ARGS
    assert ("ckpt-to-h5", "--help") in STARTUP_ARGS


def test_group_import_skips_tensorflow():
    code = ("import sys\nimport converter.cli\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in %r))" % (HEAVY_PACKAGES,))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_signals_ignored_after_command():
    # A signal during interpreter teardown must not turn a finished command into a failure.
    code = PROBE + ("import os, signal\n"
                    "os.kill(os.getpid(), signal.SIGTERM)\n"
                    "os.kill(os.getpid(), signal.SIGINT)\n"
                    "print('still running')\n")
    result = subprocess.run([sys.executable, "-c", code, "list"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("still running")


@pytest.mark.parametrize("command", [
    ["eval", "--data", "{tmp}", "--weights-file", "{tmp}/missing.h5"],
    ["export", "--weights-file", "{tmp}/empty.h5", "--output", "{tmp}/missing/model.keras"],
], ids=lambda command: command[0])
def test_bad_input_skips_tensorflow(command, tmp_path):
    # Argument and file checks run before TensorFlow loads, so bad input fails at once.
    code = PROBE.replace("if done.code not in (0, None):\n        raise\n",
                         "print('exit', done.code)\n")
    (tmp_path / "empty.h5").write_bytes(b"")
    args = [arg.format(tmp=tmp_path) for arg in command]
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                            text=True, timeout=120)
    lines = result.stdout.splitlines()
    assert "exit 2" in lines, result.stdout
    assert "does not exist" in result.stderr
    loaded = set(json.loads(lines[-1]))
    for package in HEAVY_PACKAGES:
        assert package not in loaded
