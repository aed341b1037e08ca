"""Table runner with fake steps: skipping and resuming, CSV, Markdown and plot."""

from __future__ import annotations

import csv
import dataclasses
import http.server
import io
import json
import logging
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from converter.errors import DataError, RsconvertError
from converter.table import (
    Steps, StepError, TableConfig, TableRow, default_steps, format_markdown, plot_top1,
    run_table, select_variants)
from converter.variants import get_variant

REPO = Path(__file__).resolve().parents[1]
TWO = ["resnet-rs-50-i160", "resnet-rs-152-i224"]
# Fake accuracies per variant: official top-1 plus a fixed offset.
OFFSETS = {"resnet-rs-50-i160": -0.25, "resnet-rs-152-i224": 0.1}


class FakeSteps:
    """Steps that write small files and record every call."""

    def __init__(self, root: Path, fail: dict[str, str] | None = None):
        self.root = root
        self.calls: list[tuple[str, str]] = []
        self.fail = fail or {}

    def _enter(self, step: str, variant) -> None:
        self.calls.append((step, variant.name))
        if self.fail.get(variant.name) == step:
            raise RsconvertError(f"fake {step} failure")

    def fetch(self, variant, config):
        self._enter("fetch", variant)
        folder = self.root / "checkpoints" / variant.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.ckpt.index").write_text("index")
        return {"checkpoint": str(folder)}

    def convert(self, variant, checkpoint, output, include_top, config):
        self._enter("convert" if include_top else "convert_notop", variant)
        output.write_text(f"weights of {checkpoint}")
        return {"output": str(output)}

    def parity(self, variant, checkpoint, weights_file, config):
        self._enter("parity", variant)
        return {"max_rel_diff": 1.5e-6}

    def evaluate(self, variant, weights_file, config):
        self._enter("eval", variant)
        top1 = variant.official_top1 + OFFSETS.get(variant.name, 0.0)
        return {"top1": top1, "top5": 96.5, "images": config.limit or 50_000}

    def steps(self) -> Steps:
        return Steps(fetch=self.fetch, convert=self.convert, parity=self.parity,
                     evaluate=self.evaluate)


def run(tmp_path: Path, fake: FakeSteps, names=TWO, **options):
    config = TableConfig(output_dir=tmp_path / "out", data=tmp_path / "data", **options)
    return run_table(select_variants(names), config, fake.steps())


def test_run_table_all_steps(tmp_path):
    fake = FakeSteps(tmp_path)
    result = run(tmp_path, fake)
    assert fake.calls == [(step, name) for name in TWO
                          for step in ("fetch", "convert", "convert_notop", "parity", "eval")]
    assert [row.variant for row in result.rows] == TWO
    assert result.rows[0].top1 == pytest.approx(78.55)
    assert result.rows[0].top1_diff == pytest.approx(-0.25)
    assert result.rows[1].parity_max_rel_diff == 1.5e-6
    folder = tmp_path / "out" / "resnet-rs-50-i160"
    assert (folder / "resnet-rs-50-i160.h5").exists()
    assert (folder / "resnet-rs-50-i160_notop.h5").exists()
    record = json.loads((folder / "eval.json").read_text())
    assert record["result"]["images"] == 50_000
    assert record["params"]["limit"] is None


def test_run_table_skips_done_steps(tmp_path):
    run(tmp_path, FakeSteps(tmp_path))
    fake = FakeSteps(tmp_path)
    result = run(tmp_path, fake)
    assert fake.calls == []
    assert result.rows[1].top1 == pytest.approx(82.3)


def test_run_table_reruns_missing_output(tmp_path):
    run(tmp_path, FakeSteps(tmp_path))
    (tmp_path / "out" / "resnet-rs-152-i224" / "resnet-rs-152-i224_notop.h5").unlink()
    fake = FakeSteps(tmp_path)
    run(tmp_path, fake)
    # The notop conversion and every later step of that variant run again.
    assert fake.calls == [("convert_notop", "resnet-rs-152-i224"),
                          ("parity", "resnet-rs-152-i224"), ("eval", "resnet-rs-152-i224")]


def test_run_table_reruns_changed_limit(tmp_path):
    run(tmp_path, FakeSteps(tmp_path), limit=100)
    fake = FakeSteps(tmp_path)
    result = run(tmp_path, fake, limit=200)
    assert fake.calls == [("eval", name) for name in TWO]
    assert [row.images for row in result.rows] == [200, 200]


