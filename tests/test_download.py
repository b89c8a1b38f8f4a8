"""Download with resume and checksums, and the checksum lock, against a local HTTP server."""
import json
import multiprocessing
import socket
import time

import pytest
from helpers import payload, quiet, serve, sha

from seemrl.data.download import ChecksumError, DownloadError, download
from seemrl.data.lockfile import read_lock, record, verified_download

KEY = "gym_mujoco_v2/hopper_medium-v2.hdf5"


# ------------------------------------------------------------------ download()
def test_download_verifies_and_installs(http_server, tmp_path):
    data = payload()
    url = serve(http_server, "a/file.bin", data)
    dest = tmp_path / "store" / "file.bin"
    result = download(url, dest, expected_size=len(data), expected_sha256=sha(data), log=quiet)
    assert dest.read_bytes() == data
    assert (result.path, result.size, result.sha256) == (dest, len(data), sha(data))
    assert not dest.with_name("file.bin.part").exists()


def test_cut_transfer_resumes_with_range(http_server, tmp_path):
    data = payload()
    url = serve(http_server, "file.bin", data)
    http_server.cut_after = 30_000
    dest = tmp_path / "file.bin"
    result = download(url, dest, log=quiet)
    assert dest.read_bytes() == data and result.sha256 == sha(data)
    assert [r[2] for r in http_server.gets()] == [None, "bytes=30000-"]


def test_cut_transfer_keeps_part_for_next_call(http_server, tmp_path):
    data = payload()
    url = serve(http_server, "file.bin", data)
    http_server.cut_after = 40_000
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match="run again to resume"):
        download(url, dest, attempts=1, log=quiet)
    part = tmp_path / "file.bin.part"
    assert part.read_bytes() == data[:40_000] and not dest.exists()
    result = download(url, dest, expected_sha256=sha(data), log=quiet)
    assert dest.read_bytes() == data and result.sha256 == sha(data)
    assert http_server.gets()[-1][2] == "bytes=40000-"


def test_server_ignoring_range_restarts_from_zero(http_server, tmp_path):
    data = payload()
    url = serve(http_server, "file.bin", data)
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"stale bytes of another file")
    http_server.ignore_range = True
    result = download(url, dest, expected_sha256=sha(data), log=quiet)
    assert http_server.gets()[0][2] == "bytes=27-"  # asked to resume, got a 200
    assert dest.read_bytes() == data and result.size == len(data)


def test_complete_part_is_installed_without_refetching(http_server, tmp_path):
    data = payload()
    url = serve(http_server, "file.bin", data)
    (tmp_path / "file.bin.part").write_bytes(data)  # e.g. killed just before the rename
    result = download(url, tmp_path / "file.bin", expected_sha256=sha(data), log=quiet)
    assert result.sha256 == sha(data) and (tmp_path / "file.bin").read_bytes() == data


def test_wrong_hash_deletes_the_file(http_server, tmp_path):
    data = payload()
    url = serve(http_server, "file.bin", data)
    dest = tmp_path / "file.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        download(url, dest, expected_sha256=wrong, log=quiet)
    assert str(dest) in str(err.value) and wrong in str(err.value) and sha(data) in str(err.value)
    assert list(tmp_path.iterdir()) == [http_server.root]  # no dest, no .part


def test_wrong_size_fails_before_fetching(http_server, tmp_path):
    url = serve(http_server, "file.bin", payload())
    with pytest.raises(ChecksumError, match="expected 123"):
        download(url, tmp_path / "file.bin", expected_size=123, log=quiet)
    assert not (tmp_path / "file.bin").exists() and not (tmp_path / "file.bin.part").exists()


