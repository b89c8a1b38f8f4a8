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


def _together(tmp_path: Path, trainer: str, params: dict, resume: Path | None = None,
              cell_params: dict | None = None) -> dict:
    """Train CELLS together; `cell_params`: cell name -> its own params (a sweep's cells)."""
    cells = []
    for name, c in CELLS.items():
        data = train_dataset(tmp_path / f"{name}.parquet", seed=c["seed"], n=c["n"])
        own = {"params": cell_params[name]} if cell_params and name in cell_params else {}
        cells.append({"data": str(data), "seeds": c["seeds"], "labels": {"cell": name}, **own,
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


# settings that differ between a sweep's cells (each trainer's MEMBER_SETTINGS), the second cell's values
SWEEPS = [("td3", {"bc_weight": 1.0}, {"alpha": 1.0, "bc_weight": 2.0}),
          ("iql", {}, {"expectile": 0.9, "beta": 10.0}),
          ("cql", {"critic": {"norm": "layernorm"}}, {"cql_alpha": 1.0}),
          ("diffql", {"diffusion_steps": 3, "sample_steps": 3, "backup_samples": 2, "eval_samples": 3,
                      "actor_ema_start": 10, "grad_clip": 2.0, "oper_r": True},
           {"grad_clip": 0.05, "alpha": 1.0, "bc_weight": 1.5, "oper_r": False})]


@pytest.mark.parametrize("trainer,extra,other", SWEEPS, ids=[s[0] for s in SWEEPS])
def test_cells_of_a_sweep_trained_together_match_each_cell_alone(tmp_path, trainer, extra, other):
    """Cells that differ in a per-member setting (e.g. Diffusion-QL's per-maze gradient clip) share
    a stack; each member trains with its own cell's values, as that cell alone."""
    params = {**PARAMS, **extra}
    small = {**params, **other}
    together = _together(tmp_path, trainer, params, cell_params={"small": small})
    _assert_same_outputs(together["big"], _alone(tmp_path, trainer, params, "big"))
    _assert_same_outputs(together["small"], _alone(tmp_path, trainer, small, "small"))
    runs = {n: json.loads((together[n] / "run.json").read_text()) for n in CELLS}
    assert runs["small"]["config_given"] == small and runs["big"]["config_given"] == params
    for key, value in other.items():
        assert runs["small"]["config"][key] == value != runs["big"]["config"][key]
    # the settings matter: the small cell trained with the big one's differs
    same = tmp_path / "same"
    main(train_args(tmp_path / "small.parquet", same, None, params=params,
                    seeds=",".join(map(str, CELLS["small"]["seeds"]))) + ["--trainer", trainer])
    a = read_checkpoint(next((together["small"] / "checkpoints").glob("step_*90.pt")))
    b = read_checkpoint(next((same / "checkpoints").glob("step_*90.pt")))
    assert not all(torch.equal(a["actor"][k], b["actor"][k]) for k in a["actor"])


def test_cells_that_differ_in_a_shared_setting_are_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match="differ in tau"):
        _together(tmp_path, "td3", PARAMS, cell_params={"small": {**PARAMS, "tau": 0.5}})
    with pytest.raises(SystemExit, match="differ in critic_lr"):
        _together(tmp_path, "iql", PARAMS, cell_params={"small": {**PARAMS, "critic_lr": 1e-3}})
    with pytest.raises(ValueError, match="grad_clip: members without clipping"):
        _together(tmp_path, "diffql", {**PARAMS, "diffusion_steps": 3, "sample_steps": 3},
                  cell_params={"small": {**PARAMS, "diffusion_steps": 3, "sample_steps": 3, "grad_clip": 1.0}})
    with pytest.raises(SystemExit, match="bad params of the cell"):
        _together(tmp_path, "td3", PARAMS, cell_params={"small": {**PARAMS, "alpha": "high"}})


def test_member_settings_refuse_what_cannot_vary_per_member():
    from seemrl.algos.base import member_settings
    from seemrl.algos.td3 import TD3Config

    out = member_settings(TD3Config(), {"alpha": [1.0, 2.5, 2.5]}, 3, "cpu")
    assert out["alpha"].dtype == torch.float32 and out["alpha"].tolist() == [1.0, 2.5, 2.5]
    with pytest.raises(ValueError, match="'tau' of TD3Config cannot differ.*alpha, bc_weight"):
        member_settings(TD3Config(), {"tau": [1.0, 0.5]}, 2, "cpu")
    with pytest.raises(ValueError, match="2 values for a stack of 3"):
        member_settings(TD3Config(), {"alpha": [1.0, 2.0]}, 3, "cpu")


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


def test_each_member_draws_oper_r_rows_from_its_own_table():
    """OPER-R's actor batch of stacked tables: each member's rows from its own table's sampling
    probabilities, the rows it draws alone shifted to its table's place."""
    from seemrl.training.draws import sampling_cdf

    def table(n, v, probs):
        t = OfflineData.from_arrays(obs=torch.full((n, 2), float(v)), action=torch.zeros(n, 1), reward=torch.zeros(n),
                                    next_obs=torch.zeros(n, 2), terminal=torch.zeros(n), mean=[0.0, 0.0],
                                    std=[1.0, 1.0], device="cpu")
        t.policy_cdf = sampling_cdf(probs, "cpu")
        return t
    small = table(4, 1.0, [0.0, 1.0, 0.0, 3.0])  # rows 1 and 3 only
    big = table(6, 2.0, [1.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # rows 0 and 5 only
    data = OfflineData.stack([small, big], [2, 1])
    assert data.has_policy_probabilities and data.policy_cdf is None
    u = torch.rand(3, 500, generator=torch.Generator().manual_seed(0))
    rows = data.policy_rows(u)
    assert torch.equal(rows[:2], small.policy_rows(u[:2])) and torch.equal(rows[2:], big.policy_rows(u[2:]) + 4)
    assert set(rows[:2].unique().tolist()) == {1, 3} and set(rows[2].unique().tolist()) == {4, 9}
    # a table without probabilities (a cell without OPER-R): its members keep the rows given for them
    plain = OfflineData.from_arrays(torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(3), torch.zeros(3, 2),
                                    torch.zeros(3), [0.0, 0.0], [1.0, 1.0], "cpu")
    mixed = OfflineData.stack([small, plain], [2, 1])
    uniform = torch.randint(3, (3, 500), generator=torch.Generator().manual_seed(1)) + 4
    rows = mixed.policy_rows(u, uniform)
    assert torch.equal(rows[:2], small.policy_rows(u[:2])) and torch.equal(rows[2], uniform[2])


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