def test_run_table_ignores_corrupt_record(tmp_path):
    run(tmp_path, FakeSteps(tmp_path))
    (tmp_path / "out" / "resnet-rs-50-i160" / "parity.json").write_text('{"step": "par')
    fake = FakeSteps(tmp_path)
    run(tmp_path, fake)
    assert fake.calls == [("parity", "resnet-rs-50-i160"), ("eval", "resnet-rs-50-i160")]


def test_run_table_resumes_after_failure(tmp_path):
    failing = FakeSteps(tmp_path, fail={"resnet-rs-50-i160": "parity"})
    with pytest.raises(StepError, match=r"1 of 2 variants failed\. resnet-rs-50-i160: parity "
                                        r"step: fake parity failure\. The rows that finished are "
                                        r"in .*results\.csv; run the same command again"):
        run(tmp_path, failing)
    # The other variant still ran to the end.
    assert ("eval", "resnet-rs-152-i224") in failing.calls
    assert ("eval", "resnet-rs-50-i160") not in failing.calls
    text = (tmp_path / "out" / "results.md").read_text()
    assert "| 50 | 160 | 78.8 | n/a | n/a | n/a |" in text
    assert "- resnet-rs-50-i160: parity step: fake parity failure" in text

    fake = FakeSteps(tmp_path)
    result = run(tmp_path, fake)
    assert fake.calls == [("parity", "resnet-rs-50-i160"), ("eval", "resnet-rs-50-i160")]
    assert result.failed == []


def test_run_table_csv(tmp_path):
    result = run(tmp_path, FakeSteps(tmp_path))
    rows = list(csv.DictReader(io.StringIO(result.csv_path.read_text())))
    assert [row["variant"] for row in rows] == TWO
    assert rows[0]["depth"] == "50"
    assert rows[0]["image_size"] == "160"
    assert rows[0]["weights"] == "ema"
    assert float(rows[0]["official_top1"]) == 78.8
    assert rows[0]["top1"] == "78.55"
    assert rows[0]["top1_diff"] == "-0.25"
    assert rows[0]["images"] == "50000"
    assert rows[0]["limit"] == ""
    assert rows[0]["error"] == ""


def test_limited_run_csv_no_diff(tmp_path):
    result = run(tmp_path, FakeSteps(tmp_path), limit=64)
    rows = list(csv.DictReader(io.StringIO(result.csv_path.read_text())))
    assert result.rows[0].top1_diff is None
    assert float(rows[0]["top1"]) == pytest.approx(78.55)
    assert rows[0]["top1_diff"] == ""
    assert rows[0]["images"] == "64"
    assert rows[0]["limit"] == "64"


def test_limited_run_markdown(tmp_path):
    result = run(tmp_path, FakeSteps(tmp_path), limit=64)
    lines = result.markdown_path.read_text().splitlines()
    assert lines[2] == "| 50 | 160 | 78.8 | 78.55 | 96.50 |  |"
    assert lines[3] == "| 152 | 224 | 82.2 | 82.30 | 96.50 |  |"
    assert lines[4] == ""
    assert "counted over 64 evaluation images" in lines[5]
    assert lines[6] == "This run was limited to the first 64 images of the data per variant."
    assert lines[7] == "Weights: ema."
    assert lines[8] == ("Top 1 diff is left empty where the run differs from the official eval: "
                        "64 images were evaluated, not all 50,000 ILSVRC2012 validation images.")


def test_small_data_not_compared(tmp_path):
    class SmallData(FakeSteps):
        def evaluate(self, variant, weights_file, config):
            return {**super().evaluate(variant, weights_file, config), "images": 24}

    result = run(tmp_path, SmallData(tmp_path))
    lines = result.markdown_path.read_text().splitlines()
    assert result.rows[0].top1_diff is None
    assert not result.rows[0].comparable
    assert lines[2] == "| 50 | 160 | 78.8 | 78.55 | 96.50 |  |"
    assert "counted over 24 evaluation images" in lines[5]
    assert lines[6] == "Weights: ema."
    assert lines[7].startswith("Top 1 diff is left empty where the run differs from the "
                               "official eval: 24 images were evaluated, not all 50,000")


def test_raw_weights_not_compared(tmp_path):
    result = run(tmp_path, FakeSteps(tmp_path), weights="raw")
    rows = list(csv.DictReader(io.StringIO(result.csv_path.read_text())))
    assert rows[0]["weights"] == "raw"
    assert rows[0]["images"] == "50000"
    assert rows[0]["top1_diff"] == ""
    assert not result.rows[0].comparable
    text = result.markdown_path.read_text()
    assert "| 50 | 160 | 78.8 | 78.55 | 96.50 |  |" in text
    assert "Weights: raw." in text
    assert ("differs from the official eval: the weights are raw, and the official top-1 used "
            "the EMA weights.") in text


