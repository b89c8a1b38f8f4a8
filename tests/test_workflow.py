"""The Snakemake workflow as a user runs it: dry-run job counts, config validation, and an
end-to-end run of the default DAG at tiny size, then a second run that has nothing to do."""
import copy
import functools
import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from seemrl.report.run_metadata import write_run_metadata
from helpers import (DEFAULT_CONFIG, PAPER_CONFIGS, PAPER_REPORTS, ROOT, TINY, job_counts, project_copy, snakemake,
                     training_jobs)

def test_dry_run_job_counts_of_default_config(tmp_path):
    out = snakemake(tmp_path, DEFAULT_CONFIG, "-n").stdout
    exp = DEFAULT_CONFIG["experiment"]
    n_cells = len(exp["datasets"]) * len(exp["percents"]) * len(exp["algorithms"]) * len(exp["critic_norms"])
    assert n_cells == 4
    assert job_counts(out) == {
        "recipe_train": 1, "recipe_dataset": 1, "dataset_table": 1,
        "subset": len(exp["percents"]), "train": n_cells, "seem": n_cells,
        "report_tables": 1, "predictions": 1, "all": 1,
        "theory_toy": 1, "theory_ntk_map": 1, "theory_baird": 1, "theory_homogeneity": 1,
        # the demo's report: scores, learning curves and SEEM/Q per dataset, the X% figure, claims
        "report_scores": 1, "plot_curves": 1, "plot_seem_q": 1, "report_totals": 1, "plot_totals": 1, "claims": 1,
        "plot_growth": 1,
    }
    # one gamma: no SEEM-vs-gamma figure; no paper table named
    assert "seem_vs_gamma" not in out and "results/report/tables/" not in out


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_configs_validate_and_plan_the_expected_jobs(tmp_path, name):
    target, n_train, n_seem, n_online, n_theory = PAPER_CONFIGS[name]
    config = copy.deepcopy(DEFAULT_CONFIG)
    paper = yaml.safe_load((ROOT / "config" / "paper" / name).read_text())
    for key, value in paper.items():  # what Snakemake's --configfile does: a recursive update
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    out = snakemake(tmp_path, config, "-n", target).stdout
    counts = job_counts(out)
    # training jobs: one per cell, or one per group of cells trained together
    n_jobs = training_jobs(counts)
    assert n_jobs == n_train and counts.get("seem", 0) == n_seem
    assert counts.get("train_online", 0) == n_online
    assert sum(v for k, v in counts.items() if k.startswith("theory_")) == n_theory
    # the dry run lists the artefacts the config's report makes, and no others
    report_jobs, artefacts = PAPER_REPORTS[name]
    report_rules = ("report_tables", "report_scores", "predictions", "claims", "plot_growth", "paper_table",
                    "report_totals", "plot_totals", "plot_curves", "plot_seem_q", "plot_seem_vs_gamma", "report_online")
    assert {k: v for k, v in counts.items() if k in report_rules} == report_jobs
    missing = [a for a in artefacts if a not in out]
    assert not missing, missing


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["algorithms"]["td3_seem"].__setitem__("stpes", 10), "algorithms.td3_seem: unknown field(s) ['stpes']"),
    (lambda c: c.__setitem__("analyses", {}), "'analyses' was unexpected"),
    (lambda c: c["experiment"].__setitem__("critic_norms", ["none", "lnn"]), "experiment.critic_norms"),
    (lambda c: c["experiment"].__setitem__("percents", [0]), "percents"),
    (lambda c: c["experiment"].__setitem__("datasets", ["hopper-medum-v2"]), "hopper-medium-v2"),
    (lambda c: c["recipes"]["demo"].__setitem__("sac_step", 5), "recipes.demo: unknown field(s) ['sac_step']"),
    (lambda c: c.__setitem__("registry", "config/nope.yaml"), "config/nope.yaml"),
    (lambda c: c["algorithms"].__setitem__("iql", {"trainer": "iql", "expectil": 0.7}) or
     c["experiment"]["algorithms"].append("iql"), "algorithms.iql: unknown field(s) ['expectil']"),
    (lambda c: c["algorithms"]["td3_seem"].__setitem__("policy_delay", 0), "policy_delay"),
    (lambda c: c["algorithms"].__setitem__("cql", {"trainer": "cql", "cql_n_actions": 0}) or
     c["experiment"]["algorithms"].append("cql"), "algorithms.cql"),
    (lambda c: c.__setitem__("experiment", [c["experiment"], {**c["experiment"], "seeds": [5]}]),
     "in two grids with different seeds"),
])
def test_bad_config_is_rejected_with_the_key_named(tmp_path, mutate, needle):
    config = copy.deepcopy(DEFAULT_CONFIG)
    mutate(config)
    proc = snakemake(tmp_path, config, "-n", check=False)
    assert proc.returncode != 0
    assert needle in proc.stdout + proc.stderr


