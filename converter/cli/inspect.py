"""`rsconvert inspect`: list a checkpoint's tensors without TensorFlow."""

from __future__ import annotations

import json

import click

from converter.cli.options import checkpoint_option, resolve_checkpoint, variant_option


@click.command("inspect")
@checkpoint_option()
@variant_option
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@click.option("--reader", type=click.Choice(["auto", "bundle", "tensorflow"]), default="auto",
              help="Checkpoint reader to use.")
def command(checkpoint, variant, as_json, reader):
    """List tensors (name, dtype, shape, bytes), depth, classes and EMA/Momentum presence."""
    from converter.inspect_checkpoint import format_inspection, inspect_checkpoint

    checkpoint, _, _ = resolve_checkpoint(variant, checkpoint, None, None)
    info = inspect_checkpoint(checkpoint, backend=reader)
    click.echo(json.dumps(info, indent=2) if as_json else format_inspection(info))
