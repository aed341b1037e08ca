"""Download an official ResNet-RS checkpoint archive and unpack it.

`fetch_variant` downloads `NAME.tar.gz` over HTTP(S) with urllib into `NAME.tar.gz.part`,
resuming with a Range request after an interruption and retrying transient failures with
exponential backoff. It then unpacks the archive with `converter.archive.extract_checkpoint`,
which stages it in a temporary directory beside the target and renames the checkpoint
directory into place, so `DEST/NAME/` is either a complete checkpoint or absent.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import Callable, Iterable

from converter import __version__
from converter.archive import extract_checkpoint, is_checkpoint_dir
from converter.errors import CheckpointError, OutputError, RsconvertError
from converter.output_files import NO_SPACE_ERRNOS, check_free_space, format_size
from converter.variants import Variant, checkpoints_root, get_variant

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
DEFAULT_RETRIES = 5
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_BACKOFF_S = 2.0
MAX_BACKOFF_S = 60.0
LOG_INTERVAL_S = 10.0
PART_SUFFIX = ".part"
GZIP_MAGIC = b"\x1f\x8b"
# 4xx statuses worth retrying (408 Request Timeout, 425 Too Early, 429 Too Many Requests).
# Every 5xx status is retried too.
TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429})

_CONTENT_RANGE = re.compile(r"^bytes (?P<start>\d+)-(?P<end>\d+)/(?P<total>\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(?P<total>\d+)$")

# Called after each chunk with the bytes on disk so far and the total size, when known.
ProgressCallback = Callable[[int, "int | None"], None]


class DownloadError(RsconvertError):
    """A download failed: the server rejected it, the retries ran out, or the size was wrong."""


class LogProgress:
    """Progress callback that logs a line every `interval_s` seconds and one at the end."""

    def __init__(self, label: str, interval_s: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.interval_s = interval_s
        self._clock = clock
        self._last_logged: float | None = None

    def __call__(self, done: int, total: int | None) -> None:
        now = self._clock()
        finished = total is not None and done >= total
        if self._last_logged is None:
            self._last_logged = now
        elif finished or now - self._last_logged >= self.interval_s:
            self._last_logged = now
            logger.info("%s: %s", self.label, format_progress(done, total))


def format_progress(done: int, total: int | None) -> str:
    """Format a byte count as "12.0 of 480.0 MiB (2%)", or "12.0 MiB" when the total is unknown."""
    mib = 1 << 20
    if not total:
        return f"{done / mib:.1f} MiB"
    return f"{done / mib:.1f} of {total / mib:.1f} MiB ({100 * done // total}%)"


class _TransientError(Exception):
    """A failure that a later attempt may not hit: a dropped connection, a timeout, a 5xx."""

    def __init__(self, message: str, connection_failed: bool = False) -> None:
        super().__init__(message)
        # True when no response arrived: refused, unreachable, DNS or TLS failure, timeout.
        self.connection_failed = connection_failed


@dataclasses.dataclass(frozen=True)
class FetchResult:
    """The location of a fetched checkpoint, and whether this call downloaded it."""

    variant: Variant
    path: Path
    downloaded: bool


def fetch_variant(
    name: str | Variant,
    dest: Path | None = None,
    *,
    base_url: str | None = None,
    force: bool = False,
    keep_archive: bool = False,
    retries: int = DEFAULT_RETRIES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    backoff_s: float = DEFAULT_BACKOFF_S,
    progress: ProgressCallback | None = None,
) -> FetchResult:
    """Download and unpack one official checkpoint into `dest/NAME/`.

    A complete checkpoint already at `dest/NAME/` is left as it is unless `force` is set.
    An archive `dest/NAME.tar.gz` that is already there is unpacked without downloading,
    except with `force`. The archive that this call downloads is deleted after unpacking
    unless `keep_archive` is set. An interrupted download leaves `dest/NAME.tar.gz.part`,
    which the next call resumes. Without `progress`, progress is logged every LOG_INTERVAL_S
    seconds.
    """
    variant = get_variant(name) if isinstance(name, str) else name
    root = Path(dest) if dest is not None else checkpoints_root()
    target = variant.default_checkpoint_dir(root)

    if target.exists() and not force:
        if is_checkpoint_dir(target):
            logger.info("%s is already present in %s; pass --force to download it again.",
                        variant.name, target)
            return FetchResult(variant, target, downloaded=False)
        raise OutputError(
            f"{target} exists but contains no complete checkpoint (.index and .data files). "
            "Remove it, or pass --force to replace it.")

    url = variant.url(base_url)
    _check_url(url)
    created = _missing_folders(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        _download_and_unpack(variant, url, root, target, force=force, keep_archive=keep_archive,
                             retries=retries, timeout_s=timeout_s, backoff_s=backoff_s,
                             progress=progress)
    except BaseException as error:
        part = root / (variant.archive_name + PART_SUFFIX)
        if part.is_file() and part.stat().st_size == 0:
            # An empty .part would suggest a download to resume.
            part.unlink()
        elif not isinstance(error, Exception) and part.is_file():
            logger.warning("Stopped with %s bytes of %s in %s; run the same command again to "
                           "resume.", f"{part.stat().st_size:,}", variant.archive_name, part)
        # Folders that this call created and that stayed empty, e.g. because nothing
        # arrived, are removed. A folder with a .part file to resume from is kept.
        _remove_empty_folders(created)
        raise
    logger.info("%s is ready in %s", variant.name, target)
    return FetchResult(variant, target, downloaded=True)


def _discard_foreign_part(part: Path) -> None:
    """Delete a .part file that cannot be the start of a .tar.gz, so the download restarts.

    Resuming appends to the .part, so a leftover of some other file would otherwise spoil
    the whole download. Every gzip stream starts with the bytes 1f 8b.
    """
    if not part.is_file() or part.stat().st_size < len(GZIP_MAGIC):
        return
    with open(part, "rb") as handle:
        start = handle.read(len(GZIP_MAGIC))
    if start != GZIP_MAGIC:
        logger.warning("Deleting %s: it does not start like a .tar.gz archive, so it cannot be "
                       "resumed.", part)
        part.unlink()


def _download_and_unpack(variant: Variant, url: str, root: Path, target: Path, *, force: bool,
                         keep_archive: bool, retries: int, timeout_s: float, backoff_s: float,
                         progress: ProgressCallback | None) -> None:
    """Download the archive into `root` unless it is already there, then unpack it."""
    archive = root / variant.archive_name
    part = archive.with_name(archive.name + PART_SUFFIX)
    if force:
        archive.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
    _discard_foreign_part(part)

    downloaded = not archive.exists()
    if downloaded:
        logger.info("Downloading %s to %s", url, archive)
        if progress is None:
            progress = LogProgress(f"Downloading {variant.archive_name}")
        download(url, archive, retries=retries, timeout_s=timeout_s, backoff_s=backoff_s,
                 progress=progress)
    else:
        logger.info("Unpacking the archive already at %s", archive)

    try:
        extract_checkpoint(archive, target, replace=force)
    except OutputError as error:
        raise OutputError(f"{error} The archive stays at {archive}: the same command unpacks "
                          "it without downloading, and keeps it afterwards.") from None
    except CheckpointError as error:
        # A bad download is useless, so the next call starts afresh. An archive that the user
        # put there stays for them to inspect.
        if downloaded:
            archive.unlink(missing_ok=True)
            raise type(error)(f"{error} The downloaded archive was deleted; run the same "
                              "command again to download it anew.") from None
        raise type(error)(f"{error} Replace or delete {archive} and run the command again.") \
            from None

    if downloaded and not keep_archive:
        archive.unlink()
    elif not downloaded:
        logger.info("Kept %s (%s), which was there before this run; delete it if it is no "
                    "longer needed.", archive, format_size(archive.stat().st_size))


def _missing_folders(folder: Path) -> list[Path]:
    """Return `folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty_folders(folders: Iterable[Path]) -> None:
    """Remove each folder in turn (deepest first) and stop at the first that is not empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
        logger.debug("Removed the empty folder %s", folder)


def download(
    url: str,
    path: Path,
    *,
    retries: int = DEFAULT_RETRIES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    backoff_s: float = DEFAULT_BACKOFF_S,
    progress: ProgressCallback | None = None,
) -> int:
    """Download `url` to `path` through `path.part` and return the size in bytes.

    Bytes already in `path.part` are kept and the rest is requested with a Range header. A
    server that ignores Range and sends the whole file (status 200) restarts the download.
    Dropped connections, timeouts and 5xx responses are retried after `backoff_s`, doubling
    up to MAX_BACKOFF_S. `retries` bounds the consecutive failed attempts that add no bytes,
    so a long download over a flaky link can still finish. The received size must match
    Content-Length or Content-Range. `path` appears only once the download is complete.
    """
    path = Path(path)
    _check_url(url)
    transfer = _Transfer(url, path.with_name(path.name + PART_SUFFIX), timeout_s, progress)
    # NOTE: a .part file left by an earlier run is resumed without checking that the file on
    # the server is unchanged (no If-Range). A changed file shows up as a corrupt archive
    # when unpacking, and fetch_variant then deletes it.
    failures = 0
    while True:
        offset = transfer.part_size()
        try:
            size = transfer.attempt()
            break
        except _TransientError as error:
            if transfer.part_size() > offset:
                failures = 0
            failures += 1
            if failures > retries:
                raise _retries_exhausted(transfer, retries, error) from None
            delay = min(backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S)
            received = transfer.part_size()
            if received:
                logger.warning("Download of %s interrupted at %d bytes (%s); retry %d of %d in "
                               "%.1f s.", url, received, error, failures, retries, delay)
            else:
                logger.warning("Download of %s failed (%s); retry %d of %d in %.1f s.",
                               url, error, failures, retries, delay)
            time.sleep(delay)

    transfer.part.replace(path)
    logger.info("Downloaded %s (%d bytes)", url, size)
    return size


def _retries_exhausted(transfer: _Transfer, retries: int,
                       error: _TransientError) -> DownloadError:
    """Return the error for a download that failed `retries` + 1 times in a row."""
    after = f"after {retries} {'retry' if retries == 1 else 'retries'}"
    received = transfer.part_size()
    if received:
        return DownloadError(
            f"Downloading {transfer.url} failed {after}: {error}. Run the command again to "
            f"resume from {received} bytes in {transfer.part}.")
    # An empty .part file would suggest a download to resume, so it is removed.
    transfer.part.unlink(missing_ok=True)
    if error.connection_failed:
        return DownloadError(
            f"Connection to {transfer.url} failed {after}: {error}. Check the network "
            "connection and the base URL (--base-url or the RSCONVERT_BASE_URL environment "
            "variable).")
    return DownloadError(f"Downloading {transfer.url} failed {after}: {error}. No data was "
                         "received.")


def _check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(
            f"Only http and https URLs can be downloaded. Received: {url!r}. "
            "Check --base-url or the RSCONVERT_BASE_URL environment variable.")


@dataclasses.dataclass
class _Transfer:
    """One download across its attempts, each appending to the `part` file."""

    url: str
    part: Path
    timeout_s: float
    progress: ProgressCallback | None
    # The size that the first response with one announced; later responses must agree.
    total: int | None = None

    def part_size(self) -> int:
        try:
            return self.part.stat().st_size
        except FileNotFoundError:
            return 0

    def attempt(self) -> int:
        """Request the bytes missing from `part`, append them, and return the size on disk."""
        offset = self.part_size()
        request = urllib.request.Request(self.url, headers={
            "User-Agent": f"rsconvert/{__version__}",
            # The archive is already compressed; a content encoding would change the byte counts.
            "Accept-Encoding": "identity",
        })
        if offset:
            request.add_header("Range", f"bytes={offset}-")

        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as error:
            with error:
                return self._handle_http_error(offset, error)
        except (OSError, HTTPException) as error:
            # URLError (refused, DNS, TLS), timeouts and resets are all OSError subclasses.
            raise _TransientError(_describe(error), connection_failed=True) from None

        with response:
            if response.status == 206:
                start, total = self._parse_content_range(response.headers.get("Content-Range"))
                if start != offset:
                    self.part.unlink(missing_ok=True)
                    raise _TransientError(
                        f"the server sent bytes from {start} when {offset} were requested; "
                        "restarting")
                mode = "ab"
            elif response.status == 200:
                if offset:
                    logger.info("The server ignored the Range request; restarting %s from byte 0.",
                                self.url)
                offset = 0
                total = _content_length(response)
                mode = "wb"
            else:
                raise DownloadError(
                    f"Downloading {self.url} failed: unexpected HTTP status {response.status}.")
            self._record_total(total)
            if total is not None:
                remaining = total - offset
                check_free_space(self.part.parent, remaining,
                                 f"the {format_size(remaining)} left to download of {self.url}")
            size = self._copy_body(response, mode, offset)

        if self.total is not None and size < self.total:
            raise _TransientError(f"the connection closed after {size} of {self.total} bytes")
        if self.total is not None and size > self.total:
            self.part.unlink()
            raise DownloadError(
                f"Downloading {self.url} received {size} bytes but the server announced "
                f"{self.total}. Run the command again to start over.")
        return size

    def _handle_http_error(self, offset: int, error: urllib.error.HTTPError) -> int:
        if error.code == 416 and offset:
            # Range Not Satisfiable: the part file may already hold the whole file.
            match = _UNSATISFIED_RANGE.match(error.headers.get("Content-Range") or "")
            if match:
                self._record_total(int(match["total"]))
                if self.total == offset:
                    return offset
            self.part.unlink(missing_ok=True)
            raise _TransientError(f"the server rejected resuming at byte {offset}; restarting")
        if error.code >= 500 or error.code in TRANSIENT_HTTP_STATUSES:
            raise _TransientError(f"HTTP {error.code} {error.reason}")
        raise DownloadError(
            f"Downloading {self.url} failed: HTTP {error.code} {error.reason}. Check the variant "
            "name and the base URL (--base-url or the RSCONVERT_BASE_URL environment variable).")

    def _parse_content_range(self, header: str | None) -> tuple[int, int | None]:
        match = _CONTENT_RANGE.match(header or "")
        if not match:
            raise DownloadError(
                f"Downloading {self.url} failed: a partial response has an invalid "
                f"Content-Range header. Received: {header!r}.")
        total = None if match["total"] == "*" else int(match["total"])
        return int(match["start"]), total

    def _record_total(self, total: int | None) -> None:
        if total is None:
            return
        if self.total is not None and total != self.total:
            self.part.unlink(missing_ok=True)
            raise DownloadError(
                f"The size of {self.url} changed from {self.total} to {total} bytes during the "
                "download. Run the command again to start over.")
        self.total = total

    def _copy_body(self, response, mode: str, offset: int) -> int:
        size = offset
        # Unbuffered, so that a full disk fails in write() below and not again in close().
        with open(self.part, mode, buffering=0) as out:
            if self.progress is not None:
                self.progress(size, self.total)
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, HTTPException) as error:
                    raise _TransientError(_describe(error)) from None
                if not chunk:
                    return size
                try:
                    _write_all(out, chunk)
                except OSError as error:
                    if error.errno not in NO_SPACE_ERRNOS:
                        raise
                    raise OutputError(
                        f"Failed to write {self.part}: {error.strerror} after {size:,} bytes. "
                        "Free some space and run the same command again to resume.") from None
                size += len(chunk)
                if self.progress is not None:
                    self.progress(size, self.total)


def _write_all(out, data: bytes) -> None:
    """Write all of `data` to the unbuffered file `out`, whose write() may be partial."""
    view = memoryview(data)
    while view:
        view = view[out.write(view):]


def _content_length(response) -> int | None:
    header = response.headers.get("Content-Length")
    return int(header) if header and header.isdigit() else None


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        return f"{type(error.reason).__name__}: {error.reason}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
