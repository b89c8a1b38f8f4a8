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
