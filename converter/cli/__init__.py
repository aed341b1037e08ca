"""The `rsconvert` command line: a click group whose commands live in sibling modules.

Command modules import TensorFlow and Keras only inside their functions, so that
`rsconvert --help` and `rsconvert list` start without loading them.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys

import click

from converter import __version__
from converter.errors import DiskFullError, RsconvertError

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
# Signals that stop a command like Ctrl-C does, with exit status 128 + signal number.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


VERBOSE_HELP = "More log output (-vv for debug)."
QUIET_HELP = "Only warnings and errors."


# Libraries whose INFO lines (e.g. TensorFlow's "Assets written to: <temporary path>") are
# shown only with -vv.
QUIET_LIBRARY_LOGGERS = ("tensorflow", "absl")


def _log_level(verbose: int, quiet: bool) -> int:
    if quiet:
        return logging.WARNING
    return logging.DEBUG if verbose >= 2 else logging.INFO


def _apply_log_level(level: int) -> None:
    logging.getLogger().setLevel(level)
    for name in QUIET_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level if level == logging.DEBUG else logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="rsconvert")
@click.option("-v", "--verbose", count=True, show_default=False, help=VERBOSE_HELP)
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
def cli(verbose: int, quiet: bool) -> None:
    """Convert tensorflow/tpu ResNet-RS checkpoints to Keras and check the result."""
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    _apply_log_level(_log_level(verbose, quiet))
    # TensorFlow's C++ logging is noisy on start-up; keep its errors only.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _set_command_verbosity(context: click.Context, parameter: click.Parameter, value) -> None:
    """Apply -v/-q given after the command name; they override those given before it."""
    if parameter.name == "quiet" and value:
        context.meta["rsconvert.quiet"] = True
        _apply_log_level(logging.WARNING)
    elif parameter.name == "verbose" and value and not context.meta.get("rsconvert.quiet"):
        _apply_log_level(_log_level(value, False))


def _add_verbosity_options(command: click.Command) -> click.Command:
    # -q is processed first, so that -v cannot undo it.
    command.params.append(click.Option(["-q", "--quiet"], is_flag=True, expose_value=False,
                                       is_eager=True, callback=_set_command_verbosity,
                                       help=QUIET_HELP))
    command.params.append(click.Option(["-v", "--verbose"], count=True, expose_value=False,
                                       show_default=False, callback=_set_command_verbosity,
                                       help=VERBOSE_HELP))
    return command


for _module in COMMAND_MODULES:
    cli.add_command(_add_verbosity_options(importlib.import_module(_module).command))


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived; raised so that partial outputs are cleaned up on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame) -> None:
    raise _Terminated(signum)


def main() -> None:
    """Run the CLI, turning library errors into one line on stderr and an exit status.

    SIGTERM and SIGHUP unwind the command like Ctrl-C does, so that temporary files are
    removed; the exit status is then 128 plus the signal number.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_terminated)
    try:
        _run_cli()
    finally:
        # The outputs are final and the exit status is chosen. A signal during the second
        # or so of interpreter teardown that follows would otherwise kill the process with
        # a failure status and no message.
        for signum in (signal.SIGINT, *STOP_SIGNALS):
            signal.signal(signum, signal.SIG_IGN)


def _run_cli() -> None:
    """Run the CLI and turn each failure into one line on stderr and its exit status."""
    try:
        cli.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # click turns Ctrl-C during a command into Abort.
        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except DiskFullError as error:
        click.echo(f"Error: {error}", err=True)
        # h5py objects of a file whose write failed crash the interpreter when they are
        # freed at exit (seen with Keras' save_weights), so exit without that clean-up.
        # The temporary file is already removed.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_BAD_INPUT)
    except RsconvertError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except _Terminated as stop:
        name = signal.Signals(stop.signum).name
        click.echo(f"Stopped by {name}.", err=True)
        sys.exit(128 + stop.signum)
    except OSError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(EXIT_BAD_INPUT)
