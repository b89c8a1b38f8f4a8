"""`seemrl.workflow.Plan`, what the Snakemake rules call, as plain Python (no Snakemake run)."""
import copy
import json

import pytest
from helpers import DEFAULT_CONFIG, ROOT

from seemrl.config import ConfigError
from seemrl.workflow import TRAINING_CODE, Plan, percent_label


@pytest.fixture
def config(monkeypatch):
    monkeypatch.chdir(ROOT)  # the registry path in the config is relative to the project
    return copy.deepcopy(DEFAULT_CONFIG)


def test_cells_seeds_params_and_paths_of_the_default_config(config):
    plan = Plan(config, ROOT)
    exp = config["experiment"]
    sizes = [len(exp[k]) for k in ("datasets", "percents", "algorithms", "critic_norms")]
    assert len(plan.cells()) == sizes[0] * sizes[1] * sizes[2] * sizes[3]
    cell = plan.cells()[0]
    assert plan.seeds(**cell) == ",".join(map(str, exp["seeds"]))
    params = json.loads(plan.train_params(cell["algo"], cell["norm"]))
    assert params["critic"] == config["critic_norms"][cell["norm"]] and "trainer" not in params
    assert plan.run_paths("run.json")[0] == "results/runs/{dataset}/{percent}pct/{algo}/{norm}/run.json".format(**cell)
    assert plan.report_outputs()[0] == "results/report/summary.csv"
    assert [percent_label(p) for p in (10, 0.5, 100.0)] == ["10", "0.5", "100"]


def test_a_training_job_depends_on_its_own_algorithm_and_the_training_stage_only(config):
    config["algorithms"]["iql_x"] = {"trainer": "iql"}
    plan = Plan(config, ROOT)
    code = plan.train_code("iql_x")
    assert any(p.endswith("algos/iql.py") for p in code) and any(p.endswith("algos/base.py") for p in code)
    assert not any(p.endswith("algos/td3.py") for p in code)  # no algorithm is another one's base
    assert len(code) == len(TRAINING_CODE) + 2 and all(not p.startswith("/") for p in code)


def test_names_that_do_not_resolve_are_named(config):
    config["experiment"]["algorithms"] = ["td3_sem"]
    with pytest.raises(ValueError, match=r"experiment.algorithms: unknown name\(s\) \['td3_sem'\]; .*td3_seem"):
        Plan(config, ROOT)


def test_a_renamed_setting_is_named_with_its_new_name(config):
    config["algorithms"]["td3_seem"]["lr"] = 1e-3
    with pytest.raises(ConfigError, match="algorithms.td3_seem.lr: renamed; write actor_lr and critic_lr instead"):
        Plan(config, ROOT)


def test_job_shell_prefix_carries_where_a_job_runs_not_what_it_computes(config):
    config["resources"].update(device="cuda", gpu_slots=2, lease_dir="/tmp/leases", eval_overlap=False)
    config["tracking"] = {"tensorboard": True}
    prefix = Plan(config, ROOT).job_shell_prefix("/opt/venv/bin")
    assert prefix.startswith("set -euo pipefail; export PATH=/opt/venv/bin:")
    for export in ("SEEMRL_DEVICE=cuda", "SEEMRL_GPU_SLOTS=2", "SEEMRL_LEASE_DIR=/tmp/leases", "SEEMRL_EVAL_OVERLAP=0",
                   "SEEMRL_TRACKING='{{\"tensorboard\": true}}'"):  # braces doubled for Snakemake's format
        assert f"export {export};" in prefix
    config["resources"].pop("eval_overlap")  # on unless the config says otherwise
    assert "export SEEMRL_EVAL_OVERLAP=1;" in Plan(config, ROOT).job_shell_prefix(None)
    assert "export PATH" not in Plan(config, ROOT).job_shell_prefix(None)  # under conda: the env's own python


def test_theory_flags_and_online_params(config):
    config["theory"] = {"toy": {"seem_every": 5, "log_q": True, "hidden": [8, 8]}}
    config["online"] = {"envs": ["Hopper-v5"], "seeds": [0], "settings": {"steps": 100},
                        "variants": {"no_ema": {"tau": 1.0}}}
    plan = Plan(config, ROOT)
    assert plan.theory_flags("toy") == "--hidden 8 8 --log-q --seem-every 5"
    assert plan.theory_outputs()[0] == "results/theory/toy/toy_steps.parquet"
    assert json.loads(plan.online_params("no_ema")) == {"steps": 100, "tau": 1.0}
    assert plan.online_paths("run.json") == ["results/online/Hopper-v5/no_ema/run.json"]


