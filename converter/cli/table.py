"""`rsconvert table`: reproduce the official top-1 table for some or all variants."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from converter.cli.options import EXIT_CHECK_FAILED, weights_choice_option
from converter.cli.tensorflow_import import import_tensorflow_quietly
from converter.table import (DEFAULT_BATCH_SIZE, StepError, TableConfig, run_table,
                             select_variants)
from converter.variants import BASE_URL_ENV, CHECKPOINTS_ENV, DEFAULT_BASE_URL


@click.command("table")
@click.option("--data", type=click.Path(exists=True, path_type=Path), required=True,
              help="ImageNet validation data: a folder of validation-* TFRecord shards, a "
                   "folder of per-wnid image folders, or an image folder with --labels.")
@click.option("--labels", "--labels-file", "labels_file",
              type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Labels for a flat image folder, as for `rsconvert eval --labels`.")
@click.option("--variants", default=None, metavar="NAME[,NAME...]",
              help="Comma-separated variants from `rsconvert list`; all when omitted.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N images of --data per variant (a smoke run, "
                   "not compared with the official top-1).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("table-results"), show_default=True,
              help="Folder for the weights files, step records, results.csv, results.md and "
                   "top1.png.")
@click.option("--checkpoints", "checkpoints_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None,
              show_default=f"checkpoints/ in the working directory, or ${CHECKPOINTS_ENV}",
              help="Folder that receives the downloaded checkpoints.")
@click.option("--base-url", envvar=BASE_URL_ENV, default=DEFAULT_BASE_URL, show_default=True,
              show_envvar=True, help="URL of the folder that contains the checkpoint archives.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE,
              show_default=True, help="Evaluation batch size, in images.")
@weights_choice_option()
def command(data: Path, labels_file: Path | None, variants: str | None, limit: int | None,
            output_dir: Path, checkpoints_dir: Path | None, base_url: str, batch_size: int,
            weights: str) -> None:
    """Fetch, convert, parity-check and evaluate each variant, then write the table.

    Finished steps are skipped, so an interrupted run continues where it stopped. Prints
    the Markdown table on stdout, and exits with 1 when a variant failed.
    """
    import_tensorflow_quietly()
    config = TableConfig(output_dir=output_dir, data=data, labels_file=labels_file, limit=limit,
                         batch_size=batch_size, checkpoints_dir=checkpoints_dir,
                         base_url=base_url, weights=weights)
    names = variants.split(",") if variants is not None else None
    try:
        result = run_table(select_variants(names), config)
    except StepError as error:
        # The table of the variants that finished is printed all the same.
        click.echo(error.result.markdown_path.read_text(), nl=False)
        click.echo(f"Error: {error}", err=True)
        sys.exit(EXIT_CHECK_FAILED)
    click.echo(result.markdown_path.read_text(), nl=False)