def test_csv_percentages_rounded(tmp_path):
    class ThirdCorrect(FakeSteps):
        def evaluate(self, variant, weights_file, config):
            return {"top1": 100 / 3, "top5": 200 / 3, "images": 24}

    result = run(tmp_path, ThirdCorrect(tmp_path))
    rows = list(csv.DictReader(io.StringIO(result.csv_path.read_text())))
    assert rows[0]["top1"] == "33.3333"
    assert rows[0]["top5"] == "66.6667"


def test_all_failed_markdown_and_error(tmp_path):
    failing = FakeSteps(tmp_path, fail={"resnet-rs-50-i160": "fetch",
                                        "resnet-rs-152-i224": "fetch"})
    with pytest.raises(StepError, match=r"2 of 2 variants failed\..* The errors are also in"):
        run(tmp_path, failing, limit=8)
    lines = (tmp_path / "out" / "results.md").read_text().splitlines()
    assert lines[3].startswith("| 152 |")
    assert lines[4] == ""
    assert lines[5].startswith("This run was limited to the first 8 images")


def test_data_checked_before_first_step(tmp_path):
    fake = FakeSteps(tmp_path)

    def reject(config):
        raise DataError(f"{config.data} has no images")

    config = TableConfig(output_dir=tmp_path / "out", data=tmp_path / "data")
    with pytest.raises(DataError, match="has no images"):
        run_table(select_variants(TWO), config,
                  dataclasses.replace(fake.steps(), check_data=reject))
    assert fake.calls == []
    assert not (tmp_path / "out").exists()


def test_default_data_check_needs_labels(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"x")
    config = TableConfig(output_dir=tmp_path / "out", data=flat)
    with pytest.raises(DataError, match="--labels"):
        default_steps().check_data(config)


def test_run_table_markdown(tmp_path):
    result = run(tmp_path, FakeSteps(tmp_path))
    lines = result.markdown_path.read_text().splitlines()
    assert lines[0] == ("| Depth | Image size | Official Top 1 | This Top 1 | This Top 5 "
                        "| Top 1 diff |")
    assert lines[2] == "| 50 | 160 | 78.8 | 78.55 | 96.50 | -0.25 |"
    assert lines[3] == "| 152 | 224 | 82.2 | 82.30 | 96.50 | +0.10 |"
    assert "counted over 50000 evaluation images" in lines[5]


def test_run_table_no_variants(tmp_path):
    with pytest.raises(RsconvertError, match="No variant selected"):
        run(tmp_path, FakeSteps(tmp_path), names=["", " "])


def test_select_variants_order():
    selected = select_variants(["resnet-rs-420-i320", "resnet-rs-50-i160"])
    assert [variant.name for variant in selected] == ["resnet-rs-50-i160", "resnet-rs-420-i320"]
    assert len(select_variants(None)) == 11


def test_select_variants_unknown():
    with pytest.raises(RsconvertError, match=r"Unknown variant 'resnet-rs-50'"):
        select_variants(["resnet-rs-50"])


