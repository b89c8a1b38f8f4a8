"""`seemrl.train`, a training job from start to finish: run.json records the resolved config, so
no later stage needs an algorithm's module to learn what a run used."""
import dataclasses
import json

import pytest
from helpers import train_args, train_dataset

from seemrl.algos import trainer_module
from seemrl.cli import main


@pytest.mark.parametrize("trainer, params", [
    ("td3", {"steps": 6, "hidden": [8, 8], "checkpoint_every": 3, "log_every": 3, "bc_weight": 1.0}),
    ("iql", {"steps": 6, "hidden": [8, 8], "checkpoint_every": 3, "log_every": 3, "reward_transform": "minus1"}),
])
def test_run_json_records_the_resolved_config_and_the_preparation(tmp_path, trainer, params):
    data = train_dataset(tmp_path / "data.parquet")
    main([*train_args(data, tmp_path / "out", None, params=params, seeds="0"), "--trainer", trainer])
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    cfg = trainer_module(trainer).Config(**params)
    assert run["config"] == json.loads(json.dumps(dataclasses.asdict(cfg)))  # every field, defaults too
    assert run["config_given"] == params and run["algorithm"] == trainer
    assert run["config"]["gamma"] == 0.99 and run["config"]["critic_lr"] == 3e-4
    assert run["data_preparation"] == {"reward_transform": params.get("reward_transform", "none"), "oper_r": False}
    assert run["steps"] == 6 and run["evaluation"] is None
