import pytest

from seemrl.io import atomic_path, sha256_file, write_json_atomic


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("done")
        assert not target.exists()  # nothing under the final name while writing
    assert target.read_text() == "done"
    assert list(target.parent.iterdir()) == [target]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_directory_replaces_whole(tmp_path):
    target = tmp_path / "ckpts"
    for content in ("first", "second"):
        with atomic_path(target, is_dir=True) as tmp:
            (tmp / content).write_text(content)
    assert [p.name for p in target.iterdir()] == ["second"]


def test_json_and_checksum(tmp_path):
    import numpy as np

    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": np.float32(1.5), "b": np.arange(2)})
    assert path.read_text().strip().startswith("{")
    assert len(sha256_file(path)) == 64


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f") as tmp:
            tmp.write_text("x")
        with atomic_path(tmp_path / "d", is_dir=True):
            pass
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