def test_plot_written(tmp_path):
    pytest.importorskip("matplotlib")
    result = run(tmp_path, FakeSteps(tmp_path))
    assert result.plot_path == tmp_path / "out" / "top1.png"
    assert result.plot_path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_plot_limited_run(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import converter.table

    def no_comparison(*args):
        raise AssertionError("a limited run was plotted against the official top-1")

    monkeypatch.setattr(converter.table, "_comparison_figure", no_comparison)
    row = TableRow("resnet-rs-50-i160", 50, 160, 78.8, top1=12.5, top5=40.0, images=8,
                   limit=8)
    path = plot_top1([row], tmp_path / "top1.png")
    assert path == tmp_path / "top1.png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_plot_without_matplotlib(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    row = TableRow("resnet-rs-50-i160", 50, 160, 78.8, top1=78.0, top5=94.0, images=10)
    with caplog.at_level(logging.INFO, logger="converter.table"):
        assert plot_top1([row], tmp_path / "top1.png") is None
    assert "matplotlib is not installed" in caplog.text
    assert not (tmp_path / "top1.png").exists()


def test_plot_without_results(tmp_path):
    row = TableRow("resnet-rs-50-i160", 50, 160, 78.8, error="fetch step: failed")
    assert plot_top1([row], tmp_path / "top1.png") is None
    assert not (tmp_path / "top1.png").exists()


def test_markdown_image_counts():
    rows = [TableRow("a", 50, 160, 78.8, top1=78.0, top5=94.0, images=10),
            TableRow("b", 101, 160, 80.3, top1=80.0, top5=95.0, images=12)]
    assert "counted over 10, 12 evaluation images" in format_markdown(rows)


def test_table_command(tmp_path, monkeypatch):
    from converter.cli import cli
    import converter.table

    fake = FakeSteps(tmp_path)
    monkeypatch.setattr(converter.table, "default_steps", fake.steps)
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(cli, [
        "table", "--data", str(tmp_path / "data"), "--variants", "resnet-rs-152-i224",
        "--limit", "32", "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "| 152 | 224 | 82.2 | 82.30 | 96.50 |  |" in result.output
    assert "limited to the first 32 images" in result.output
    assert fake.calls[-1] == ("eval", "resnet-rs-152-i224")


def test_table_command_failed_variant(tmp_path, monkeypatch):
    from converter.cli import cli
    import converter.table

    fake = FakeSteps(tmp_path, fail={"resnet-rs-152-i224": "fetch"})
    monkeypatch.setattr(converter.table, "default_steps", fake.steps)
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(cli, [
        "table", "--data", str(tmp_path / "data"), "--variants", ",".join(TWO),
        "--limit", "32", "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "| 50 | 160 | 78.8 | 78.55 | 96.50 |  |" in result.stdout
    assert "| 152 | 224 | 82.2 | n/a | n/a | n/a |" in result.stdout
    assert result.stderr.startswith("Error: 1 of 2 variants failed. resnet-rs-152-i224: fetch "
                                    "step: fake fetch failure.")


@pytest.mark.parametrize("option", ["--labels", "--labels-file"])
def test_table_command_labels(tmp_path, monkeypatch, option):
    from converter.cli import cli
    import converter.table

    fake = FakeSteps(tmp_path)
    monkeypatch.setattr(converter.table, "default_steps", fake.steps)
    (tmp_path / "data").mkdir()
    labels = tmp_path / "labels.txt"
    labels.write_text("n01440764\n")
    result = CliRunner().invoke(cli, [
        "table", "--data", str(tmp_path / "data"), option, str(labels), "--variants",
        "resnet-rs-50-i160", "--output-dir", str(tmp_path / "out")])
    record = json.loads((tmp_path / "out" / "resnet-rs-50-i160" / "eval.json").read_text())
    assert result.exit_code == 0, result.output
    assert record["params"]["labels_file"] == str(labels)


def test_table_help_options():
    from converter.cli import cli

    result = CliRunner().invoke(cli, ["table", "--help"])
    assert result.exit_code == 0, result.output
    assert "--labels, --labels-file FILE" in result.output
    assert 'default: ""' not in result.output


def test_reproduce_script_help():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce_table.py"),
                             "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--variants" in result.stdout
    assert "--limit" in result.stdout


def test_reproduce_script_bad_variant(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce_table.py"),
                             "--data", str(tmp_path), "--variants", "resnet-rs-7-i1",
                             "--output-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: Unknown variant 'resnet-rs-7-i1'")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_run_table_golden_end_to_end(tmp_path, monkeypatch):
    """Real fetch (from 127.0.0.1), conversion, parity and eval on the golden RS-50 data."""
    from conftest import GOLDEN_DIR, require_reference
    from test_fetch import Handler, Script, clear_proxies

    require_reference(GOLDEN_DIR)
    archive = tmp_path / "golden.tar.gz"
    with tarfile.open(GOLDEN_DIR / "model.ckpt.tar.xz") as source, \
            tarfile.open(archive, "w:gz", compresslevel=1) as target:
        for member in source:
            target.addfile(member, source.extractfile(member) if member.isreg() else None)

    clear_proxies(monkeypatch)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.script = Script(body=archive.read_bytes())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        config = TableConfig(output_dir=tmp_path / "out", data=GOLDEN_DIR / "validation",
                             checkpoints_dir=tmp_path / "checkpoints", batch_size=10,
                             base_url=f"http://127.0.0.1:{httpd.server_address[1]}/")
        result = run_table([get_variant("resnet-rs-50-i160")], config)
    finally:
        httpd.shutdown()
        httpd.server_close()

    row = result.rows[0]
    assert row.error is None
    # The original eval pipeline counts 8 of 24 top-1 and 16 of 24 top-5 on this data.
    assert row.images == 24
    assert row.top1 == pytest.approx(100 * 8 / 24)
    assert row.top5 == pytest.approx(100 * 16 / 24)
    assert row.parity_max_rel_diff < 1e-4
    assert (tmp_path / "out" / "resnet-rs-50-i160" / "resnet-rs-50-i160_notop.h5").exists()
    assert len(httpd.script.requests) == 1
