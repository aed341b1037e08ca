"""Download and unpacking tests against an HTTP server on 127.0.0.1 only."""

from __future__ import annotations

import dataclasses
import errno
import http.server
import io
import logging
import random
import re
import socket
import tarfile
import threading
from pathlib import Path

import pytest

from converter.errors import CheckpointError, OutputError, RsconvertError
from converter.archive import (
    UnsafeArchiveError, checkpoint_prefixes, extract_checkpoint, is_checkpoint_dir)
from converter.catalog import catalog_entries
from converter.fetch import DownloadError, LogProgress, download, fetch_variant
from converter.variants import get_variant

VARIANT = "resnet-rs-50-i160"
CHECKPOINT_FILES = {
    "model.ckpt-100.index": b"index bytes " * 50,
    # Random bytes do not compress, so the archive is larger than the drop-after offsets.
    "model.ckpt-100.data-00000-of-00001": random.Random(0).randbytes(20_000),
    "checkpoint": b'model_checkpoint_path: "model.ckpt-100"\n',
}
# Keeps failing tests fast: no backoff sleeps, short socket timeouts.
FAST = {"backoff_s": 0.0, "timeout_s": 5.0}


def make_archive(members: dict[str, bytes], folder: str = "resnet-rs-50-i160",
                 extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        if folder:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}" if folder else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buffer.getvalue()


