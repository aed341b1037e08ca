"""`rsconvert fetch`: download and unpack one official checkpoint."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

import click

from converter.fetch import (
    DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, ProgressCallback, fetch_variant, format_progress)
from converter.variants import BASE_URL_ENV, CHECKPOINTS_ENV, DEFAULT_BASE_URL


class _ProgressBar:
    """Draw a click progress bar on stderr once the total size is known."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar = None

    def __call__(self, done: int, total: int | None) -> None:
        if total is None:
            return
        if self._bar is None or done < self._bar.pos:
            # A server that ignores Range restarts the download at byte 0.
            self.close()
            self._bar = click.progressbar(length=total, label=self.label, file=sys.stderr,
                                          item_show_func=lambda _: format_progress(done, total))
            self._bar.render_progress()
        self._bar.item_show_func = lambda _: format_progress(done, total)
        self._bar.update(done - self._bar.pos)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.render_finish()
            self._bar = None


@contextlib.contextmanager
def download_progress(label: str) -> Iterator[ProgressCallback | None]:
    """Yield a progress bar on a terminal, or None so that the library logs progress lines."""
    if not sys.stderr.isatty():
        yield None
        return
    bar = _ProgressBar(label)
    try:
        yield bar
    finally:
        bar.close()


@click.command("fetch")
@click.argument("variant")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=None,
              show_default=f"checkpoints/ in the working directory, or ${CHECKPOINTS_ENV}",
              help="Folder that receives VARIANT/ with the checkpoint files.")
@click.option("--base-url", envvar=BASE_URL_ENV, default=DEFAULT_BASE_URL, show_default=True,
              show_envvar=True, help="URL of the folder that contains VARIANT.tar.gz.")
@click.option("--force", is_flag=True,
              help="Download and unpack again even if the checkpoint is already present.")
@click.option("--keep-archive", is_flag=True, help="Keep VARIANT.tar.gz after unpacking it.")
@click.option("--retries", type=click.IntRange(min=0), default=DEFAULT_RETRIES, show_default=True,
              help="Maximum number of consecutive failed attempts that add no bytes.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Network timeout for connecting and for each read, in seconds.")
def command(variant: str, dest: Path | None, base_url: str, force: bool, keep_archive: bool,
            retries: int, timeout_s: float) -> None:
    """Download VARIANT (see `rsconvert list`) and unpack it into DEST/VARIANT/.

    An interrupted download resumes from DEST/VARIANT.tar.gz.part on the next run. Prints
    the checkpoint folder on stdout.
    """
    with download_progress(f"{variant}.tar.gz") as progress:
        result = fetch_variant(variant, dest, base_url=base_url, force=force,
                               keep_archive=keep_archive, retries=retries, timeout_s=timeout_s,
                               progress=progress)
    click.echo(str(result.path))
