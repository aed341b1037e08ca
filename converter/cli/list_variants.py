"""`rsconvert list`: the official variants, their URLs and whether each is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import click

from converter.catalog import CatalogEntry, catalog_entries
from converter.variants import BASE_URL_ENV, CHECKPOINTS_ENV, DEFAULT_BASE_URL

_COLUMNS = ("Name", "Depth", "Image size", "Official top-1 (%)", "Downloaded", "URL")


def format_catalog(entries: list[CatalogEntry]) -> str:
    """Format the entries as a plain-text table with aligned columns."""
    rows = [_COLUMNS] + [
        (entry.name, str(entry.depth), str(entry.image_size), f"{entry.official_top1:.1f}",
         "yes" if entry.downloaded else "no", entry.url)
        for entry in entries
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    return "\n".join(lines)


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=None,
              show_default=f"checkpoints/ in the working directory, or ${CHECKPOINTS_ENV}",
              help="Folder searched for downloaded checkpoints.")
@click.option("--base-url", envvar=BASE_URL_ENV, default=DEFAULT_BASE_URL, show_default=True,
              show_envvar=True, help="URL of the folder that contains the archives.")
def command(as_json: bool, dest: Path | None, base_url: str) -> None:
    """List the official ResNet-RS checkpoints."""
    entries = catalog_entries(dest, base_url)
    if as_json:
        click.echo(json.dumps([entry.to_dict() for entry in entries], indent=2))
    else:
        click.echo(format_catalog(entries))