@dataclasses.dataclass
class Script:
    """What the test server does; each list is consumed one request at a time."""

    body: bytes = b""
    statuses: list[int] = dataclasses.field(default_factory=list)
    drop_after: list[int] = dataclasses.field(default_factory=list)
    ignore_range: bool = False
    announced_length: int | None = None
    # Overrides the total in the Content-Range of every 206 response.
    range_total: int | None = None
    requests: list[str | None] = dataclasses.field(default_factory=list)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    script: Script

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        pass

    def do_GET(self):  # noqa: N802 - BaseHTTPRequestHandler's naming
        script = self.server.script
        script.requests.append(self.headers.get("Range"))
        if script.statuses:
            self.send_error(script.statuses.pop(0))
            return
        body = script.body
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not script.ignore_range:
            start = int(match[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            total = len(body) if script.range_total is None else script.range_total
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{total}")
        else:
            self.send_response(200)
        payload = body[start:]
        length = script.announced_length if script.announced_length is not None else len(payload)
        if length >= 0:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if script.drop_after:
            payload = payload[: script.drop_after.pop(0)]
        self.wfile.write(payload)


def clear_proxies(monkeypatch) -> None:
    """Make urllib connect to 127.0.0.1 directly, whatever proxy the environment sets."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "RSCONVERT_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(monkeypatch):
    clear_proxies(monkeypatch)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.script = Script()
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def archive_url(server) -> str:
    return server.base_url + get_variant(VARIANT).archive_name


def leftovers(dest: Path) -> list[str]:
    return sorted(path.name for path in dest.iterdir()) if dest.exists() else []


def test_fetch_complete_download(server, tmp_path):
    server.script.body = make_archive(CHECKPOINT_FILES)
    result = fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    assert result.downloaded
    assert result.path == tmp_path / VARIANT
    for name, data in CHECKPOINT_FILES.items():
        assert (result.path / name).read_bytes() == data
    assert leftovers(tmp_path) == [VARIANT]
    assert server.script.requests == [None]


def test_fetch_discards_foreign_part(server, tmp_path, caplog):
    body = make_archive(CHECKPOINT_FILES)
    server.script.body = body
    (tmp_path / f"{VARIANT}.tar.gz.part").write_bytes(b"<html>not an archive</html>")
    with caplog.at_level(logging.WARNING, logger="converter.fetch"):
        result = fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    assert result.downloaded
    assert server.script.requests == [None]
    assert "does not start like a .tar.gz archive" in caplog.text
    assert leftovers(tmp_path) == [VARIANT]


def test_fetch_resumes_archive_part(server, tmp_path):
    body = make_archive(CHECKPOINT_FILES)
    server.script.body = body
    (tmp_path / f"{VARIANT}.tar.gz.part").write_bytes(body[:100])
    result = fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    assert result.downloaded
    assert server.script.requests == ["bytes=100-"]


def test_fetch_flat_archive(server, tmp_path):
    server.script.body = make_archive(CHECKPOINT_FILES, folder="")
    result = fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    assert sorted(path.name for path in result.path.iterdir()) == sorted(CHECKPOINT_FILES)


def test_fetch_deeply_nested_archive(server, tmp_path):
    server.script.body = make_archive(CHECKPOINT_FILES, folder="gs/bucket/resnet-rs/run1")
    result = fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    assert sorted(path.name for path in result.path.iterdir()) == sorted(CHECKPOINT_FILES)
    assert leftovers(tmp_path) == [VARIANT]


def test_fetch_already_present(server, tmp_path):
    server.script.body = make_archive(CHECKPOINT_FILES)
    fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    again = fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    assert not again.downloaded
    assert len(server.script.requests) == 1


def test_fetch_force_replaces(server, tmp_path):
    server.script.body = make_archive(CHECKPOINT_FILES)
    fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    (tmp_path / VARIANT / "stale.txt").write_text("old")
    result = fetch_variant(VARIANT, tmp_path, base_url=server.base_url, force=True, **FAST)
    assert result.downloaded
    assert not (result.path / "stale.txt").exists()
    assert len(server.script.requests) == 2
    assert leftovers(tmp_path) == [VARIANT]


def test_fetch_incomplete_target_rejected(server, tmp_path):
    (tmp_path / VARIANT).mkdir()
    with pytest.raises(OutputError, match="contains no complete checkpoint.*--force"):
        fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    assert server.script.requests == []


def test_fetch_keep_archive(server, tmp_path):
    server.script.body = make_archive(CHECKPOINT_FILES)
    fetch_variant(VARIANT, tmp_path, base_url=server.base_url, keep_archive=True, **FAST)
    assert (tmp_path / f"{VARIANT}.tar.gz").read_bytes() == server.script.body


def test_fetch_uses_local_archive(server, tmp_path):
    (tmp_path / f"{VARIANT}.tar.gz").write_bytes(make_archive(CHECKPOINT_FILES))
    result = fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    assert is_checkpoint_dir(result.path)
    assert server.script.requests == []
    # An archive the user provided is kept.
    assert (tmp_path / f"{VARIANT}.tar.gz").exists()


def test_download_resumes_dropped_connection(server, tmp_path):
    body = make_archive(CHECKPOINT_FILES)
    server.script.body = body
    server.script.drop_after = [1000]
    result = fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    assert (result.path / "model.ckpt-100.index").read_bytes() == CHECKPOINT_FILES[
        "model.ckpt-100.index"]
    assert server.script.requests == [None, "bytes=1000-"]


def test_download_resumes_part_from_earlier_run(server, tmp_path):
    body = bytes(range(256)) * 20
    server.script.body = body
    target = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(body[:700])
    size = download(archive_url(server), target, **FAST)
    assert size == len(body)
    assert target.read_bytes() == body
    assert server.script.requests == ["bytes=700-"]
    assert not (tmp_path / "file.bin.part").exists()


def test_download_range_ignored_restarts(server, tmp_path):
    body = bytes(range(256)) * 20
    server.script.body = body
    server.script.ignore_range = True
    target = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"\xff" * 300)
    download(archive_url(server), target, **FAST)
    assert target.read_bytes() == body


def test_download_drop_then_range_ignored(server, tmp_path):
    body = bytes(range(256)) * 20
    server.script.body = body
    server.script.ignore_range = True
    server.script.drop_after = [500]
    target = tmp_path / "file.bin"
    download(archive_url(server), target, **FAST)
    assert target.read_bytes() == body
    assert server.script.requests == [None, "bytes=500-"]


def test_download_part_already_complete(server, tmp_path):
    body = b"x" * 1000
    server.script.body = body
    target = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(body)
    assert download(archive_url(server), target, **FAST) == 1000
    assert target.read_bytes() == body


def test_download_retries_503(server, tmp_path):
    server.script.body = make_archive(CHECKPOINT_FILES)
    server.script.statuses = [503, 500]
    result = fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    assert is_checkpoint_dir(result.path)
    assert len(server.script.requests) == 3


def test_download_retries_exhausted(server, tmp_path):
    server.script.body = b"x" * 100
    server.script.statuses = [503] * 10
    with pytest.raises(DownloadError, match=r"failed after 2 retries: HTTP 503"):
        download(archive_url(server), tmp_path / "file.bin", retries=2, **FAST)
    assert len(server.script.requests) == 3
    assert not (tmp_path / "file.bin").exists()


def test_download_404_not_retried(server, tmp_path):
    server.script.statuses = [404]
    with pytest.raises(DownloadError, match=r"HTTP 404 .*--base-url"):
        fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    assert len(server.script.requests) == 1
    assert leftovers(tmp_path) == []


def test_download_short_body_keeps_part(server, tmp_path):
    server.script.body = b"x" * 1000
    server.script.announced_length = 1500
    server.script.ignore_range = True
    with pytest.raises(DownloadError, match=r"closed after 1000 of 1500 bytes"):
        download(archive_url(server), tmp_path / "file.bin", retries=2, **FAST)
    assert (tmp_path / "file.bin.part").stat().st_size == 1000
    assert not (tmp_path / "file.bin").exists()


def test_download_short_body_then_416(server, tmp_path):
    server.script.body = b"x" * 1000
    server.script.announced_length = 1500
    with pytest.raises(DownloadError, match=r"changed from 1500 to 1000 bytes"):
        download(archive_url(server), tmp_path / "file.bin", **FAST)
    assert server.script.requests == [None, "bytes=1000-"]
    assert leftovers(tmp_path) == []


def test_download_total_changed(server, tmp_path):
    server.script.body = b"x" * 1000
    server.script.drop_after = [400]
    server.script.range_total = 2000
    with pytest.raises(DownloadError, match=r"changed from 1000 to 2000 bytes"):
        download(archive_url(server), tmp_path / "file.bin", **FAST)
    assert leftovers(tmp_path) == []


def test_download_more_than_announced(server, tmp_path):
    # No Content-Length: the body runs until the server closes the connection.
    server.script.body = b"x" * 1000
    server.script.announced_length = -1
    server.script.range_total = 600
    (tmp_path / "file.bin.part").write_bytes(b"x" * 100)
    with pytest.raises(DownloadError, match=r"received 1000 bytes but the server announced 600"):
        download(archive_url(server), tmp_path / "file.bin", **FAST)
    assert leftovers(tmp_path) == []


def test_download_unknown_length(server, tmp_path):
    server.script.body = b"y" * 3000
    server.script.announced_length = -1
    assert download(archive_url(server), tmp_path / "file.bin", **FAST) == 3000


def test_download_timeout_retried(tmp_path, monkeypatch):
    clear_proxies(monkeypatch)
    # A listening socket on 127.0.0.1 that accepts the connection but never responds.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/file.bin"
    try:
        with pytest.raises(DownloadError, match=r"failed after 1 retry: .*timed out"):
            download(url, tmp_path / "file.bin", retries=1, backoff_s=0.0, timeout_s=0.2)
    finally:
        silent.close()


def closed_port() -> int:
    """Return a port on 127.0.0.1 with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_download_connection_refused(tmp_path, monkeypatch):
    clear_proxies(monkeypatch)
    url = f"http://127.0.0.1:{closed_port()}/file.bin"
    with pytest.raises(DownloadError) as raised:
        download(url, tmp_path / "file.bin", retries=1, **FAST)
    message = str(raised.value)
    assert message.startswith(f"Connection to {url} failed after 1 retry: ")
    assert "Connection refused" in message
    assert "resume" not in message
    assert ".part" not in message
    assert leftovers(tmp_path) == []


def test_download_503_without_data(server, tmp_path):
    server.script.statuses = [503] * 10
    (tmp_path / "file.bin.part").write_bytes(b"")
    with pytest.raises(DownloadError) as raised:
        download(archive_url(server), tmp_path / "file.bin", retries=0, **FAST)
    message = str(raised.value)
    assert "failed after 0 retries: HTTP 503" in message
    assert "No data was received" in message
    assert "resume" not in message
    assert leftovers(tmp_path) == []


def test_fetch_refused_removes_new_dest(tmp_path, monkeypatch):
    clear_proxies(monkeypatch)
    dest = tmp_path / "new" / "checkpoints"
    with pytest.raises(DownloadError, match=r"^Connection to http://127\.0\.0\.1:\d+/"
                                            r"resnet-rs-50-i160\.tar\.gz failed"):
        fetch_variant(VARIANT, dest, base_url=f"http://127.0.0.1:{closed_port()}/",
                      retries=1, **FAST)
    assert leftovers(tmp_path) == []


def test_fetch_refused_keeps_existing_dest(tmp_path, monkeypatch):
    clear_proxies(monkeypatch)
    with pytest.raises(DownloadError, match="Connection to"):
        fetch_variant(VARIANT, tmp_path, base_url=f"http://127.0.0.1:{closed_port()}/",
                      retries=0, **FAST)
    assert tmp_path.is_dir()
    assert leftovers(tmp_path) == []


def test_fetch_short_body_keeps_new_dest(server, tmp_path):
    server.script.body = b"x" * 1000
    server.script.announced_length = 1500
    server.script.ignore_range = True
    dest = tmp_path / "new"
    with pytest.raises(DownloadError, match=r"Run the command again to resume from 1000 bytes"):
        fetch_variant(VARIANT, dest, base_url=server.base_url, retries=1, **FAST)
    assert leftovers(dest) == [f"{VARIANT}.tar.gz.part"]


def test_fetch_interrupted_says_resume(server, tmp_path, caplog):
    server.script.body = b"x" * 5000

    def interrupt_after_data(done, total):
        if done:
            raise KeyboardInterrupt

    dest = tmp_path / "new"
    with caplog.at_level(logging.WARNING, logger="converter.fetch"):
        with pytest.raises(KeyboardInterrupt):
            fetch_variant(VARIANT, dest, base_url=server.base_url,
                          progress=interrupt_after_data, **FAST)
    assert leftovers(dest) == [f"{VARIANT}.tar.gz.part"]
    assert re.search(r"Stopped with 5,000 bytes of .*\.tar\.gz in .*\.part; run the same "
                     r"command again to resume", caplog.text)


def test_fetch_interrupted_before_data(server, tmp_path, caplog):
    server.script.body = b"x" * 5000

    def interrupt(done, total):
        raise KeyboardInterrupt

    dest = tmp_path / "new"
    with caplog.at_level(logging.WARNING, logger="converter.fetch"):
        with pytest.raises(KeyboardInterrupt):
            fetch_variant(VARIANT, dest, base_url=server.base_url, progress=interrupt, **FAST)
    assert not dest.exists()
    assert "resume" not in caplog.text


def test_download_rejects_non_http_url(tmp_path):
    with pytest.raises(DownloadError, match=r"Only http and https.*'file:///etc/passwd'"):
        download("file:///etc/passwd", tmp_path / "file.bin")


def test_fetch_unknown_variant(tmp_path):
    with pytest.raises(RsconvertError, match=r"Unknown variant 'resnet-rs-51-i160'"):
        fetch_variant("resnet-rs-51-i160", tmp_path)


def test_fetch_env_base_url(server, tmp_path, monkeypatch):
    server.script.body = make_archive(CHECKPOINT_FILES)
    monkeypatch.setenv("RSCONVERT_BASE_URL", server.base_url)
    result = fetch_variant(VARIANT, tmp_path, **FAST)
    assert result.downloaded


def file_member(name: str, data: bytes = b"data") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def write_raw_archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def checkpoint_members(folder: str = "ckpt") -> list[tuple[tarfile.TarInfo, bytes]]:
    return [file_member(f"{folder}/{name}", data) for name, data in CHECKPOINT_FILES.items()]


def test_fetch_dotdot_member_rejected(server, tmp_path):
    archive = write_raw_archive(tmp_path / "evil.tar.gz",
                                checkpoint_members() + [file_member("ckpt/../../escaped.txt")])
    server.script.body = archive.read_bytes()
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=r"'ckpt/\.\./\.\./escaped\.txt'"):
        fetch_variant(VARIANT, dest, base_url=server.base_url, **FAST)
    assert leftovers(dest) == []
    assert not (tmp_path / "escaped.txt").exists()


def test_extract_absolute_member_rejected(tmp_path):
    archive = write_raw_archive(tmp_path / "evil.tar.gz",
                                checkpoint_members() + [file_member("/tmp/absolute.txt")])
    with pytest.raises(UnsafeArchiveError, match=r"absolute path, '/tmp/absolute\.txt'"):
        extract_checkpoint(archive, tmp_path / "out" / VARIANT)
    assert leftovers(tmp_path / "out") == []


def test_fetch_symlink_member_rejected(server, tmp_path):
    link = tarfile.TarInfo("ckpt/model.ckpt-100.index")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    members = [m for m in checkpoint_members() if not m[0].name.endswith(".index")]
    archive = write_raw_archive(tmp_path / "evil.tar.gz", members + [(link, None)])
    server.script.body = archive.read_bytes()
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=r"symbolic link, 'ckpt/model.*-> '/etc/passwd'"):
        fetch_variant(VARIANT, dest, base_url=server.base_url, **FAST)
    assert leftovers(dest) == []


