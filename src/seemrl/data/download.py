"""HTTP download with resume, size and SHA-256 checks, and an atomic install.

Bytes go to `<dest>.part`. A later attempt (in the same call or a later run) asks the server
for the rest with `Range: bytes=<n>-`; a 206 reply is appended, a 200 reply (the server ignored
the range) starts the file over. The SHA-256 is computed while streaming. Only a complete file
whose size and hash match what was expected is renamed to `dest`, so a file under its final
name is always a finished, verified one; a file that fails the check is deleted.

Standard library (urllib) only, plus tqdm for the progress bar.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from tqdm import tqdm

from seemrl.io import sha256_file

CHUNK = 1 << 20
ATTEMPTS = 3  # transfers per call; only a transfer cut mid-way (or an HTTP 5xx) is retried
RETRY_BACKOFF_S = 0.5  # doubled after each failed attempt

ALTERNATIVES = (
    "Alternatives: put the file in place yourself (a pre-seeded file is checked against the "
    "checksum lock, not downloaded; Minari copies are found under MINARI_DATASETS_PATH), "
    "fetch the pipeline's stored data with `dvc pull`, or use the `generate` dataset source, "
    "which needs no download."
)


class DownloadError(RuntimeError):
    """The file could not be fetched (server unreachable, HTTP error, transfer kept failing)."""


class ChecksumError(ValueError):
    """A file's size or SHA-256 differs from the expected one; the message names the file."""


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    sha256: str


class _TransferCut(Exception):
    """The response ended or failed before all bytes arrived; the .part keeps what came."""


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    timeout: float = 10.0,
    progress: bool = True,
    log: Callable[[str], object] = print,
    attempts: int = ATTEMPTS,
) -> DownloadResult:
    """Fetch `url` into `dest` (resuming `<dest>.part` if present) and verify it.

    `timeout` bounds the connection and every read, so an unreachable server fails within
    seconds. Raises DownloadError when the file cannot be fetched and ChecksumError when the
    fetched bytes do not match `expected_size` / `expected_sha256` (the bad file is deleted).
    An existing `dest` is replaced only once the new file is complete and verified.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"downloading {url} -> {dest}")
    for attempt in range(1, attempts + 1):
        try:
            sha256 = _transfer(url, part, dest, timeout, progress, expected_size)
            break
        except _TransferCut as cut:
            have = part.stat().st_size if part.exists() else 0
            if attempt == attempts:
                raise DownloadError(
                    f"{url}: transfer failed {attempts} times ({cut}); {have} bytes kept in "
                    f"{part}, run again to resume. {ALTERNATIVES}"
                ) from None
            log(f"{url}: transfer cut ({cut}) with {have} bytes in {part}; "
                f"retrying ({attempt + 1}/{attempts})")
            time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))

    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise ChecksumError(f"{dest}: downloaded {size} bytes from {url}, expected "
                            f"{expected_size}; the file was deleted")
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        part.unlink()
        raise ChecksumError(f"{dest}: SHA-256 mismatch for {url}: expected {expected_sha256}, "
                            f"got {sha256}; the file was deleted")
    os.replace(part, dest)
    return DownloadResult(dest, size, sha256)


def _transfer(url: str, part: Path, dest: Path, timeout: float, progress: bool,
              expected_size: int | None) -> str:
    """One HTTP request that completes `part`; returns the SHA-256 of the whole file.

    Raises _TransferCut when it should be retried, DownloadError / ChecksumError when not.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = Request(url, headers={"User-Agent": "seemrl"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urlopen(request, timeout=timeout)
    except HTTPError as e:
        if e.code == 416 and offset:
            # nothing left to send: the .part is complete if its size is the server's total
            if _content_range(e.headers.get("Content-Range", ""))[2] == offset:
                return sha256_file(part)
            part.unlink()
            raise _TransferCut(f"server refused to resume at byte {offset}; restarting") from None
        if e.code >= 500:
            raise _TransferCut(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}. {ALTERNATIVES}") from None
    except (OSError, http.client.HTTPException) as e:  # DNS, refused, timeout (URLError is OSError)
        reason = getattr(e, "reason", None) or e
        raise DownloadError(
            f"cannot reach {url} ({reason}); the server may be down or this machine offline. "
            f"{ALTERNATIVES}"
        ) from None

    with response:
        if response.status == 206:
            start, _, total = _content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                part.unlink()
                raise _TransferCut(f"server resumed at byte {start}, not {offset}; starting over")
            hasher = _sha256_hasher(part)
            mode = "ab"
        else:  # 200: no range asked, or the server ignored it
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            offset, hasher, mode = 0, hashlib.sha256(), "wb"
        if expected_size is not None and total is not None and total != expected_size:
            # a different file: fail before fetching possibly gigabytes of it
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{dest}: {url} has {total} bytes, expected {expected_size}; "
                                f"nothing kept")
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=dest.name, file=sys.stderr, leave=False,
                   disable=None if progress else True)  # None: off when stderr is not a TTY
        with bar, open(part, mode) as out:
            try:
                while block := response.read(CHUNK):
                    out.write(block)
                    hasher.update(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:  # reset, read timeout, ...
                raise _TransferCut(str(e) or type(e).__name__) from None
            out.flush()
            os.fsync(out.fileno())
            received = out.tell()
    # urllib returns b'' rather than raising when the connection closes early: check the count
    if total is not None and received != total:
        raise _TransferCut(f"got {received} of {total} bytes")
    return hasher.hexdigest()


def _content_range(header: str) -> tuple[int | None, int | None, int | None]:
    """(start, end, total) from 'bytes 100-199/1000' or 'bytes */1000'; None where absent."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", header)
    if not match:
        return None, None, None
    return tuple(int(g) if g and g != "*" else None for g in match.groups())  # type: ignore


def _sha256_hasher(path: Path):
    """A SHA-256 object fed with the bytes already in `path`, to continue a resumed file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h


__all__ = ["ChecksumError", "DownloadError", "DownloadResult", "download"]
