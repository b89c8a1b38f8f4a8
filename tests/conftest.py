"""Test set-up shared by every test: caches inside the project (make sets these too), the tests
folder importable (`helpers`, `algo_checks`), and the `http_server` fixture."""
import os
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
_CACHE = _TESTS.parent / ".cache"
_CACHE.mkdir(exist_ok=True)  # pytest's --basetemp (.cache/pytest) needs its parent
os.environ.setdefault("XDG_CACHE_HOME", str(_CACHE))
os.environ.setdefault("MPLCONFIGDIR", str(_CACHE / "matplotlib"))
sys.path.insert(0, str(_TESTS))


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """A `helpers.FileServer` on 127.0.0.1 serving tmp_path/served; downloads retry without waiting."""
    from helpers import FileServer

    from seemrl.data import download

    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.01)
    server = FileServer(tmp_path / "served")
    server.root.mkdir()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