def test_extract_hardlink_member_rejected(tmp_path):
    link = tarfile.TarInfo("ckpt/link")
    link.type = tarfile.LNKTYPE
    link.linkname = "ckpt/checkpoint"
    archive = write_raw_archive(tmp_path / "evil.tar.gz", checkpoint_members() + [(link, None)])
    with pytest.raises(UnsafeArchiveError, match=r"hard link, 'ckpt/link'"):
        extract_checkpoint(archive, tmp_path / "out" / VARIANT)
    assert leftovers(tmp_path / "out") == []


def test_extract_device_member_rejected(tmp_path):
    device = tarfile.TarInfo("ckpt/null")
    device.type = tarfile.CHRTYPE
    archive = write_raw_archive(tmp_path / "evil.tar.gz", checkpoint_members() + [(device, None)])
    with pytest.raises(UnsafeArchiveError, match=r"neither a file nor a folder"):
        extract_checkpoint(archive, tmp_path / "out" / VARIANT)


def test_extract_without_checkpoint(tmp_path):
    archive = write_raw_archive(tmp_path / "a.tar.gz", [file_member("ckpt/readme.txt")])
    with pytest.raises(CheckpointError, match=r"contains no complete TensorFlow checkpoint"):
        extract_checkpoint(archive, tmp_path / "out" / VARIANT)
    assert leftovers(tmp_path / "out") == []


