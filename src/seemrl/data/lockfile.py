"""The committed checksum lock for downloaded dataset files.

D4RL publishes no checksums, so the first download of a file records its size and SHA-256 in a
JSON lock (`config/datasets.lock.json`, committed); every later download, and every file already
in the store, is checked against it, and a mismatch names the file. `docs/data.md` shows the
format.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Callable, Iterator

from seemrl.data.download import ChecksumError, DownloadResult, download
from seemrl.io import sha256_file, write_json_atomic

_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_lock(lock_path: str | os.PathLike) -> dict[str, dict]:
    """The lock's entries ({} when the file does not exist yet); a malformed lock raises."""
    lock_path = Path(lock_path)
    if not lock_path.exists():
        return {}
    try:
        entries = json.loads(lock_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{lock_path}: not valid JSON ({e})") from e
    if not isinstance(entries, dict):
        raise ValueError(f"{lock_path}: expected a JSON object of file key -> entry")
    for key, entry in entries.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int)
                and _SHA256.fullmatch(str(entry.get("sha256", "")))):
            raise ValueError(f"{lock_path}: entry {key!r} needs an integer 'size' and a "
                             f"lower-case hex 'sha256'; got {entry!r}")
    return entries


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = lock_path.with_name(f".{lock_path.name}.flock")
    with open(sidecar, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle is closed
        yield


def record(lock_path: str | os.PathLike, key: str, sha256: str, size: int) -> None:
    """Add `key` to the lock. Recording the same values again is a no-op; different values
    for a key already there (another job fetched different bytes) raise ChecksumError."""
    lock_path = Path(lock_path)
    entry = {"sha256": sha256, "size": int(size)}
    with _exclusive(lock_path):
        entries = read_lock(lock_path)
        if key in entries:
            if entries[key] != entry:
                raise ChecksumError(f"{lock_path} already holds {entries[key]} for {key!r}, "
                                    f"but the file fetched now has {entry}")
            return
        entries[key] = entry
        write_json_atomic(lock_path, entries)  # indent 2, sorted keys, trailing newline


def verify_file(path: str | os.PathLike, key: str, lock_path: str | os.PathLike) -> str:
    """Check `path` against the lock entry `key`; returns its SHA-256.

    On a mismatch the file is moved aside to `<path>.rejected` (it may be someone's only copy,
    so it is not deleted) and ChecksumError names the file, the lock and both values.
    """
    path, lock_path = Path(path), Path(lock_path)
    entry = read_lock(lock_path)[key]
    size = path.stat().st_size
    # a size mismatch is known without reading a possibly multi-gigabyte file
    problem = None
    if size != entry["size"]:
        problem = f"size {size} bytes, but {lock_path} [{key!r}] says {entry['size']}"
    else:
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            problem = (f"SHA-256 {actual}, but {lock_path} [{key!r}] says {entry['sha256']}")
    if problem:
        rejected = path.with_name(path.name + ".rejected")
        os.replace(path, rejected)
        raise ChecksumError(f"{path}: {problem}; moved to {rejected}")
    return actual


def verified_download(
    key: str,
    url: str,
    dest: str | os.PathLike,
    lock_path: str | os.PathLike,
    *,
    timeout: float = 10.0,
    progress: bool = True,
    log: Callable[[str], object] = print,
) -> DownloadResult:
    """Make `dest` a verified copy of lock entry `key`, downloading from `url` if needed.

    - `dest` present, key locked: verified against the lock, nothing downloaded.
    - `dest` present, key not locked (a pre-seeded store): its checksum is recorded.
    - `dest` absent, key locked: downloaded and checked against the lock.
    - `dest` absent, key not locked: downloaded and recorded (commit the lock afterwards).
    """
    dest, lock_path = Path(dest), Path(lock_path)
    entry = read_lock(lock_path).get(key)
    if dest.exists():
        if entry is not None:
            return DownloadResult(dest, dest.stat().st_size, verify_file(dest, key, lock_path))
        result = DownloadResult(dest, dest.stat().st_size, sha256_file(dest))
        record(lock_path, key, result.sha256, result.size)
        log(f"{dest}: present but not in {lock_path}; recorded its checksum (commit the lock)")
        return result
    if entry is None:
        result = download(url, dest, timeout=timeout, progress=progress, log=log)
        record(lock_path, key, result.sha256, result.size)
        log(f"first download of {key}: recorded its checksum in {lock_path} (commit it)")
        return result
    try:
        return download(url, dest, expected_size=entry["size"], expected_sha256=entry["sha256"],
                        timeout=timeout, progress=progress, log=log)
    except ChecksumError as e:
        raise ChecksumError(f"{e} (expected values from {lock_path} [{key!r}])") from None


__all__ = ["read_lock", "record", "verified_download", "verify_file"]
