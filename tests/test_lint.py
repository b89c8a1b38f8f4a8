"""The workflow is lint-clean and formatted, every rule says what it does, and the run lines the
paper configs and READMEs show work as written, each config running its own experiment only."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PAPER_CONFIGS, ROOT, job_counts, project_copy, training_jobs


def _snakemake(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_snakemake_lint_is_clean():
    proc = _snakemake("--lint", "--cores", "1")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_finds_nothing_to_change():
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "."], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + "\nrun `snakefmt .` to format"


def test_every_rule_has_a_docstring_that_list_rules_shows():
    proc = _snakemake("--list-rules")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rules = [line.strip() for line in proc.stdout.splitlines() if re.match(r"^\w+( |$)", line.strip())]
    assert len(rules) >= 19, proc.stdout
    undocumented = [r for r in rules if not re.fullmatch(r"\w+ \(.{10,}\)", r)]
    assert not undocumented, undocumented


def _run_lines() -> list[tuple[str, str]]:
    """(where, command) of every `snakemake --configfile ...` line the project tells users to run."""
    lines = []
    for path in sorted((ROOT / "config" / "paper").glob("*.yaml")):
        lines += [(path.name, m[1]) for m in re.finditer(r"^# Run: (snakemake .*)$", path.read_text(), re.M)]
    for doc in ("README.md", "config/paper/README.md"):
        lines += [(doc, m[1].split("#")[0].strip()) for m in
                  re.finditer(r"^(snakemake --configfile .*)$", (ROOT / doc).read_text(), re.M)]
    return lines


def test_every_paper_config_shows_its_run_line():
    shown = {where for where, _ in _run_lines()}
    assert set(PAPER_CONFIGS) <= shown


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project to dry-run the lines in (a dry run still writes .snakemake/)."""
    dest = tmp_path_factory.mktemp("project")
    project_copy(dest)
    shutil.copytree(ROOT / "config", dest / "config")
    return dest


@pytest.mark.parametrize("where, command", _run_lines(), ids=lambda x: x if x.endswith((".yaml", ".md")) else "")
def test_run_line_works_as_written_and_plans_only_its_experiment(project, where, command):
    args = shlex.split(command)
    assert args[0] == "snakemake"
    proc = _snakemake(*args[1:], "-n", cwd=project)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    config = re.search(r"--configfile (\S+)", command)[1]
    target, n_train, _, n_online, n_theory = PAPER_CONFIGS[Path(config).name]
    counts = job_counts(proc.stdout)
    n_jobs = training_jobs(counts)
    assert n_jobs == n_train and counts.get("train_online", 0) == n_online
    assert sum(v for k, v in counts.items() if k.startswith("theory_")) == n_theory
    if not n_train:  # no offline run: no data, no report of runs
        assert not {"recipe_train", "dataset_table", "report_tables", "predictions"} & set(counts), counts