def test_extract_missing_shard(tmp_path):
    members = checkpoint_members() + [
        file_member("ckpt/b.index"), file_member("ckpt/b.data-00001-of-00002")]
    archive = write_raw_archive(tmp_path / "a.tar.gz", members)
    target = extract_checkpoint(archive, tmp_path / "out" / VARIANT)
    assert [prefix.name for prefix in checkpoint_prefixes(target)] == ["model.ckpt-100"]


def test_extract_two_checkpoint_folders(tmp_path):
    archive = write_raw_archive(tmp_path / "a.tar.gz",
                                checkpoint_members("one") + checkpoint_members("two"))
    with pytest.raises(CheckpointError, match=r"several folders \(one, two\)"):
        extract_checkpoint(archive, tmp_path / "out" / VARIANT)


def test_extract_existing_target(tmp_path):
    archive = write_raw_archive(tmp_path / "a.tar.gz", checkpoint_members())
    (tmp_path / "out" / VARIANT).mkdir(parents=True)
    with pytest.raises(OutputError, match=r"already exists.*--force"):
        extract_checkpoint(archive, tmp_path / "out" / VARIANT)


def test_fetch_corrupt_archive(server, tmp_path):
    body = bytearray(make_archive(CHECKPOINT_FILES))
    body[-8:-4] = bytes(4)  # the gzip CRC32 of the uncompressed data
    server.script.body = bytes(body)
    dest = tmp_path / "dest"
    with pytest.raises(CheckpointError, match=r"not a readable \.tar\.gz archive \(CRC check"):
        fetch_variant(VARIANT, dest, base_url=server.base_url, **FAST)
    assert leftovers(dest) == []