def test_report_outputs_follow_the_runs_and_the_report_spec(config):
    plan = Plan(config, ROOT)
    out = plan.report_outputs()
    assert "results/report/curves/hopper-demo.png" in out and "results/report/totals/xpercent.pdf" in out
    assert "results/report/claims.md" in out and "results/report/seem_vs_gamma.png" not in out  # one gamma
    # no evaluation: no scores, curves, totals or tables; the SEEM report and the claims stay
    config["algorithms"]["td3_seem"]["eval_every"] = 0
    config["report"]["tables"] = {"table1": {"columns": {"IQL": {"algorithms": ["td3_*"]}}}}
    out = Plan(config, ROOT).report_outputs()
    assert not [o for o in out if "curves" in o or "totals" in o or "tables" in o or "scores" in o]
    assert "results/report/seem_q/hopper-demo.png" in out and "results/report/claims.csv" in out


def test_a_table_is_made_when_a_column_selects_a_run_and_names_a_paper_table(config):
    config["report"]["tables"] = {"table1": {"columns": {"IQL": {"algorithms": ["td3_*"], "critic_norms": ["ln"]}}},
                                  "table4": {"columns": {"LN": {"algorithms": ["nothing_*"]}}}}
    plan = Plan(config, ROOT)
    assert plan.report_tables() == ["table1"]  # table4 selects no run
    assert json.loads(plan.report_artefact("tables", "table1"))["paper"] == "table1"
    assert plan.caption("tables", "table1") == ("2 runs; 2 seeds each; 5,000 gradient steps; data: hopper-demo "
                                                "(generated here by D4RL's recipe 'demo' (Hopper-v5, expert))")
    config["report"]["tables"] = {"tabel1": {"columns": {"IQL": {}}}}
    with pytest.raises(ValueError, match="report.tables.tabel1.paper: 'tabel1' is not in config/paper/"
                                         "paper_results.yaml"):
        Plan(config, ROOT)


def test_a_figure_set_to_null_by_a_merged_config_is_not_made(config):
    config["report"]["totals"] = {"xpercent": None, "mine": {"lines": {"TD3": {"algorithms": ["td3_seem"]}}}}
    plan = Plan(config, ROOT)
    assert plan.report_totals() == ["mine"]
    assert "results/report/totals/mine.png" in plan.report_outputs()


def test_seem_against_gamma_only_when_gamma_varies(config):
    config["algorithms"]["td3_g"] = {**config["algorithms"]["td3_seem"], "gamma": 0.9}
    config["experiment"]["algorithms"] = ["td3_seem", "td3_g"]
    plan = Plan(config, ROOT)
    assert plan.gamma_varies() and "results/report/seem_vs_gamma.png" in plan.report_outputs()


def test_the_claims_report_reads_what_the_config_has(config):
    inputs = Plan(config, ROOT).claims_inputs()
    assert inputs["scores"] == ["results/report/scores.csv"] and inputs["paper"] == [
        "config/paper/paper_results.yaml"]
    assert len(inputs["theory"]) == 4 and inputs["online_metrics"] == []
    config["experiment"]["algorithms"] = ["td3_seem"]
    config["theory"], config["experiment"] = None, []
    config["online"]["envs"] = ["Hopper-v5"]
    inputs = Plan(config, ROOT).claims_inputs()
    assert "scores" not in inputs and "seeds" not in inputs and len(inputs["online_metrics"]) == 3


def test_datasets_of_different_sizes_are_refused_in_one_stack_at_plan_time(config):
    """`train_together: [datasets]` groups cells into one stack, which holds one (state, action)
    shape: Hopper's (11, 3) beside Walker2d's (17, 6) is refused when the plan is made, naming the
    grid and both datasets; Walker2d beside HalfCheetah (17, 6 both) and AntMaze's d4rl mazes (29, 8)
    group, and a Minari maze (31, 8: its goals are in its observation) does not join the d4rl ones."""
    config["experiment"].update(datasets=["walker2d-medium-v2", "halfcheetah-medium-v2"], train_together=["datasets"])
    groups = Plan(config, ROOT).train_groups()
    assert [len(cells) for cells in groups.values()] == [2, 2, 2, 2]  # 2 percents x 2 norms, each of 2 datasets
    config["experiment"]["datasets"] = ["walker2d-medium-v2", "hopper-medium-v2"]
    with pytest.raises(ValueError, match=r"experiment\[0\]\.train_together: datasets walker2d-medium-v2 .*\(17, 6\)"
                                         r".* hopper-medium-v2 \(\(11, 3\)\)"):
        Plan(config, ROOT).train_groups()
    plan = Plan(config, ROOT)
    assert plan.dataset_dims("antmaze-large-play-v2") == (29, 8) and plan.dataset_dims("antmaze-umaze-v0") == (29, 8)
    assert plan.dataset_dims("minari-antmaze-umaze-v1") == (31, 8)
    config["experiment"]["datasets"] = ["antmaze-umaze-v2", "antmaze-large-play-v2", "minari-antmaze-umaze-v1"]
    with pytest.raises(ValueError, match="minari-antmaze-umaze-v1 \\(\\(31, 8\\)\\)"):
        Plan(config, ROOT).train_groups()
    config["experiment"].pop("train_together")  # cells that train alone may differ
    assert Plan(config, ROOT).train_groups() == {}
