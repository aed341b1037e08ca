"""Progress of an evaluation run: running totals, a bar on a terminal, log lines otherwise."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys

import click

# Without a terminal, a progress line is logged every this many batches.
LOG_EVERY_BATCHES = 10


@dataclasses.dataclass(frozen=True)
class EvalProgress:
    """Running totals after a batch.

    `images_done` includes skipped images; accuracies are over `images_counted`.
    """

    images_done: int
    images_total: int
    images_counted: int
    top1_correct: int
    top5_correct: int
    elapsed_seconds: float
    images_per_second: float

    @property
    def top1(self) -> float:
        return 100.0 * self.top1_correct / max(1, self.images_counted)

    @property
    def top5(self) -> float:
        return 100.0 * self.top5_correct / max(1, self.images_counted)

    @property
    def images_skipped(self) -> int:
        return self.images_done - self.images_counted

    def counts_text(self) -> str:
        """Return the counts behind the accuracies, e.g. "Evaluated 4 of 5 images (1 skipped)"."""
        text = f"Evaluated {self.images_counted} of {self.images_total} images"
        if self.images_skipped:
            text += f" ({self.images_skipped} skipped)"
        return text

    def summary(self) -> str:
        return (f"top-1 {self.top1:.2f}%  top-5 {self.top5:.2f}%  "
                f"{self.images_per_second:.1f} images/s")


def _bar_text(snapshot: EvalProgress | None) -> str | None:
    if snapshot is None:
        return None
    if snapshot.images_skipped:
        return f"{snapshot.images_skipped} skipped, {snapshot.summary()}"
    return snapshot.summary()


@contextlib.contextmanager
def progress_display(total: int, show_bar: bool, interval_logger: logging.Logger):
    """Yield a callable(snapshot, batch_index) that draws a bar or logs interval lines.

    Interval lines go to `interval_logger` at INFO level, every LOG_EVERY_BATCHES batches
    and after the last image. The bar is drawn on stderr.
    """
    if show_bar:
        with click.progressbar(length=total, label="Evaluating", file=sys.stderr,
                               item_show_func=_bar_text) as bar:
            done = 0

            def draw(snapshot: EvalProgress, batch_index: int) -> None:
                nonlocal done
                bar.update(snapshot.images_done - done, snapshot)
                done = snapshot.images_done

            yield draw
        return

    def log(snapshot: EvalProgress, batch_index: int) -> None:
        finished = snapshot.images_done >= snapshot.images_total
        if (batch_index + 1) % LOG_EVERY_BATCHES == 0 or finished:
            interval_logger.info("%s: %s", snapshot.counts_text(), snapshot.summary())

    yield log