# Every algorithm's fields are typed by its Config: a wrong type, a wrong length and an unknown field
# each fail when the workflow is read, naming the key and the expected type; a renamed setting is
# named with what replaces it.
TRAINERS = ("td3", "iql", "cql", "diffql")


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("field, value, needles", [
    ("critic_lr", "3e-4", ["expected a number, got '3e-4' (a string)", "write 3.0e-4"]),
    ("hidden", "256", ["hidden: expected a list of integers (at least 1), got '256' (a string)"]),
    ("hidden", [], ["hidden: expected a list of integers (at least 1), got 0 item(s)"]),
    ("batch_size", 25.6, ["batch_size: expected an integer, got 25.6 (a number)"]),
    ("stpes", 10, ["unknown field(s) ['stpes']"]),
    ("reward_mode", "minus1", ["algorithms.mine.reward_mode: renamed; write reward_transform instead"]),
])
def test_every_algorithm_field_is_typed_by_its_config(tmp_path, trainer, field, value, needles):
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["algorithms"]["mine"] = {"trainer": trainer, field: value}  # defined, used by no cell: checked too
    out = "\n".join(snakemake(tmp_path, config, "-n", check=False).stdout.splitlines()[:3])
    assert f"config key algorithms.mine" in out and all(n in out for n in needles), out


@pytest.mark.parametrize("section, mutate, needle", [
    ("critic_norms", lambda c: c["critic_norms"]["ln"].__setitem__("affine", "yes"),
     "critic_norms.ln.affine: expected true or false, got 'yes'"),
    ("recipes", lambda c: c["recipes"]["demo"].__setitem__("hidden", [256, "256"]),
     "recipes.demo.hidden.1: expected an integer, got '256' (a string)"),
    ("online", lambda c: c["online"]["variants"]["sac_ema"].__setitem__("tau", "5e-3"),
     "online.variants.sac_ema.tau: expected a number, got '5e-3' (a string) (YAML"),
])
def test_other_typed_sections_name_the_key(tmp_path, section, mutate, needle):
    config = copy.deepcopy(DEFAULT_CONFIG)
    mutate(config)
    proc = snakemake(tmp_path, config, "-n", check=False)
    assert proc.returncode != 0 and needle in proc.stdout, proc.stdout[-2000:]


