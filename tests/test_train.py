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


def test_a_checkpoint_saved_before_a_rename_loads_and_keeps_its_meaning(tmp_path):
    """Configs naming a former setting are rejected (test_cli), but checkpoints saved with one
    still load: `lr` fills actor_lr and critic_lr, IQL's `reward_mode` becomes reward_transform,
    and the SEEM analysis prepares the rewards the run trained on."""
    import torch

    from seemrl.algos import load_checkpoint
    from seemrl.analysis.seem import training_rewards
    from seemrl.data.transitions import read_transitions
    from seemrl.training.resume import checkpoint_paths

    data = train_dataset(tmp_path / "data.parquet")
    for trainer, params, old in (("td3", {"actor_lr": 1e-3, "critic_lr": 1e-3}, {"lr": 1e-3}),
                                 ("iql", {"reward_transform": "minus1"}, {"reward_mode": "minus1"})):
        out = tmp_path / trainer
        small = {"steps": 2, "hidden": [8, 8], "checkpoint_every": 2, "log_every": 1}
        main([*train_args(data, out, None, params={**small, **params}, seeds="0"), "--trainer", trainer])
        for path in checkpoint_paths(out / "checkpoints"):
            payload = torch.load(path, weights_only=False)
            for name in params:  # as a checkpoint written before the rename holds it
                payload["config"].pop(name)
            payload["config"].update(old)
            torch.save(payload, path)
            cfg = load_checkpoint(path).config
            assert all(getattr(cfg, name) == value for name, value in params.items())
    t = read_transitions(data)
    assert (training_rewards(t, tmp_path / "iql" / "checkpoints") == t.reward - 1).all()