def test_http_404_is_a_download_error(http_server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download(f"{http_server.url}/nothing.bin", tmp_path / "x", log=quiet)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_and_names_alternatives(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/gym_mujoco_v2/hopper_medium-v2.hdf5"
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "x.hdf5", log=quiet)
    assert time.monotonic() - t0 < 5
    message = str(err.value)
    for expected in (url, "MINARI_DATASETS_PATH", "dvc pull", "generate"):
        assert expected in message
    assert not (tmp_path / "x.hdf5").exists()


def test_silent_server_times_out(tmp_path):
    # a socket that accepts connections (kernel backlog) but never answers
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match="cannot reach"):
            download(url, tmp_path / "x", timeout=0.5, log=quiet)
        assert time.monotonic() - t0 < 5


# ------------------------------------------------------------------ the lock
def test_first_download_records_then_verifies(http_server, tmp_path):
    data = payload()
    url = serve(http_server, KEY, data)
    lock = tmp_path / "config" / "datasets.lock.json"
    dest = tmp_path / "store" / KEY

    verified_download(KEY, url, dest, lock, log=quiet)
    assert read_lock(lock) == {KEY: {"sha256": sha(data), "size": len(data)}}
    text = lock.read_text()
    assert text == json.dumps(read_lock(lock), indent=2, sort_keys=True) + "\n"

    # present and locked: verified, not downloaded again
    result = verified_download(KEY, url, dest, lock, log=quiet)
    assert result.sha256 == sha(data) and len(http_server.gets()) == 1

    # absent but locked: downloaded and checked against the lock
    dest.unlink()
    verified_download(KEY, url, dest, lock, log=quiet)
    assert dest.read_bytes() == data and len(http_server.gets()) == 2
    assert lock.read_text() == text


@pytest.mark.parametrize("tamper", [
    lambda d: bytes([d[0] ^ 1]) + d[1:],  # same size, different bytes
    lambda d: d + b"extra",  # different size
])
def test_server_content_not_matching_lock(http_server, tmp_path, tamper):
    data = payload()
    url = serve(http_server, KEY, tamper(data))
    lock = tmp_path / "datasets.lock.json"
    record(lock, KEY, sha(data), len(data))
    dest = tmp_path / "store" / KEY
    with pytest.raises(ChecksumError) as err:
        verified_download(KEY, url, dest, lock, log=quiet)
    assert str(dest) in str(err.value) and str(lock) in str(err.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_tampered_preseeded_file(http_server, tmp_path):
    data = payload()
    url = serve(http_server, KEY, data)
    lock = tmp_path / "datasets.lock.json"
    record(lock, KEY, sha(data), len(data))
    dest = tmp_path / "store" / KEY
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data[:-1] + b"X")
    with pytest.raises(ChecksumError) as err:
        verified_download(KEY, url, dest, lock, log=quiet)
    message = str(err.value)
    assert str(dest) in message and str(lock) in message and sha(data) in message
    assert not dest.exists() and dest.with_name(dest.name + ".rejected").exists()
    assert http_server.gets() == []  # a present file is never re-downloaded silently


def test_preseeded_file_not_in_lock_is_recorded_without_download(http_server, tmp_path):
    data = payload()
    dest = tmp_path / "store" / KEY
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data)
    lock = tmp_path / "datasets.lock.json"
    verified_download(KEY, f"{http_server.url}/{KEY}", dest, lock, log=quiet)
    assert read_lock(lock)[KEY] == {"sha256": sha(data), "size": len(data)}
    assert http_server.requests == []


def test_record_conflicting_entry_raises(tmp_path):
    lock = tmp_path / "lock.json"
    record(lock, KEY, "a" * 64, 1)
    record(lock, KEY, "a" * 64, 1)  # same values: fine
    with pytest.raises(ChecksumError, match="already holds"):
        record(lock, KEY, "b" * 64, 1)


def _record_many(lock: str, worker: int, n: int) -> None:
    for i in range(n):
        record(lock, f"w{worker}/file{i}.hdf5", f"{worker:02d}{i:062d}", i)


def test_concurrent_records_lose_nothing(tmp_path):
    lock = str(tmp_path / "datasets.lock.json")
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_record_many, args=(lock, w, 25)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    assert len(read_lock(lock)) == 100
