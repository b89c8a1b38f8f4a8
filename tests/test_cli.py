import re

import pytest

from seemrl.cli import main


def test_train_rejects_unknown_hyperparameter_by_name(tmp_path):
    with pytest.raises(SystemExit, match="stpes"):
        main(["train", "--data", str(tmp_path / "x.parquet"), "--params", '{"stpes": 10}', "--seeds", "0",
              "--checkpoints", str(tmp_path / "c"), "--metrics", str(tmp_path / "m"), "--run", str(tmp_path / "r")])


@pytest.mark.parametrize("trainer, params, needle", [
    ("iql", '{"critic_lr": "3e-4"}', "params.critic_lr: expected a number, got '3e-4' (a string) (YAML"),
    ("iql", '{"hidden": "256"}', "params.hidden: expected a list of integers (at least 1), got '256'"),
    ("cql", '{"hidden": []}', "params.hidden: expected a list of integers (at least 1), got 0 item(s)"),
    ("diffql", '{"actor_lr": 0}', "params: actor_lr must be > 0"),
    ("td3", '{"lr": 0.001}', "params.lr: renamed; write actor_lr and critic_lr instead"),
    ("cql", '{"policy_lr": 0.001}', "params.policy_lr: renamed; write actor_lr instead"),
    ("iql", '{"reward_mode": "minus1"}', "params.reward_mode: renamed; write reward_transform instead"),
])
def test_train_names_the_field_of_a_bad_value(tmp_path, trainer, params, needle):
    with pytest.raises(SystemExit, match=re.escape(needle)):
        main(["train", "--trainer", trainer, "--data", str(tmp_path / "x.parquet"), "--params", params, "--seeds", "0",
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

    from seemrl.training.devices import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            resolve_device("cuda")
