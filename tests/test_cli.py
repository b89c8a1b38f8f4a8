import pytest

from seemrl.cli import main


def test_train_rejects_unknown_hyperparameter_by_name(tmp_path):
    with pytest.raises(SystemExit, match="stpes"):
        main(["train", "--data", str(tmp_path / "x.parquet"), "--params", '{"stpes": 10}', "--seeds", "0",
              "--checkpoints", str(tmp_path / "c"), "--metrics", str(tmp_path / "m"), "--run", str(tmp_path / "r")])


def test_missing_dataset_is_named(tmp_path):
    from seemrl.data.transitions import DatasetError

    missing = tmp_path / "nope.parquet"
    with pytest.raises(DatasetError, match="nope.parquet"):
        main(["train", "--data", str(missing), "--params", "{}", "--seeds", "0", "--device", "cpu",
              "--checkpoints", str(tmp_path / "c"), "--metrics", str(tmp_path / "m"), "--run", str(tmp_path / "r")])
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()


def test_device_resolution():
    import torch

    from seemrl.devices import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            resolve_device("cuda")
