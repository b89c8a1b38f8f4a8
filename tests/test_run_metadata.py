"""Run metadata from Snakemake benchmark files: the rule of each file, per-rule sums, clear errors.
(The end-to-end workflow test checks it against a real run's files.)"""
from pathlib import Path

import pytest

from seemrl.report.run_metadata import per_rule, read_benchmarks, rule_of

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


@pytest.mark.parametrize("rel, rule", [
    ("runs/hopper/10pct/td3bc/ln/train.tsv", "train"),
    ("runs/hopper/10pct/td3bc/ln/seem.tsv", "seem"),
    ("online/Hopper-v5/sac_ema/train.tsv", "train_online"),
    ("recipe_train/evidence-Hopper-v5.tsv", "recipe_train"),
    ("train_together/hopper_allpct_td3bc_ln.tsv", "train_together"),
    ("claims.tsv", "claims"),
])
def test_rule_of_a_benchmark_path(rel, rule):
    assert rule_of(Path(rel)) == rule


def _write(path: Path, seconds: float, rss: float = 10.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t0\t{seconds / 2}\n")


def test_per_rule_sums_and_orders_by_total(tmp_path):
    _write(tmp_path / "runs/a/1pct/x/none/train.tsv", 10.0, rss=100)
    _write(tmp_path / "runs/a/10pct/x/none/train.tsv", 30.0, rss=300)
    _write(tmp_path / "claims.tsv", 2.0)
    rules = per_rule(read_benchmarks(tmp_path))
    assert list(rules.rule) == ["train", "claims"]
    train = rules.iloc[0]
    assert (train.jobs, train.total_s, train.mean_s, train.max_s, train.max_rss_mb) == (2, 40.0, 20.0, 30.0, 300.0)


def test_bad_or_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_benchmarks(tmp_path)
    bad = tmp_path / "claims.tsv"
    bad.write_text("seconds\n1\n")
    with pytest.raises(ValueError, match="claims.tsv: not a Snakemake benchmark file"):
        read_benchmarks(tmp_path)


def test_the_run_hosts_environment_is_recorded_there_and_used_elsewhere(tmp_path, capsys):
    """A run on a lent GPU host: its environment is printed there (--print-environment) and the
    metadata, written on another host, carries that one, not the writer's."""
    import json

    from seemrl.cli import main

    _write(tmp_path / "bench/runs/a/1pct/x/none/train.tsv", 10.0)
    main(["run-metadata", "--print-environment"])
    here = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    there = {**here, "gpus": ["NVIDIA H100 80GB HBM3"], "cpus": 16, "torch": "2.11.0+cu130"}
    (tmp_path / "env.json").write_text(json.dumps(there))
    args = ["run-metadata", "--benchmarks", str(tmp_path / "bench"), "--commit", "abc", "--run-command", "snakemake",
            "--config", "c.yaml", "--json", str(tmp_path / "m.json"), "--markdown", str(tmp_path / "m.md")]
    main(args + ["--environment", str(tmp_path / "env.json")])
    assert json.loads((tmp_path / "m.json").read_text())["environment"] == there
    assert "GPU: NVIDIA H100 80GB HBM3; 16 CPU cores; torch 2.11.0+cu130" in (tmp_path / "m.md").read_text()
    (tmp_path / "bad.json").write_text(json.dumps({"gpus": []}))
    with pytest.raises(SystemExit, match="bad.json"):
        main(args + ["--environment", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="needs --commit"):
        main(["run-metadata", "--benchmarks", str(tmp_path / "bench")])