def test_fetch_truncated_archive(server, tmp_path):
    server.script.body = make_archive(CHECKPOINT_FILES)[:300]
    dest = tmp_path / "dest"
    with pytest.raises(CheckpointError, match=r"not a readable .*downloaded archive was deleted"):
        fetch_variant(VARIANT, dest, base_url=server.base_url, **FAST)
    assert leftovers(dest) == []


def test_fetch_bad_local_archive_kept(tmp_path):
    archive = tmp_path / f"{VARIANT}.tar.gz"
    archive.write_bytes(b"not a tar file")
    with pytest.raises(CheckpointError, match=r"not a readable .*Replace or delete"):
        fetch_variant(VARIANT, tmp_path)
    assert leftovers(tmp_path) == [archive.name]


def raise_disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_fetch_too_little_space(server, tmp_path, monkeypatch):
    body = make_archive(CHECKPOINT_FILES)
    server.script.body = body
    monkeypatch.setattr("converter.output_files.free_bytes", lambda directory: 100)
    with pytest.raises(OutputError, match=rf"Not enough free space in {re.escape(str(tmp_path))} "
                                          r"for the .* KiB left to download of .*: it needs "
                                          r"about .* KiB and 100 bytes is free"):
        fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    monkeypatch.undo()
    clear_proxies(monkeypatch)
    assert fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST).downloaded
    assert leftovers(tmp_path) == [VARIANT]


