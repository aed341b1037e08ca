"""The `rsconvert` command line: a click group whose commands live in sibling modules.

Command modules import TensorFlow and Keras only inside their functions, so that
`rsconvert --help` and `rsconvert list` start without loading them.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from converter import __version__
from converter.errors import RsconvertError

# Each module defines `command`, a click command added to the group in this order.
COMMAND_MODULES = (
    "converter.cli.convert",
    "converter.cli.inspect",
    "converter.cli.demo",
    "converter.cli.list_variants",
    "converter.cli.fetch",
    "converter.cli.table",
    "converter.cli.export",
    "converter.cli.parity",
    "converter.cli.evaluate",
)

# Exit statuses shared by all commands.
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="rsconvert")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose: int, quiet: bool) -> None:
    """Convert tensorflow/tpu ResNet-RS checkpoints to Keras and check the result."""
    if quiet:
        level = logging.WARNING
    elif verbose < 2:
        level = logging.INFO
    else:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    # TensorFlow's C++ logging is noisy on start-up; keep its errors only.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


for _module in COMMAND_MODULES:
    cli.add_command(importlib.import_module(_module).command)


def main() -> None:
    """Run the CLI, turning library errors into one line on stderr and an exit status."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except RsconvertError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        click.echo("Interrupted; no output was written.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(EXIT_BAD_INPUT)
