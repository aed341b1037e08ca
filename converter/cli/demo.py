"""`rsconvert demo`: run the pipeline on a generated checkpoint."""

from __future__ import annotations

import click

from converter.cli.tensorflow_import import import_tensorflow_quietly


@click.command("demo")
@click.option("--workdir", default=None, metavar="DIR",
              help="Keep the generated checkpoint, weights and data here instead of a "
                   "temporary directory that is removed afterwards.")
def command(workdir):
    """Convert, load, check and evaluate a generated ResNet-RS-50 checkpoint (no downloads)."""
    import_tensorflow_quietly()
    from converter.demo import run_demo

    def show(step):
        click.echo(f"[{step.name}] {step.detail} ({step.seconds:.1f} s)")

    steps = run_demo(workdir, report=show)
    failed = [step.name for step in steps if not step.ok]
    if failed:
        click.echo(f"Demo failed at: {', '.join(failed)}.", err=True)
        raise SystemExit(1)
    click.echo(f"Demo finished: {len(steps)} steps passed.")