def test_fetch_disk_full_keeps_part(server, tmp_path, monkeypatch):
    body = make_archive(CHECKPOINT_FILES)
    server.script.body = body
    part = tmp_path / f"{VARIANT}.tar.gz.part"
    part.write_bytes(body[:100])
    monkeypatch.setattr("converter.fetch._write_all", raise_disk_full)
    with pytest.raises(OutputError, match=r"No space left on device after 100 bytes\. Free some "
                                          r"space and run the same command again to resume"):
        fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    assert part.read_bytes() == body[:100]
    monkeypatch.undo()
    clear_proxies(monkeypatch)
    assert fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST).downloaded
    assert server.script.requests == ["bytes=100-", "bytes=100-"]


def test_fetch_disk_full_while_unpacking(server, tmp_path, monkeypatch, caplog):
    server.script.body = make_archive(CHECKPOINT_FILES)
    monkeypatch.setattr("converter.archive.shutil.copyfileobj", raise_disk_full)
    with pytest.raises(OutputError, match=r"Failed to write .*: No space left on device .* The "
                                          r"archive stays at .*without downloading"):
        fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    archive_name = get_variant(VARIANT).archive_name
    assert leftovers(tmp_path) == [archive_name]
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="converter.fetch"):
        result = fetch_variant(VARIANT, tmp_path)
    assert leftovers(result.path) == sorted(CHECKPOINT_FILES)
    assert leftovers(tmp_path) == sorted([archive_name, VARIANT])
    assert f"Kept {tmp_path / archive_name} (" in caplog.text


def test_catalog_entries_downloaded(server, tmp_path):
    server.script.body = make_archive(CHECKPOINT_FILES)
    fetch_variant(VARIANT, tmp_path, base_url=server.base_url, **FAST)
    entries = {entry.name: entry for entry in catalog_entries(tmp_path, "https://mirror/x/")}
    assert len(entries) == 11
    assert entries[VARIANT].downloaded
    assert not entries["resnet-rs-420-i320"].downloaded
    assert entries[VARIANT].url == "https://mirror/x/resnet-rs-50-i160.tar.gz"


def test_log_progress_interval(caplog):
    times = iter([0.0, 1.0, 11.0, 12.0, 13.0])
    progress = LogProgress("file", interval_s=10.0, clock=lambda: next(times))
    with caplog.at_level(logging.INFO, logger="converter.fetch"):
        for done in (0, 100, 200, 300):
            progress(done << 20, 1000 << 20)
        progress(1000 << 20, 1000 << 20)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["file: 200.0 of 1000.0 MiB (20%)", "file: 1000.0 of 1000.0 MiB (100%)"]
