"""Download with resume and checksums, and the checksum lock, against a local HTTP server."""
import hashlib
import json
import multiprocessing
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from seemrl.data import download as download_module
from seemrl.data.download import ChecksumError, DownloadError, download
from seemrl.data.lockfile import read_lock, record, verified_download

KEY = "gym_mujoco_v2/hopper_medium-v2.hdf5"


class FileServer:
    """Serves files from `root` over HTTP on 127.0.0.1, with Range support and fault switches.

    cut_after: end the next response after this many body bytes (once), as a dropped link does.
    ignore_range: answer every request with 200 and the whole file.
    replace: url path -> bytes to serve instead of the file (wrong content).
    requests: (method, path, Range header) of every request, for assertions.
    """

    def __init__(self, root: Path):
        self.root = root
        self.cut_after: int | None = None
        self.ignore_range = False
        self.replace: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.file_server = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def content(self, url_path: str) -> bytes | None:
        if url_path in self.replace:
            return self.replace[url_path]
        file = self.root / url_path.lstrip("/")
        return file.read_bytes() if file.is_file() else None

    def gets(self) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET"]


class _Handler(BaseHTTPRequestHandler):
    def do_HEAD(self):
        self._serve(send_body=False)

    def do_GET(self):
        self._serve(send_body=True)

    def _serve(self, send_body: bool):
        state: FileServer = self.server.file_server
        range_header = self.headers.get("Range")
        state.requests.append((self.command, self.path, range_header))
        data = state.content(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if range_header and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not send_body:
            return
        if state.cut_after is not None:
            body, state.cut_after = body[: state.cut_after], None
            self.close_connection = True  # the client sees fewer bytes than Content-Length
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "RETRY_BACKOFF_S", 0.01)
    server = FileServer(tmp_path / "served")
    server.root.mkdir()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def serve(server: FileServer, rel: str, data: bytes) -> str:
    file = server.root / rel
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)
    return f"{server.url}/{rel}"


def payload(n=100_000, seed=0) -> bytes:
    return bytes((i * 7 + seed + i // 251) % 256 for i in range(n))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quiet(msg):
    pass


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
