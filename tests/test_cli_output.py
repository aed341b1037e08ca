"""What the CLI writes around a command: verbosity options and TensorFlow's start-up lines."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from converter.cli import cli

IMPORT_QUIETLY = ("import logging, sys\n"
                  "if '-vv' in sys.argv: logging.basicConfig(level=logging.DEBUG)\n"
                  "from converter.cli.tensorflow_import import import_tensorflow_quietly\n"
                  "import_tensorflow_quietly()\n"
                  "import tensorflow\n"
                  "tensorflow.config.list_physical_devices()\n"
                  "print('imported')\n")
# Lines the TensorFlow runtime writes to file descriptor 2 while it loads.
RUNTIME_LINE_STARTS = ("I0000", "W0000", "E0000", "WARNING: All log messages before absl")


@pytest.fixture()
def root_level():
    root = logging.getLogger()
    saved = root.level
    yield root
    root.setLevel(saved)


@pytest.mark.parametrize("args, level", [
    (["list", "-q"], logging.WARNING),
    (["list", "-vv"], logging.DEBUG),
    (["list", "-v", "-q"], logging.WARNING),
    (["-q", "list"], logging.WARNING),
])
def test_verbosity_after_command(args, level, root_level):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert root_level.level == level
    # TensorFlow's own INFO lines appear only with -vv.
    expected = logging.DEBUG if level == logging.DEBUG else logging.WARNING
    assert logging.getLogger("tensorflow").level == expected


def fake_tensorflow(directory, body: str) -> dict[str, str]:
    """Write a `tensorflow` package that runs `body`; return an environment that finds it."""
    package = directory / "tensorflow"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(body))
    path = os.pathsep.join([str(directory), *sys.path])
    return {**os.environ, "PYTHONPATH": path}


def run_import(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", IMPORT_QUIETLY, *args], capture_output=True,
                          text=True, env=env, timeout=300)


RUNTIME_BODY = """
    import os
    os.write(2, b"I0000 runtime start-up line\\n")

    class config:
        initialized = False

        @classmethod
        def list_physical_devices(cls):
            # Like TensorFlow, report the failed device initialization once.
            if not cls.initialized:
                cls.initialized = True
                os.write(2, b"E0000 failed call to cuInit\\n")
            return []
"""


def test_runtime_lines_held_back(tmp_path):
    result = run_import(fake_tensorflow(tmp_path, RUNTIME_BODY))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "imported\n"
    assert "runtime start-up line" not in result.stderr
    assert "cuInit" not in result.stderr


def test_runtime_lines_shown_with_debug(tmp_path):
    result = run_import(fake_tensorflow(tmp_path, RUNTIME_BODY), "-vv")
    assert result.returncode == 0, result.stderr
    assert "runtime start-up line" in result.stderr
    assert "cuInit" in result.stderr


def test_failed_import_shows_lines(tmp_path):
    env = fake_tensorflow(tmp_path, """
        import os
        os.write(2, b"I0000 loading the native library\\n")
        raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")
    """)
    result = run_import(env)
    assert result.returncode == 1
    assert "I0000 loading the native library" in result.stderr
    assert "libtensorflow_framework.so.2" in result.stderr
    assert result.stdout == ""


def test_interrupted_import_hides_lines(tmp_path):
    env = fake_tensorflow(tmp_path, """
        import os
        os.write(2, b"I0000 loading the native library\\n")
        raise KeyboardInterrupt
    """)
    result = run_import(env)
    assert result.returncode != 0
    assert "KeyboardInterrupt" in result.stderr
    assert "I0000 loading the native library" not in result.stderr


def test_real_tensorflow_lines_held_back():
    plain = subprocess.run([sys.executable, "-c", "import tensorflow as tf; "
                            "tf.config.list_physical_devices()"],
                           capture_output=True, text=True, timeout=300)
    printed = [line for line in plain.stderr.splitlines() if line.startswith(RUNTIME_LINE_STARTS)]
    if not printed:
        pytest.skip("this TensorFlow prints no start-up lines on this machine")
    result = run_import(dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines()
            if line.startswith(RUNTIME_LINE_STARTS)] == []