@pytest.mark.slow
def test_end_to_end_tiny_then_nothing_to_do(tmp_path):
    # our own copy of the workflow and package: the test edits code below
    snakefile = project_copy(tmp_path / "project")
    smk = functools.partial(snakemake, tmp_path, snakefile=snakefile)
    smk({**TINY, "tracking": {"tensorboard": True}})  # the first run logs to TensorBoard too

    # data: a real Minari dataset, a Parquet table, nested subsets
    assert (tmp_path / "resources/generated/demo/Hopper-v5/minari/seemrl/hopper-expert-v0/data/main_data.hdf5").is_file()
    table = pd.read_parquet(tmp_path / "resources/datasets/hopper-demo/transitions.parquet")
    assert len(table) == 400
    half = pd.read_parquet(tmp_path / "resources/datasets/hopper-demo/subset-50pct.parquet")
    assert len(half) == 200

    # training and analysis: every checkpoint of every seed analysed
    run = tmp_path / "results/runs/hopper-demo/50pct/td3_seem/ln"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt")) == [
        f"step_{s:08d}.pt" for s in (0, 10, 20, 30)]
    seem = pd.read_parquet(run / "seem.parquet")
    assert sorted(seem.step.unique()) == [0, 10, 20, 30]
    assert sorted(seem.seed.unique()) == [0, 1]
    assert seem["seem"].notna().all()

    # report: one summary row per cell (percents in numeric order), the figures are PNGs
    summary = pd.read_csv(tmp_path / "results/report/summary.csv")
    assert len(summary) == 4 and list(summary.percent) == [50, 50, 100, 100]
    for figure in ("seem_q/hopper-demo.png", "curves/hopper-demo.png", "totals/xpercent.png", "growth.png",
                   "totals/xpercent_tasks.png", "totals/xpercent_profiles.png"):
        assert (tmp_path / "results/report" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    assert (tmp_path / "results/report/totals/xpercent.pdf").read_bytes()[:4] == b"%PDF"
    assert not (tmp_path / "results/report/seem_vs_gamma.png").exists()  # one gamma: nothing to plot against
    assert (tmp_path / "results/report/summary.md").read_text().startswith("|")
    # per-seed scores and the X% totals: 2 seeds x 4 cells; a total per (critic option, percent), LN's gain
    scores = pd.read_csv(tmp_path / "results/report/scores.csv")
    assert len(scores) == 8 and scores.last10_score.notna().all() and (scores.steps == 30).all()
    totals = pd.read_csv(tmp_path / "results/report/totals/xpercent.csv")
    assert sorted(zip(totals[totals.kind == "total"].critic_norm, totals[totals.kind == "total"].percent)) == [
        ("ln", 50), ("ln", 100), ("none", 50), ("none", 100)]
    one = scores[(scores.critic_norm == "ln") & (scores.percent == 50)].last10_score
    assert totals[(totals.kind == "total") & (totals.critic_norm == "ln") & (totals.percent == 50)]["mean"].item() \
        == pytest.approx(one.mean())
    assert sorted(totals[totals.kind == "gain"].percent) == [50, 100]
    # the claims report: every claim with a verdict, honest about the scale
    claims = pd.read_csv(tmp_path / "results/report/claims.csv")
    assert set(claims.verdict) <= {"holds", "does not hold", "not run here", "too few runs"}
    assert claims.set_index("claim").loc["Online SAC without EMA diverges; LayerNorm fixes it", "verdict"] == \
        "not run here"
    assert (claims[claims.claim.str.startswith("LN lifts")].verdict == "too few runs").all()  # 2 seeds
    text = (tmp_path / "results/report/claims.md").read_text()
    assert "30 gradient steps" in text and "not whether the paper's numbers reproduce" in text
    predictions = pd.read_csv(tmp_path / "results/report/predictions.csv")
    assert len(predictions) == 4 * 2  # one row per (run, seed)
    assert "precision" in (tmp_path / "results/report/predictions.md").read_text()

    # every job left its Snakemake benchmark file; run-metadata sums them per rule
    meta = write_run_metadata(tmp_path / "results/benchmarks", tmp_path / "meta.json", tmp_path / "meta.md",
                              commit="abc", command="snakemake", config="tiny")
    assert {r["rule"]: r["jobs"] for r in meta["rules"]} == {
        "recipe_train": 1, "recipe_dataset": 1, "dataset_table": 1, "subset": 2, "train": 4, "seem": 4,
        "report_tables": 1, "predictions": 1, "report_scores": 1, "plot_curves": 1, "plot_seem_q": 1,
        "report_totals": 1, "plot_totals": 1, "claims": 1, "plot_growth": 1,
        "theory_toy": 1, "theory_ntk_map": 1, "theory_baird": 1, "theory_homogeneity": 1}
    assert all(r["total_s"] > 0 for r in meta["rules"]) and meta["environment"]["gpus"] == []
    assert "| train " in (tmp_path / "meta.md").read_text()

    # theory experiments: their tables and figures
    toy = pd.read_csv(tmp_path / "results/theory/toy/toy_summary.csv")
    assert len(toy) == 1
    for experiment in ("toy", "ntk_map", "baird", "homogeneity"):
        assert (tmp_path / f"results/theory/{experiment}/{experiment}.png").read_bytes()[:4] == b"\x89PNG"

    # tracking reached the jobs through their environment: event files of every training job
    events = {str(p.parent.relative_to(tmp_path)) for p in (tmp_path / "results/tensorboard").rglob("events.*")}
    assert "results/tensorboard/hopper-demo/50pct/td3_seem/ln/seed_1" in events
    assert "results/tensorboard/demo/Hopper-v5/seed_0" in events and len(events) == 4 * 2 + 1

    # every training job left its progress file: the live view lists them, finished
    status = subprocess.run([sys.executable, "-m", "seemrl", "status", "--root", str(tmp_path), "--all"],
                            capture_output=True, text=True, cwd=tmp_path / "project", timeout=60).stdout
    assert "0 running, 0 stopped, 0 failed, 5 done" in status, status
    assert "recipe_train  demo/Hopper-v5" in status and "hopper-demo/50pct/td3_seem/ln" in status

    # a self-contained HTML report with every figure and its caption
    smk(TINY, "--report", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "hopper-demo.png" in html and "toy.png" in html and "Baird" in html and "claims.csv" in html
    assert "2 seeds each; 30 gradient steps" in html  # captions say what ran

    # idempotent: a second run (tracking off: how jobs run) does nothing
    again = smk(TINY)
    assert "Nothing to be done" in again.stdout + again.stderr

    # where and how jobs run changes nothing they computed: no job is planned again
    moved_how = copy.deepcopy(TINY)
    moved_how["resources"] = {"device": "cpu", "train_threads": 2, "gpu_slots": 3, "lease_dir": str(tmp_path / "leases"),
                              "eval_overlap": False}
    moved_how["tracking"] = {"tensorboard": True, "wandb": True, "wandb_mode": "offline"}
    assert job_counts(smk(moved_how, "-n").stdout) == {}
    assert job_counts(smk(TINY, "-n", "--profile", str(tmp_path / "project/profiles/slurm"),
                          "--executor", "local").stdout) == {}

    # a finished project moved elsewhere (cluster scratch) is up to date where it lands
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.copytree(tmp_path, moved, symlinks=True)  # copy2: the files keep their mtimes
    try:
        out = snakemake(moved, TINY, "-n", snakefile=moved / "project/Snakefile").stdout
        assert job_counts(out) == {}, out[-3000:]
    finally:
        shutil.rmtree(moved)

    # changing one training parameter reruns training and what depends on it, nothing else
    changed = copy.deepcopy(TINY)
    changed["algorithms"]["td3_seem"]["critic_lr"] = 1e-3
    assert job_counts(smk(changed, "-n").stdout) == {
        "train": 4, "seem": 4, "report_tables": 1, "predictions": 1, "plot_seem_q": 1, "report_scores": 1, "plot_curves": 1,
        "report_totals": 1, "plot_totals": 1, "claims": 1, "plot_growth": 1, "all": 1}

    # a new dataset size re-collects data and retrains offline, but never reruns the SAC recipe
    resized = copy.deepcopy(TINY)
    resized["recipes"]["demo"]["n_transitions"] = 500
    counts = job_counts(smk(resized, "-n").stdout)
    assert "recipe_train" not in counts
    assert counts["recipe_dataset"] == 1 and counts["train"] == 4

    # editing package code reruns exactly the rules that use it (dry runs; each edit is undone).
    # An edit is new content with a new mtime: the copy keeps our files' old mtimes, so set it
    # after the outputs' explicitly
    def rerun_after_touching(module):
        path = tmp_path / "project/src/seemrl" / module
        text, before = path.read_text(), path.stat()
        path.write_text(text + "\n# an edit\n")
        os.utime(path, (time.time() + 60, time.time() + 60))
        try:
            return job_counts(smk(TINY, "-n").stdout)
        finally:
            path.write_text(text)
            os.utime(path, (before.st_atime, before.st_mtime))

    # a plot's edit redraws that plot only; a table's recomputes what reads it
    assert rerun_after_touching("report/plots/curves.py") == {"plot_curves": 1, "all": 1}
    assert rerun_after_touching("report/plots/totals.py") == {"plot_totals": 1, "all": 1}
    assert rerun_after_touching("report/plots/style.py") == {"plot_curves": 1, "plot_totals": 1, "plot_seem_q": 1,
                                                             "plot_growth": 1, "all": 1}
    assert rerun_after_touching("report/claims.py") == {"claims": 1, "all": 1}
    assert rerun_after_touching("report/tables.py") == {
        "report_tables": 1, "report_scores": 1, "report_totals": 1, "claims": 1, "plot_curves": 1, "plot_totals": 1,
        "all": 1}
    assert rerun_after_touching("analysis/predictions.py") == {"predictions": 1, "claims": 1, "plot_growth": 1,
                                                               "all": 1}
    assert rerun_after_touching("training/trainer.py") == {
        "train": 4, "seem": 4, "report_tables": 1, "predictions": 1, "plot_seem_q": 1, "report_scores": 1, "plot_curves": 1,
        "report_totals": 1, "plot_totals": 1, "claims": 1, "plot_growth": 1, "all": 1}
    assert rerun_after_touching("algos/iql.py") == {}  # another algorithm's file: no td3 job reruns
    assert rerun_after_touching("analysis/seem.py") == {
        "seem": 4, "report_tables": 1, "predictions": 1, "plot_seem_q": 1, "claims": 1, "plot_growth": 1, "all": 1}
    assert "Nothing to be done" in smk(TINY, "-n").stdout  # the mtimes are back

    # one normalisation's parameter reruns that normalisation's training jobs and their dependents
    ln_changed = copy.deepcopy(TINY)
    ln_changed["critic_norms"]["ln"] = {**ln_changed["critic_norms"]["ln"], "affine": False}
    assert job_counts(smk(ln_changed, "-n").stdout) == {
        "train": 2, "seem": 2, "report_tables": 1, "predictions": 1, "plot_seem_q": 1, "report_scores": 1, "plot_curves": 1,
        "report_totals": 1, "plot_totals": 1, "claims": 1, "plot_growth": 1, "all": 1}


@pytest.mark.slow
def test_online_sac_runs_and_plots_through_the_workflow(tmp_path):
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["online"] = {
        "envs": ["Hopper-v5"], "seeds": [0, 1],
        "settings": {"steps": 200, "learning_starts": 100, "batch_size": 32, "hidden": [16, 16],
                     "checkpoint_every": 100, "log_every": 50, "eval_every": 200, "eval_episodes": 1},
        "variants": {"sac_ema": {"tau": 0.005}, "sac_no_ema_ln": {"tau": 1.0, "critic": {"norm": "layernorm"}}},
    }
    dry = job_counts(snakemake(tmp_path, config, "-n", "results/report/online_sac.png").stdout)
    assert dry == {"train_online": 2, "report_online": 1}
    snakemake(tmp_path, config, "results/report/online_sac.png")
    run = tmp_path / "results/online/Hopper-v5/sac_no_ema_ln"
    metrics = pd.read_parquet(run / "metrics.parquet")
    assert sorted(metrics.seed.unique()) == [0, 1] and metrics.step.max() == 200
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt")) == [
        f"step_{s:08d}.pt" for s in (0, 100, 200)]
    evaluations = pd.read_parquet(run / "evaluations.parquet")
    assert evaluations.normalized_score.notna().all()  # Hopper's D4RL reference scores
    assert (tmp_path / "results/report/online_sac.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # only the changed variant reruns
    config["online"]["variants"]["sac_ema"]["tau"] = 0.01
    assert job_counts(snakemake(tmp_path, config, "-n", "results/report/online_sac.png").stdout) == {
        "train_online": 1, "report_online": 1}


def test_train_together_plans_one_job_per_group_and_trains_it(tmp_path):
    """`train_together: [percents]`: one job trains a dataset's X% cells of one algorithm and critic
    option; its cells' outputs are where `train` would put them, and a grouped cell gets no job of its own."""
    config = copy.deepcopy(TINY)
    config["theory"] = None
    config["experiment"]["train_together"] = ["percents"]
    counts = job_counts(snakemake(tmp_path, config, "-n").stdout)
    assert counts["train_together_hopper_demo_allpct_td3_seem_none"] == 1
    assert counts["train_together_hopper_demo_allpct_td3_seem_ln"] == 1
    assert "train" not in counts and counts["seem"] == 4
    # a cell in two groups is named
    config["experiment"] = [config["experiment"], {**config["experiment"], "train_together": ["datasets"],
                                                   "datasets": ["hopper-demo", "hopper-medium-v2"], "percents": [50]}]
    bad = snakemake(tmp_path, config, "-n", check=False)
    assert bad.returncode != 0 and "experiment[1].train_together" in bad.stdout + bad.stderr
    # a sweep: algorithms that differ only in their trainer's per-member settings share a stack, across
    # grids too, each cell with its own settings; one that differs in another setting trains alone
    config = copy.deepcopy(TINY)
    config["theory"] = None
    config["algorithms"]["td3_a1"] = {**config["algorithms"]["td3_seem"], "alpha": 1.0}
    config["algorithms"]["td3_tau"] = {**config["algorithms"]["td3_seem"], "tau": 0.5}
    grid = {**config["experiment"], "percents": [100], "critic_norms": ["ln"], "train_together": ["algorithms"]}
    config["experiment"] = [{**grid, "algorithms": ["td3_seem", "td3_tau"]}, {**grid, "algorithms": ["td3_a1"]}]
    out = snakemake(tmp_path, config, "-n", "-p").stdout
    counts = job_counts(out)
    assert counts["train_together_hopper_demo_100pct_td3_seem_and_1_more_ln"] == 1 and counts["train"] == 1, counts
    command = next(line for line in out.splitlines() if "seemrl train-together" in line)
    assert command.count('"params": {') == 2 and '"alpha": 1.0' in command and '"tau": 0.5' not in command
    # the README's sweep plans as it says: one job for its three algorithms, 15 members
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("**Sweeps in one stack.**"):].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = {**copy.deepcopy(TINY), **yaml.safe_load(block), "theory": None}
    out = snakemake(tmp_path, config, "-n", "-p").stdout
    assert training_jobs(job_counts(out)) == 1
    command = next(line for line in out.splitlines() if "seemrl train-together" in line)
    assert command.count('"seeds": [0, 1, 2, 3, 4]') == 3 and all(f'"alpha": {a}' in command for a in (1.0, 2.5, 10.0))
    # Diffusion-QL's cells share a stack too
    config = copy.deepcopy(TINY)
    config["theory"] = None
    config["algorithms"]["dql"] = {"trainer": "diffql"}
    config["experiment"].update(train_together=["percents"], algorithms=["dql"])
    counts = job_counts(snakemake(tmp_path, config, "-n").stdout)
    assert sum(v for k, v in counts.items() if k.startswith("train_together_") and "_dql_" in k) == 2, counts
    assert "train" not in counts

    # the grouped job for real: both cells' outputs, the same as the cell trained by `train` alone
    config = copy.deepcopy(TINY)
    config["theory"] = None
    config["experiment"].update(train_together=["percents"], critic_norms=["ln"])
    runs = [f"results/runs/hopper-demo/{p}pct/td3_seem/ln" for p in (50, 100)]
    snakemake(tmp_path, config, *(f"{r}/run.json" for r in runs))
    alone = tmp_path / "alone"
    config["experiment"].pop("train_together")
    shutil.copytree(tmp_path / "resources", alone / "resources")
    snakemake(alone, config, f"{runs[0]}/run.json", "--rerun-triggers", "mtime")
    for name in ("metrics.parquet", "evaluations.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / runs[0] / name),
                                      pd.read_parquet(alone / runs[0] / name), check_exact=False, rtol=1e-5)
    assert sorted(p.name for p in (tmp_path / runs[1] / "checkpoints").glob("*.pt")) == [
        f"step_{s:08d}.pt" for s in (0, 10, 20, 30)]
    assert (tmp_path / "results/benchmarks/train_together/hopper_demo_allpct_td3_seem_ln.tsv").is_file()
