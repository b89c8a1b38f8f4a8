"""Cells trained together (`seemrl train-together`): one stack for several cells of one algorithm
config, each cell's outputs as if it trained alone (`seemrl train`).

The comparison is exact with PyTorch's scalar CPU kernels (test_seed_independence.py runs this
file so) and within float32 rounding with the vectorised ones.
"""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from algo_checks import assert_same_run
from helpers import train_args, train_dataset

from seemrl.cli import main
from seemrl.training.draws import Draw, OfflineData
from seemrl.training.loop import read_checkpoint

PARAMS = dict(steps=90, batch_size=16, hidden=[16, 16], checkpoint_every=30, log_every=15,
              eval_every=45, eval_episodes=1)
CELLS = {"big": dict(seed=0, n=300, seeds=[0, 1]), "small": dict(seed=1, n=120, seeds=[0, 2])}


def _outputs(out: Path) -> dict:
    return {"checkpoints": str(out / "checkpoints"), "metrics": str(out / "metrics.parquet"),
            "evaluations": str(out / "evaluations.parquet"), "run": str(out / "run.json"),
            "progress": str(out / "progress.json")}


def _together(tmp_path: Path, trainer: str, params: dict, resume: Path | None = None) -> dict:
    cells = []
    for name, c in CELLS.items():
        data = train_dataset(tmp_path / f"{name}.parquet", seed=c["seed"], n=c["n"])
        cells.append({"data": str(data), "seeds": c["seeds"], "labels": {"cell": name},
                      **_outputs(tmp_path / "together" / name)})
    args = ["train-together", "--trainer", trainer, "--params", json.dumps(params), "--cells", json.dumps(cells),
            "--device", "cpu", "--threads", "1"]
    main(args + (["--resume-dir", str(resume)] if resume else []))
    return {c["labels"]["cell"]: Path(c["run"]).parent for c in cells}


def _alone(tmp_path: Path, trainer: str, params: dict, name: str) -> Path:
    c, out = CELLS[name], tmp_path / "alone" / name
    main(train_args(tmp_path / f"{name}.parquet", out, None, params=params,
                    seeds=",".join(map(str, c["seeds"]))) + ["--trainer", trainer])
    return out


def _assert_same_outputs(a: Path, b: Path) -> None:
    names = sorted(p.name for p in (a / "checkpoints").glob("step_*.pt"))
    assert names and names == sorted(p.name for p in (b / "checkpoints").glob("step_*.pt"))
    for name in names:
        x, y = read_checkpoint(a / "checkpoints" / name), read_checkpoint(b / "checkpoints" / name)
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], dict) and key != "config":
                assert x[key].keys() == y[key].keys(), (name, key)
                for k in x[key]:
                    assert_same_run(x[key][k], y[key][k], f"{name} {key}.{k}")
            elif isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), (name, key)  # the state statistics: the cell's own
            else:
                assert x[key] == y[key], (name, key)
    for table in ("metrics", "evaluations"):
        x, y = pd.read_parquet(a / f"{table}.parquet"), pd.read_parquet(b / f"{table}.parquet")
        assert list(x.columns) == list(y.columns) and len(x) == len(y) > 0, table
        for col in x.columns:
            assert_same_run(torch.tensor(x[col].to_numpy(float)), torch.tensor(y[col].to_numpy(float)),
                            f"{table}.{col}")
    rx, ry = json.loads((a / "run.json").read_text()), json.loads((b / "run.json").read_text())
    for key in ("seeds", "diverged_step", "config", "data_preparation", "steps"):
        assert rx[key] == ry[key], key
    assert rx["data"]["n_transitions"] == ry["data"]["n_transitions"]


@pytest.mark.parametrize("trainer,extra", [("td3", {"bc_weight": 1.0}), ("iql", {}),
                                           ("cql", {"critic": {"norm": "layernorm"}}),
                                           ("diffql", {"diffusion_steps": 3, "sample_steps": 3, "backup_samples": 2,
                                                       "eval_samples": 3, "actor_ema_start": 10})])
def test_cells_trained_together_match_each_cell_alone(tmp_path, trainer, extra):
    params = {**PARAMS, **extra}
    together = _together(tmp_path, trainer, params)
    for name in CELLS:
        _assert_same_outputs(together[name], _alone(tmp_path, trainer, params, name))
        run = json.loads((together[name] / "run.json").read_text())
        assert run["trained_together"]["members"] == 4
        assert [c["cell"] for c in run["trained_together"]["cells"]] == list(CELLS)
        assert json.loads((together[name] / "progress.json").read_text())["state"] == "done"
    # no stack checkpoints left beside the cells' outputs
    assert not list((tmp_path / "together").glob(".together-*"))


def test_cells_trained_together_with_a_resume_dir_match_alone(tmp_path):
    resume = tmp_path / "resume"
    together = _together(tmp_path, "td3", PARAMS, resume=resume)
    _assert_same_outputs(together["small"], _alone(tmp_path, "td3", PARAMS, "small"))
    assert not resume.exists() or not any(resume.iterdir())


def test_each_member_samples_its_own_table():
    small, big = (OfflineData.from_arrays(obs=torch.full((n, 2), float(v)), action=torch.zeros(n, 1),
                                          reward=torch.zeros(n), next_obs=torch.zeros(n, 2),
                                          terminal=torch.zeros(n), mean=[0.0, 0.0], std=[1.0, 1.0], device="cpu")
                  for n, v in ((5, 1.0), (50, 2.0)))
    data = OfflineData.stack([small, big], [2, 1])
    assert data.members == ((0, 5), (0, 5), (5, 50))
    draw = data.index_draw("idx", 64, 7)
    g = torch.Generator().manual_seed(0)
    rows = [data.obs[draw.sample(g, member=m)][:, 0] for m in range(3)]
    assert torch.all(rows[0] == 1.0) and torch.all(rows[1] == 1.0) and torch.all(rows[2] == 2.0)
    # a member's draw is the draw of its table alone, shifted to its rows
    alone = big.index_draw("idx", 64, 7)
    g, h = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(draw.sample(g, 4, member=2) - 5, alone.sample(h, 4))
    assert draw.batches_exactly()
    with pytest.raises(ValueError, match="offset"):
        Draw("idx", "randint", (3,), 0, high=5, offset=(0,))


def test_bad_together_jobs_are_refused_by_name(tmp_path):
    a = train_dataset(tmp_path / "a.parquet")
    cell = {"data": str(a), "seeds": [0], **_outputs(tmp_path / "a")}
    base = ["train-together", "--params", json.dumps(PARAMS), "--device", "cpu"]
    with pytest.raises(SystemExit, match="at least two cells"):
        main(base + ["--cells", json.dumps([cell])])
    with pytest.raises(SystemExit, match="'online_sac' cannot train cells together"):
        main(base + ["--trainer", "online_sac", "--cells", json.dumps([cell, cell])])
    with pytest.raises(SystemExit, match="needs data, seeds"):
        main(base + ["--cells", json.dumps([{"data": str(a)}, cell])])
    # another environment's table: state sizes differ, named
    from helpers import make_transitions

    from seemrl.data.transitions import write_transitions
    other = tmp_path / "other.parquet"
    write_transitions(other, make_transitions(episode_lengths=(40, 40), obs_dim=4, act_dim=3))
    with pytest.raises(SystemExit, match="other.parquet"):
        main(base + ["--cells", json.dumps([cell, {**cell, "data": str(other)}])])
