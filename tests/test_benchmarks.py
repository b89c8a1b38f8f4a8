"""The benchmark scripts keep working (tiny sizes on CPU); their figures live in benchmarks/README.md."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script, args, needle", [
    ("data_load_subset.py", ["--rows", "2000"], "target <= 2 s"),
    ("train_throughput.py", ["--tiny", "--iters", "2", "--seeds", "1", "2"], "| layernorm | seemrl stacked | ieee | 2 |"),
    ("antmaze_eval_speed.py", ["--tiny"], "| 2 | 80 |"),
    # the cost table of the README: jobs from the config, GPU-hours from the measured rates, disk measured
    ("estimate_cost.py", ["table1.yaml", "theory.yaml"], "| table1.yaml | 24 | 0 | 15.7 | 0.5 | 11.4 |"),
    ("recipe_speed.py", ["--device", "cpu", "--steps", "300", "--learning-starts", "150", "--hidden", "16", "16",
                         "--only", "plain", "recipe", "parallel", "--parallel", "Hopper-v5", "HalfCheetah-v5"],
     "| recipe's SAC, 2 envs at once (threads, one stream each) | HalfCheetah-v5 | 300 |"),
])
def test_benchmark_runs_at_tiny_size(script, args, needle):
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert needle in proc.stdout
