"""`rsconvert list` and `rsconvert fetch` through the command line."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from converter.cli import cli
from converter.cli.fetch import _ProgressBar
from converter.variants import VARIANTS
from test_fetch import CHECKPOINT_FILES, VARIANT, make_archive, server  # noqa: F401 - fixture


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    code = "import sys; from converter.cli import main; sys.argv[0] = 'rsconvert'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_list_table(tmp_path):
    result = CliRunner().invoke(cli, ["list", "--dest", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["Name", "Depth", "Image"]
    assert len(lines) == 1 + len(VARIANTS)
    assert lines[5].split()[:6] == ["resnet-rs-152-i224", "152", "224", "82.2", "no",
                                    VARIANTS[4].url()]


def test_list_json_downloaded(tmp_path):
    folder = tmp_path / VARIANT
    folder.mkdir()
    for name, data in CHECKPOINT_FILES.items():
        (folder / name).write_bytes(data)
    result = CliRunner().invoke(cli, ["list", "--json", "--dest", str(tmp_path),
                                      "--base-url", "http://127.0.0.1:9/mirror"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert len(rows) == 11
    assert rows[VARIANT]["downloaded"] is True
    assert rows[VARIANT]["path"] == str(folder)
    assert rows["resnet-rs-101-i160"]["downloaded"] is False
    assert rows["resnet-rs-420-i320"]["url"] == (
        "http://127.0.0.1:9/mirror/resnet-rs-420-i320.tar.gz")
    assert rows["resnet-rs-350-i320"]["official_top1"] == 84.2


def test_list_without_tensorflow():
    code = ("import sys; from converter.cli import main; sys.argv = ['rsconvert', 'list']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
            "assert 'keras' not in sys.modules, 'keras imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "resnet-rs-420-i320" in result.stdout


def test_fetch_command(server, tmp_path):  # noqa: F811 - pytest fixture
    server.script.body = make_archive(CHECKPOINT_FILES)
    args = ["fetch", VARIANT, "--dest", str(tmp_path), "--timeout", "5"]
    result = CliRunner().invoke(cli, args, env={"RSCONVERT_BASE_URL": server.base_url})
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / VARIANT)
    assert sorted(path.name for path in (tmp_path / VARIANT).iterdir()) == sorted(CHECKPOINT_FILES)
    again = CliRunner().invoke(cli, args, env={"RSCONVERT_BASE_URL": server.base_url})
    assert again.exit_code == 0
    assert len(server.script.requests) == 1


def test_fetch_unknown_variant_exit(tmp_path):
    result = run_cli("fetch", "resnet-rs-51-i160", "--dest", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("Error: Unknown variant 'resnet-rs-51-i160'")
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_fetch_bad_base_url_exit(tmp_path):
    dest = tmp_path / "dest"
    result = run_cli("fetch", VARIANT, "--dest", str(dest), "--base-url", "ftp://mirror/x")
    assert result.returncode == 2
    assert "Error: Only http and https URLs can be downloaded" in result.stderr
    assert "Traceback" not in result.stderr
    assert not dest.exists()


def test_progress_bar_restart():
    bar = _ProgressBar("file")
    bar(0, None)
    assert bar._bar is None
    bar(100, 1000)
    bar(600, 1000)
    assert bar._bar.pos == 600
    first = bar._bar
    bar(50, 1000)  # a server that ignored Range restarted the download
    assert bar._bar is not first
    assert bar._bar.pos == 50
    bar.close()
    assert bar._bar is None
