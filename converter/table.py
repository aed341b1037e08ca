"""Reproduce the official ResNet-RS top-1 table: fetch, convert, check and evaluate each variant.

For each selected variant the runner performs the steps fetch → convert (with classifier) →
convert (notop) → parity → eval. Each finished step leaves `OUTPUT/VARIANT/STEP.json`,
written last and atomically. A later run skips a step whose record exists, was made with
the same parameters and whose output files still exist. Once a step runs again, every later
step of that variant runs again too, because its inputs may have changed.

The steps call other modules through the adapters in `Steps`, so tests can replace them.
The results go to `OUTPUT/results.csv`, `OUTPUT/results.md` and, when matplotlib is
installed, `OUTPUT/top1.png`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from converter import __version__
from converter.errors import OutputError, RsconvertError
from converter.eval_results import PERCENT_DECIMALS, not_comparable_reason
from converter.output_files import atomic_output
from converter.variants import VARIANTS, Variant, find_variant, get_variant

logger = logging.getLogger(__name__)

STEP_NAMES = ("fetch", "convert", "convert_notop", "parity", "eval")
CSV_NAME = "results.csv"
MARKDOWN_NAME = "results.md"
PLOT_NAME = "top1.png"
DEFAULT_BATCH_SIZE = 32
CSV_FIELDS = ("variant", "depth", "image_size", "weights", "official_top1", "top1", "top5",
              "top1_diff", "images", "limit", "parity_max_rel_diff", "error")


class StepError(RsconvertError):
    """A step of the table reproduction failed for at least one variant.

    `result` contains the rows and the files written, failed rows included.
    """

    def __init__(self, message: str, result: TableResult):
        super().__init__(message)
        self.result = result


class ParityFailure(RsconvertError):
    """The converted model differs from the original graph beyond the parity tolerance."""


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """Options shared by every step of a table run."""

    output_dir: Path
    data: Path | None = None
    labels_file: Path | None = None
    # Maximum number of evaluation images per variant; None evaluates all of them.
    limit: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    checkpoints_dir: Path | None = None
    base_url: str | None = None
    weights: str = "ema"


@dataclasses.dataclass(frozen=True)
class Steps:
    """The functions that do each step's work; `default_steps()` wires the real modules.

    fetch(variant, config) -> dict with "checkpoint" (a directory);
    convert(variant, checkpoint, output, include_top, config) -> dict;
    parity(variant, checkpoint, weights_file, config) -> dict with "max_rel_diff";
    evaluate(variant, weights_file, config) -> dict with "top1", "top5" (percent) and
    "images". Each raises RsconvertError when its check fails. check_data(config) runs once
    before any variant, so that unusable eval data fails before hours of downloads.
    """

    fetch: Callable[[Variant, TableConfig], dict]
    convert: Callable[[Variant, Path, Path, bool, TableConfig], dict]
    parity: Callable[[Variant, Path, Path, TableConfig], dict]
    evaluate: Callable[[Variant, Path, TableConfig], dict]
    check_data: Callable[[TableConfig], None] = lambda config: None


@dataclasses.dataclass
class TableRow:
    """One variant's line of the table; top-1 and top-5 are percentages."""

    variant: str
    depth: int
    image_size: int
    official_top1: float
    weights: str = "ema"
    top1: float | None = None
    top5: float | None = None
    images: int | None = None
    # The --limit of a smoke run: at most this many images were evaluated.
    limit: int | None = None
    # Largest max|keras - original| / max|original| over the compared stages.
    parity_max_rel_diff: float | None = None
    error: str | None = None

    @property
    def not_comparable_reason(self) -> str | None:
        """Reason why this top-1 cannot be set beside the official one, or None when it can
        or when there is no top-1."""
        if self.top1 is None:
            return None
        return not_comparable_reason(find_variant(self.depth, self.image_size),
                                     image_size=self.image_size, weights=self.weights,
                                     num_images=self.images)

    @property
    def comparable(self) -> bool:
        """Whether top-1 was measured as the official one was (EMA weights, all 50,000 images)."""
        return self.top1 is not None and self.not_comparable_reason is None

    @property
    def top1_diff(self) -> float | None:
        """This top-1 minus the official one; None unless the run is comparable."""
        if not self.comparable:
            return None
        return self.top1 - self.official_top1

    def to_csv_dict(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["top1_diff"] = self.top1_diff
        for field in ("top1", "top5", "top1_diff"):
            if row[field] is not None:
                row[field] = round(row[field], PERCENT_DECIMALS)
        return {field: "" if row[field] is None else row[field] for field in CSV_FIELDS}


@dataclasses.dataclass(frozen=True)
class TableResult:
    """The rows of a run and the files it wrote."""

    rows: list[TableRow]
    csv_path: Path
    markdown_path: Path
    plot_path: Path | None

    @property
    def failed(self) -> list[TableRow]:
        return [row for row in self.rows if row.error is not None]


def select_variants(names: Sequence[str] | None) -> list[Variant]:
    """Return the named variants in catalog order, or all of them when `names` is empty."""
    if not names:
        return list(VARIANTS)
    selected = {get_variant(name.strip()).name for name in names if name.strip()}
    return [variant for variant in VARIANTS if variant.name in selected]


def run_table(variants: Sequence[Variant], config: TableConfig,
              steps: Steps | None = None) -> TableResult:
    """Run the missing steps for each variant, then write the CSV, Markdown and plot.

    A variant whose step raises RsconvertError gets the error in its row and the run moves
    on to the next variant. After writing the outputs, StepError lists the failed variants.
    """
    steps = steps or default_steps()
    if not variants:
        raise RsconvertError("No variant selected; pass --variants with names from "
                             "`rsconvert list`, or omit it to run all of them.")
    steps.check_data(config)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    for number, variant in enumerate(variants, start=1):
        logger.info("[%d/%d] %s", number, len(variants), variant.name)
        rows.append(_run_variant(variant, config, steps))

    result = write_outputs(rows, output_dir)
    if result.failed:
        listed = " ".join(f"{row.variant}: {row.error.rstrip('.')}." for row in result.failed)
        saved = ("The rows that finished are in" if len(result.failed) < len(rows)
                 else "The errors are also in")
        raise StepError(f"{len(result.failed)} of {len(rows)} variants failed. {listed} "
                        f"{saved} {result.csv_path}; run the same command again to retry.",
                        result)
    return result


def _run_variant(variant: Variant, config: TableConfig, steps: Steps) -> TableRow:
    row = TableRow(variant.name, variant.depth, variant.image_size, variant.official_top1,
                   weights=config.weights, limit=config.limit)
    runner = _StepRunner(variant, Path(config.output_dir) / variant.name)
    try:
        fetched = runner.run("fetch", {"base_url": config.base_url,
                                       "checkpoints_dir": _text(config.checkpoints_dir)},
                             lambda: steps.fetch(variant, config),
                             outputs=lambda result: [result["checkpoint"]])
        checkpoint = Path(fetched["checkpoint"])

        weights_files = {}
        for include_top, step in ((True, "convert"), (False, "convert_notop")):
            output = runner.directory / _weights_name(variant, include_top)
            runner.run(step, {"checkpoint": str(checkpoint), "weights": config.weights},
                       lambda: steps.convert(variant, checkpoint, output, include_top, config),
                       outputs=lambda result: [output])
            weights_files[include_top] = output

        parity = runner.run("parity", {"weights_file": str(weights_files[True])},
                            lambda: steps.parity(variant, checkpoint, weights_files[True], config))
        row.parity_max_rel_diff = parity.get("max_rel_diff")

        evaluation = runner.run("eval", {"weights_file": str(weights_files[True]),
                                         "data": _text(config.data),
                                         "labels_file": _text(config.labels_file),
                                         "limit": config.limit},
                                lambda: steps.evaluate(variant, weights_files[True], config))
        row.top1 = evaluation["top1"]
        row.top5 = evaluation["top5"]
        row.images = evaluation["images"]
    except RsconvertError as error:
        row.error = f"{runner.current} step: {error}"
        logger.error("%s failed in the %s step: %s", variant.name, runner.current, error)
    return row


def _weights_name(variant: Variant, include_top: bool) -> str:
    return variant.name + ("" if include_top else "_notop") + ".h5"


def _text(value: Path | str | None) -> str | None:
    return None if value is None else str(value)


class _StepRunner:
    """Run one variant's steps in order, skipping those with a matching record."""

    def __init__(self, variant: Variant, directory: Path) -> None:
        self.variant = variant
        self.directory = directory
        self.current: str | None = None
        # Set once a step runs, so that every later step runs too.
        self._rerun_rest = False

    def run(self, step: str, params: dict, work: Callable[[], dict],
            outputs: Callable[[dict], list] | None = None) -> dict:
        self.current = step
        record_path = self.directory / f"{step}.json"
        if not self._rerun_rest:
            record = read_step_record(record_path, params)
            if record is not None:
                logger.info("  %s: done earlier (%s)", step, record_path)
                return record["result"]

        self._rerun_rest = True
        logger.info("  %s: running", step)
        self.directory.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = work()
        record = {
            "step": step,
            "variant": self.variant.name,
            "params": params,
            "outputs": [str(path) for path in (outputs(result) if outputs else [])],
            "result": result,
            "seconds": round(time.perf_counter() - start, 3),
            "rsconvert_version": __version__,
        }
        _write_text(record_path, json.dumps(record, indent=2, default=str) + "\n")
        logger.info("  %s: finished in %.1f s", step, record["seconds"])
        return result


def read_step_record(path: Path, params: dict) -> dict | None:
    """Return the record at `path` if it is complete, has `params` and its outputs exist."""
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning("Ignoring the unreadable step record %s (%s); the step runs again.",
                       path, error)
        return None
    if not isinstance(record, dict) or "result" not in record:
        logger.warning("Ignoring the incomplete step record %s; the step runs again.", path)
        return None
    if record.get("params") != json.loads(json.dumps(params, default=str)):
        logger.info("  %s: parameters changed since the last run; running it again.",
                    record.get("step", path.stem))
        return None
    missing = [output for output in record.get("outputs", []) if not Path(output).exists()]
    if missing:
        logger.info("  %s: %s no longer exists; running it again.",
                    record.get("step", path.stem), ", ".join(missing))
        return None
    return record


def write_outputs(rows: Sequence[TableRow], output_dir: Path) -> TableResult:
    """Write results.csv, results.md and (with matplotlib) top1.png into `output_dir`."""
    output_dir = Path(output_dir)
    csv_path = output_dir / CSV_NAME
    markdown_path = output_dir / MARKDOWN_NAME
    _write_text(csv_path, format_csv(rows))
    _write_text(markdown_path, format_markdown(rows))
    plot_path = plot_top1(rows, output_dir / PLOT_NAME)
    logger.info("Wrote %s and %s", csv_path, markdown_path)
    return TableResult(list(rows), csv_path, markdown_path, plot_path)


def format_csv(rows: Sequence[TableRow]) -> str:
    """Format the rows as CSV with a header line of CSV_FIELDS."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row.to_csv_dict())
    return buffer.getvalue()


def format_markdown(rows: Sequence[TableRow]) -> str:
    """Format the rows as the official table plus this run's top-1, top-5 and difference."""
    lines = ["| Depth | Image size | Official Top 1 | This Top 1 | This Top 5 | Top 1 diff |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        cells = [str(row.depth), str(row.image_size), f"{row.official_top1:.1f}",
                 _percent(row.top1), _percent(row.top5), _diff_cell(row)]
        lines.append("| " + " | ".join(cells) + " |")
    # A blank line ends the Markdown table before any remark.
    remarks = []
    counts = sorted({row.images for row in rows if row.images is not None})
    if counts:
        listed = ", ".join(str(count) for count in counts)
        remarks.append(f"Top-1 and top-5 in percent, counted over {listed} evaluation images.")
    limits = sorted({row.limit for row in rows if row.limit is not None})
    if limits:
        listed = ", ".join(str(limit) for limit in limits)
        remarks.append(f"This run was limited to the first {listed} images of the data per "
                       "variant.")
    weights = sorted({row.weights for row in rows if row.top1 is not None})
    if weights:
        remarks.append(f"Weights: {', '.join(weights)}.")
    reasons = _unique(row.not_comparable_reason for row in rows)
    if reasons:
        remarks.append("Top 1 diff is left empty where the run differs from the official "
                       f"eval: {'; '.join(reasons)}.")
    if remarks:
        lines += ["", *remarks]
    notes = [f"- {row.variant}: {row.error}" for row in rows if row.error]
    if notes:
        lines += ["", "Failed:", *notes]
    return "\n".join(lines) + "\n"


def _unique(texts) -> list[str]:
    """Return the texts that are not None, first occurrences only, in order."""
    return list(dict.fromkeys(text for text in texts if text is not None))


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _diff_cell(row: TableRow) -> str:
    if row.top1 is None:
        return "n/a"
    return f"{row.top1_diff:+.2f}" if row.comparable else ""


def plot_top1(rows: Sequence[TableRow], path: Path) -> Path | None:
    """Plot this run's top-1 against the official top-1 into a PNG and return its path.

    Only comparable rows (EMA weights, all 50,000 validation images) are plotted against
    the official numbers. When no row is comparable, this run's top-1 is plotted alone with
    the reason in the title. Returns None, with a logged notice, when matplotlib (the `plot`
    extra) is missing or no row has a top-1.
    """
    points = [row for row in rows if row.top1 is not None]
    if not points:
        logger.info("Notice: no variant has a top-1 yet, so %s was not written.", path)
        return None
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("Notice: matplotlib is not installed, so the plot %s was skipped. "
                       "Install it with `pip install 'rsconvert[plot]'`.", path)
        return None

    compared = [row for row in points if row.comparable]
    if compared:
        figure = _comparison_figure(Figure, compared)
    else:
        figure = _uncompared_figure(Figure, points)
    _write_atomically(path, lambda temp: figure.savefig(temp, format="png", dpi=120))
    logger.info("Wrote %s", path)
    return Path(path)


def _comparison_figure(figure_class, points: Sequence[TableRow]):
    figure = figure_class(figsize=(11, 5), layout="constrained")
    scatter_axes, diff_axes = figure.subplots(1, 2, width_ratios=(1.2, 1))
    figure.suptitle("ResNet-RS ImageNet top-1: this conversion against the official numbers")

    official = [row.official_top1 for row in points]
    measured = [row.top1 for row in points]
    low = min(official + measured) - 0.5
    high = max(official + measured) + 0.5
    scatter_axes.plot([low, high], [low, high], color="0.6", linewidth=1,
                      label="equal to official")
    scatter_axes.scatter(official, measured, zorder=3, label="this conversion")
    for row in points:
        scatter_axes.annotate(f"{row.depth}-i{row.image_size}", (row.official_top1, row.top1),
                              textcoords="offset points", xytext=(4, -10), fontsize=8)
    scatter_axes.set_xlim(low, high)
    scatter_axes.set_ylim(low, high)
    scatter_axes.set_xlabel("Official top-1 (%)")
    scatter_axes.set_ylabel("This top-1 (%)")
    scatter_axes.legend(loc="upper left")

    # The differences are a few tenths of a percent at most, too small to read off the
    # scatter plot, so they get their own axis.
    labels = [f"{row.depth}-i{row.image_size}" for row in points]
    diffs = [row.top1_diff for row in points]
    colors = ["tab:blue" if diff >= 0 else "tab:red" for diff in diffs]
    diff_axes.barh(labels, diffs, color=colors)
    diff_axes.axvline(0, color="0.3", linewidth=1)
    diff_axes.invert_yaxis()
    diff_axes.set_xlabel("This top-1 minus official top-1 (percentage points)")
    return figure


def _uncompared_figure(figure_class, points: Sequence[TableRow]):
    counts = ", ".join(str(count) for count in sorted({row.images for row in points}))
    weights = ", ".join(sorted({row.weights for row in points}))
    reasons = "; ".join(_unique(row.not_comparable_reason for row in points))
    figure = figure_class(figsize=(7, 5), layout="constrained")
    axes = figure.subplots()
    title = f"ResNet-RS ImageNet top-1 on {counts} images, {weights} weights"
    note = textwrap.fill(f"Not compared with the official top-1: {reasons}.", width=70)
    figure.suptitle(f"{title}\n{note}", fontsize=10)
    top1 = [row.top1 for row in points]
    bars = axes.barh([f"{row.depth}-i{row.image_size}" for row in points], top1)
    axes.bar_label(bars, labels=[f"{value:.2f}" for value in top1], padding=3)
    # From 0, with room for the labels, so that a top-1 of 0 still shows its value.
    axes.set_xlim(0, max(max(top1) * 1.15, 1.0))
    axes.invert_yaxis()
    axes.set_xlabel("This top-1 (%)")
    return figure


def _write_text(path: Path, text: str) -> None:
    _write_atomically(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write` on a temporary file beside `path`, then rename it onto `path`."""
    # The temporary name keeps the suffix, because matplotlib picks the format from it.
    try:
        with atomic_output(path, overwrite=True, suffix=Path(path).suffix or ".tmp") as temp:
            write(temp)
    except OSError as error:
        raise OutputError(f"Cannot write {path}: {error}") from None


def default_steps() -> Steps:
    """Return the adapters that call the real fetch, conversion, parity and evaluation code."""
    return Steps(fetch=_fetch_step, convert=_convert_step, parity=_parity_step,
                 evaluate=_evaluate_step, check_data=_check_data_step)


def _require_data(config: TableConfig) -> Path:
    if config.data is None:
        raise RsconvertError("The eval step needs ImageNet validation data; pass --data PATH.")
    return Path(config.data)


def _check_data_step(config: TableConfig) -> None:
    from converter.eval_data import open_eval_data

    open_eval_data(_require_data(config), config.labels_file)


def _fetch_step(variant: Variant, config: TableConfig) -> dict:
    from converter.fetch import fetch_variant

    result = fetch_variant(variant, config.checkpoints_dir, base_url=config.base_url)
    return {"checkpoint": str(result.path), "downloaded": result.downloaded}


def _convert_step(variant: Variant, checkpoint: Path, output: Path, include_top: bool,
                  config: TableConfig) -> dict:
    from converter.convert import convert_checkpoint

    report = convert_checkpoint(checkpoint, output, depth=variant.depth, weights=config.weights,
                                include_top=include_top, overwrite=True,
                                image_size=variant.image_size, show_progress=False)
    return {"output": str(report.output), "num_parameters": report.num_parameters,
            "stored_dtype": report.stored_dtype, "summary": report.summary()}


def _parity_step(variant: Variant, checkpoint: Path, weights_file: Path,
                 config: TableConfig) -> dict:
    from converter.parity import run_parity_check

    report = run_parity_check(checkpoint, weights_file, depth=variant.depth,
                              image_size=variant.image_size, weights=config.weights)
    if not report.passed:
        raise ParityFailure(
            f"{weights_file.name} differs from the original graph of {checkpoint} at stage "
            f"{report.first_failing_stage} beyond the relative tolerance {report.tolerance:.1e}. "
            f"Run `rsconvert parity-check` on it for the per-stage table.")
    return {"passed": True,
            "max_rel_diff": max(stage.max_rel_diff for stage in report.stages),
            "report": report.to_dict()}


def _evaluate_step(variant: Variant, weights_file: Path, config: TableConfig) -> dict:
    from converter.evaluation import evaluate

    result = evaluate(_require_data(config), variant.image_size, weights_file=weights_file,
                      variant=variant.name, labels_file=config.labels_file,
                      batch_size=config.batch_size, limit=config.limit, weights=config.weights,
                      show_progress=False)
    return {"top1": result.top1, "top5": result.top5, "images": result.num_images,
            "row": result.row()}
