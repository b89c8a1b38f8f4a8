"""The benchmark scripts keep working (tiny sizes on CPU); their figures live in benchmarks/README.md."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@pytest.mark.parametrize("script, args, needle", [
    ("data_load_subset.py", ["--rows", "2000"], "target <= 2 s"),
    ("train_throughput.py", ["--tiny", "--iters", "2", "--seeds", "1", "2"], "| layernorm | seemrl stacked | ieee | 2 |"),
    ("antmaze_eval_speed.py", ["--tiny"], "| 2 | 80 |"),
    # the cost table of the README: jobs from the config, GPU-hours from the measured rates, disk measured
    # (AntMaze evaluation from step 550k: 10 of 20 evaluations, 8.3 h instead of 16.6)
    ("estimate_cost.py", ["table1.yaml", "theory"], "| table1.yaml | 4 | 0 | 10.7 | 0.1 | 8.3 | 11.4 |"),
    # (a job of its own, with torch's default thread count in new threads: the evaluation thread
    # must compute on the job's one thread, or its actions round differently; this caught it)
    ("eval_overlap.py", ["--steps", "60", "--eval-every", "20", "--episodes", "1", "--seeds", "0", "--rows", "400"],
     "same evaluations: True"),
    ("recipe_speed.py", ["--device", "cpu", "--steps", "300", "--learning-starts", "150", "--hidden", "16", "16",
                         "--only", "plain", "recipe", "parallel", "--parallel", "Hopper-v5", "HalfCheetah-v5"],
     "| recipe's SAC, 2 envs at once (threads, one stream each) | HalfCheetah-v5 | 300 |"),
    # one process per environment (how the workflow runs recipes; on a GPU, with or without MPS)
    ("recipe_speed.py", ["--device", "cpu", "--steps", "300", "--learning-starts", "150", "--hidden", "16", "16",
                         "--only", "processes", "--parallel", "Hopper-v5", "HalfCheetah-v5"],
     "| recipe's SAC, 2 envs at once (processes, no MPS) | HalfCheetah-v5 | 300 |"),
])
def test_benchmark_runs_at_tiny_size(script, args, needle):
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert needle in proc.stdout


def test_estimate_cost_names_an_unknown_config():
    proc = subprocess.run([sys.executable, str(BENCH / "estimate_cost.py"), "table1", "tabel2"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "tabel2.yaml" in proc.stderr and "table1.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_peer_check_mean_std_says_when_one_seed_ran():
    sys.path.insert(0, str(BENCH))
    import peer_check

    assert peer_check.mean_std([7.18]) == "7.2 (1 seed)"
    assert peer_check.mean_std([1.0, 3.0]) == "2.0 ± 1.0"
    assert peer_check.mean_std([]) == peer_check.mean_std([1.0, None]) == "-"


def test_cql_q_trace_plumbing(tmp_path):
    """benchmarks/cql_q_trace.py traces seemrl's CQL with a sampled and with the mean action in
    the TD target (the two runs part: the target differs), every `--every` steps and at the last;
    d3rlpy's trace runs where d3rlpy is installed, else it is skipped with the reason."""
    import pandas as pd

    from helpers import make_transitions
    from seemrl.data.transitions import write_transitions

    t = make_transitions(episode_lengths=(40, 30, 50, 40), obs_dim=11, act_dim=3)
    t.meta.update(env_id="Hopper-v5", ref_min_score=-20.272305, ref_max_score=3234.3)
    write_transitions(tmp_path / "whole.parquet", t)
    proc = subprocess.run([sys.executable, str(BENCH / "cql_q_trace.py"), "--data", str(tmp_path / "whole.parquet"),
                           "--steps", "25", "--every", "10", "--hidden", "16", "16", "--q-rows", "50",
                           "--out", str(tmp_path / "trace.csv")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trace = pd.read_csv(tmp_path / "trace.csv")
    sample, mean = (trace[trace.side == f"seemrl, {k} a'"].set_index("step") for k in ("sample", "mean"))
    assert list(sample.index) == list(mean.index) == [10, 20, 25]
    assert (sample.q_data - mean.q_data).abs().max() > 1e-6
    peer = trace[trace.side.str.startswith("d3rlpy")]
    assert list(peer.step) == [10, 20, 25] or "d3rlpy trace skipped: d3rlpy is not importable" in proc.stdout
    assert "mean Q on the data's (s, a):" in proc.stdout


def test_a_d3rlpy_run_failing_in_a_worker_comes_back_named_and_picklable(tmp_path):
    """A d3rlpy run that fails in a pool worker raises an error the pool can send back (a plain
    RuntimeError naming the algorithm and seed, with the worker's traceback), whatever failed:
    here the import of d3rlpy (absent in CI) or the missing table."""
    import pickle

    sys.path.insert(0, str(BENCH))
    import peer_check

    task = ("cql", str(tmp_path / "missing.parquet"), 3, 10, "cpu", 1, {}, None, False, None, 0)
    with pytest.raises(RuntimeError, match="d3rlpy cql seed 3 failed") as err:
        peer_check.d3rlpy_seed_in_pool(task)
    assert "Traceback" in str(err.value)
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)


def test_peer_check_plumbing(tmp_path):
    """benchmarks/peer_check.py on a tiny Hopper-shaped table of whole episodes: seemrl's half runs
    and is scored by the evaluator; d3rlpy's half runs where d3rlpy is installed (not in the jobs'
    environment, so not in CI), else it is skipped with the reason. A table that is not whole
    episodes in order (an X% subset) is refused, naming the file."""
    import numpy as np

    from helpers import make_transitions
    from seemrl.data.transitions import write_transitions

    t = make_transitions(episode_lengths=(40, 30, 50, 40), obs_dim=11, act_dim=3)
    t.meta.update(env_id="Hopper-v5", ref_min_score=-20.272305, ref_max_score=3234.3)
    write_transitions(tmp_path / "whole.parquet", t)
    args = ["--steps", "20", "--seeds", "2", "--eval-episodes", "1", "--q-rows", "50", "--hidden", "16", "16", "--jobs", "2",
            "--device", "cpu"]
    # the algorithms in three runs: td3bc whole; iql and cql one side per file (seemrl on the GPU while
    # d3rlpy's seeds train on the host's cores), then one table from all, with a probe's speed column
    outs = []
    for algos, out, extra in ((["td3bc"], "a.json", []),
                              (["iql", "cql"], "b.json", ["--sides", "seemrl"]),
                              (["iql", "cql"], "c.json", ["--sides", "d3rlpy", "--d3rlpy-compile", "--d3rlpy-device", "cpu"])):
        proc = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--data", str(tmp_path / "whole.parquet"),
                               *args, *extra, "--algos", *algos, "--out", str(tmp_path / out)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for algo in algos:
            assert f"| {algo} | " in proc.stdout
        outs.append(proc.stdout)

    peer_installed = json.loads((tmp_path / "a.json").read_text())["d3rlpy"] is not None
    # --probe times d3rlpy alone (and writes its rates for the table), or says why it cannot
    proc = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--data", str(tmp_path / "whole.parquet"),
                           "--hidden", "16", "16", "--device", "cpu", "--algos", "td3bc", "--probe", "5", "--d3rlpy-update", "graph",
                           "--out", str(tmp_path / "probe.json")], capture_output=True, text=True, timeout=300)
    if not peer_installed:
        assert proc.returncode != 0 and "--probe times d3rlpy, which is not importable" in proc.stderr
    else:
        assert proc.returncode == 0 and "d3rlpy td3bc: " in proc.stdout and "(one seed alone, graph update)" in proc.stdout
        assert json.loads((tmp_path / "probe.json").read_text())["probes"][0]["update"] == "graph"
    files = [str(tmp_path / f) for f in ("a.json", "b.json", "c.json", "probe.json") if (tmp_path / f).exists()]
    proc = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--merge", *files,
                           "--out", str(tmp_path / "peer.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for algo in ("td3bc", "iql", "cql"):
        assert f"| {algo} | " in proc.stdout
    report = json.loads((tmp_path / "peer.json").read_text())
    assert set(report["algorithms"]) == {"td3bc", "iql", "cql"}
    assert [r["file"] for r in report["runs"]] == files
    ours = report["algorithms"]["cql"]["seemrl"]
    assert len(ours["scores"]) == 2 and all(np.isfinite(ours["q_mean"])) and ours["seed_steps_per_second"] > 0
    assert len(ours["q_policy"]) == 2 and all(np.isfinite(ours["q_policy"])) and ours["q_policy"] != ours["q_mean"]
    assert report["devices"]["seemrl"].startswith("CPU (")
    if not peer_installed:
        assert all("d3rlpy half skipped: d3rlpy is not importable" in out for out in (outs[0], outs[2]))
        assert "d3rlpy half skipped" not in outs[1]  # a seemrl-only run does not ask for d3rlpy
        assert report["algorithms"]["cql"]["d3rlpy"] is None and report["devices"]["d3rlpy"] is None
    else:
        cql = report["algorithms"]["cql"]
        assert len(cql["d3rlpy"]["scores"]) == 2 and cql["d3rlpy"]["seeds"] == [0, 1]
        assert len(cql["d3rlpy"]["q_policy"]) == 2 and all(np.isfinite(cql["d3rlpy"]["q_policy"]))
        assert cql["welch_p"] is not None  # both sides, from two files: the test is taken on the merged scores
        assert report["probes"][0]["rates"]["td3bc"] > 0
        assert re.search(r"^\| td3bc \|.*\| [0-9,]+ \|$", proc.stdout, re.M)  # the probe's column is filled
        c = json.loads((tmp_path / "c.json").read_text())
        assert c["d3rlpy_compile_graph"] is True and c["d3rlpy_update"] == "compile"
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["devices"]["seemrl"].startswith("CPU (") and b["devices"]["d3rlpy"] is None and len(b["data_sha256"]) == 64
    assert not (tmp_path / "b.json.tmp").exists()
    # a check split over runs by seed: d3rlpy's seeds of one algorithm are joined, overlapping ones refused
    proc = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--data", str(tmp_path / "whole.parquet"),
                           *args, "--sides", "d3rlpy", "--d3rlpy-device", "cpu", "--algos", "cql", "--seed-list", "2",
                           "--d3rlpy-state", str(tmp_path / "state"), "--d3rlpy-save-every", "10",
                           "--out", str(tmp_path / "f.json")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if peer_installed:  # the seed's state was kept; run again, it resumes at the end and scores the same policy
        assert json.loads((tmp_path / "state" / "cql-seed2-20.json").read_text())["step"] == 20
        again = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--data", str(tmp_path / "whole.parquet"),
                                *args, "--sides", "d3rlpy", "--d3rlpy-device", "cpu", "--algos", "cql", "--seed-list", "2",
                                "--d3rlpy-state", str(tmp_path / "state"), "--out", str(tmp_path / "g.json")],
                               capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and "resuming from step 20" in again.stderr, again.stderr[-3000:]
        f, g = (json.loads((tmp_path / n).read_text())["algorithms"]["cql"]["d3rlpy"] for n in ("f.json", "g.json"))
        assert f["scores"] == g["scores"] and f["q_mean"] == g["q_mean"]
    proc = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--merge", *files, str(tmp_path / "f.json"),
                           "--out", str(tmp_path / "joined.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if peer_installed:
        cql = json.loads((tmp_path / "joined.json").read_text())["algorithms"]["cql"]["d3rlpy"]
        assert cql["seeds"] == [0, 1, 2] and len(cql["scores"]) == len(cql["wall_seconds"]) == 3
        proc = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--merge", str(tmp_path / "c.json"),
                               str(tmp_path / "c.json")], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "c.json" in proc.stderr and "d3rlpy runs are already" in proc.stderr
    # one side of an algorithm in two files, or files of different runs, are refused, naming the file
    proc = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--merge", str(tmp_path / "a.json"),
                           str(tmp_path / "a.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "a.json" in proc.stderr and "td3bc" in proc.stderr
    other = json.loads((tmp_path / "b.json").read_text())
    other["steps"] = 40
    (tmp_path / "d.json").write_text(json.dumps(other))
    proc = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--merge", str(tmp_path / "a.json"),
                           str(tmp_path / "d.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "d.json" in proc.stderr and "steps" in proc.stderr
    other = json.loads((tmp_path / "b.json").read_text())
    other["devices"]["seemrl"] = "NVIDIA H100 80GB HBM3"
    (tmp_path / "e.json").write_text(json.dumps(other))
    proc = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--merge", str(tmp_path / "a.json"),
                           str(tmp_path / "e.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "e.json" in proc.stderr and "H100" in proc.stderr
    # the data are matched by their bytes: the same table by another path merges, other bytes do not
    other = json.loads((tmp_path / "b.json").read_text())
    other["data"] = "elsewhere/" + Path(other["data"]).name
    (tmp_path / "moved.json").write_text(json.dumps(other))
    proc = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--merge", str(tmp_path / "a.json"),
                           str(tmp_path / "moved.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    other["data_sha256"] = "0" * 64
    (tmp_path / "h.json").write_text(json.dumps(other))
    proc = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--merge", str(tmp_path / "a.json"),
                           str(tmp_path / "h.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "h.json" in proc.stderr and "data_sha256" in proc.stderr
    # rows out of episode order: refused with the file's name
    shuffled = make_transitions(episode_lengths=(40, 30), obs_dim=11, act_dim=3)
    order = np.random.default_rng(0).permutation(len(shuffled.obs))
    for name in ("obs", "next_obs", "action", "reward", "episode_id", "step"):
        setattr(shuffled, name, np.asarray(getattr(shuffled, name))[order])
    shuffled.terminal, shuffled.timeout = np.zeros(70, bool), np.zeros(70, bool)
    shuffled.timeout[-1] = True
    shuffled.meta.update(env_id="Hopper-v5")
    write_transitions(tmp_path / "subset.parquet", shuffled)
    proc = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--data", str(tmp_path / "subset.parquet"),
                           *args, "--algos", "td3bc"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "subset.parquet" in proc.stderr and "whole episodes" in proc.stderr


def test_peer_check_merges_the_committed_files_of_before_q_at_the_policy(tmp_path):
    """The committed peer-check files predate the Q-at-the-policy column: they still merge (the
    README's command), with that column empty, and d3rlpy's seeds from several files still join."""
    folder = ROOT / "docs/results/2026-12-06-evidence/peer_check"
    files = [str(folder / f) for f in ("seemrl_h100.json", "d3rlpy_iql_seeds01_cpu.json", "d3rlpy_iql_seeds234_cpu.json",
                                       "d3rlpy_td3bc_seeds01_cpu.json", "d3rlpy_td3bc_seeds23_cpu.json",
                                       "d3rlpy_td3bc_seeds4_cpu.json", "d3rlpy_probe_h100.json")]
    proc = subprocess.run([sys.executable, str(BENCH / "peer_check.py"), "--merge", *files, "--out", str(tmp_path / "m.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    iql = json.loads((tmp_path / "m.json").read_text())["algorithms"]["iql"]
    assert iql["d3rlpy"]["seeds"] == [0, 1, 2, 3, 4] and "q_policy" not in iql["d3rlpy"]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| iql |"))
    assert row.split(" | ")[6:8] == ["-", "-"]  # Q at the policy's action: not in these files


def test_jax_peer_tiny_or_says_it_is_skipped():
    """benchmarks/jax_peer.py: where JAX is importable (not in the jobs' environment, so not in CI)
    its tiny run prints a row per (algorithm, critic, seeds) with both rates and the precision each
    side measured; without JAX it says so and exits 0."""
    import importlib.util

    proc = subprocess.run([sys.executable, str(BENCH / "jax_peer.py"), "--tiny", "--seeds", "1", "--norms", "none",
                           "layernorm"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if importlib.util.find_spec("jax") is None:
        assert "JAX is not importable" in proc.stdout and "the JAX peer is skipped" in proc.stdout
        return
    assert "measured: seemrl IEEE-like" in proc.stdout and "JAX IEEE-like" in proc.stdout  # the CPU is full fp32
    import re

    for algo in ("td3bc", "iql"):
        for norm in ("none", "layernorm"):
            assert re.search(rf"^\| {algo} \| {norm} \| 1 \| [0-9,]+ \| [0-9,]+ \| [0-9.]+x \|$", proc.stdout, re.M), \
                (algo, norm, proc.stdout)


def test_profile_step_counts_the_step_it_profiles(tmp_path):
    """benchmarks/profile_step.py on the CPU: per configuration, the step's outermost ATen ops split
    into kinds that add up to the total, matmuls among them, and LayerNorm's extra ops counted."""
    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, str(BENCH / "profile_step.py"), "--tiny", "--steps", "2", "--modes", "eager",
                           "--seeds", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["algo"], r["critic"]): r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {(a, n) for a in ("td3bc", "iql") for n in ("none", "layernorm")}
    for (algo, norm), r in rows.items():
        assert r["seeds"] == 1 and r["mode"] == "eager"
        assert r["per_step"] > 0 and r["us_per_step"] > 0
        assert sum(k["per_step"] for k in r["kinds"].values()) == pytest.approx(r["per_step"])
        assert r["kinds"]["matmul"]["per_step"] >= 3  # three layers per network at least
        assert re.search(rf"^\| {algo} \| {norm} \| 1 \| eager \| {r['per_step']:.0f} \|", proc.stdout, re.M)
    for algo in ("td3bc", "iql"):
        assert rows[(algo, "layernorm")]["per_step"] > rows[(algo, "none")]["per_step"]


def test_profile_step_counts_fewer_matmuls_with_the_critics_joined(tmp_path):
    """The twin critics as one stack of 2S members run one batched matmul per layer where two
    stacks ran two: the profile of the same step with the critics kept apart counts more."""
    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, str(BENCH / "profile_step.py"), "--tiny", "--steps", "2", "--seeds", "2",
                           "--norms", "none", "--modes", "eager", "eager+critics-apart", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mm = {(r["algo"], r["mode"]): r["kinds"]["matmul"]["per_step"] for r in json.loads(out.read_text())["results"]}
    for algo in ("td3bc", "iql"):
        assert mm[algo, "eager"] < mm[algo, "eager+critics-apart"], mm


def test_profile_step_leaves_out_ranges_drawn_on_the_device():
    """A record_function range shows as a device event spanning its kernels (on an H100, Adam's
    `Optimizer.step#Adam.step` added 130 us per step to the kernels' time); it is not a kernel.
    A Triton kernel whose launcher left a host event of its name is one."""
    from types import SimpleNamespace

    sys.path.insert(0, str(BENCH))
    from profile_step import device_kernels

    cpu, cuda = "cpu", "cuda"
    events = [SimpleNamespace(name="Optimizer.step#Adam.step", device_type=cpu),
              SimpleNamespace(name="Optimizer.step#Adam.step", device_type=cuda),
              SimpleNamespace(name="aten::mm", device_type=cpu),
              SimpleNamespace(name="void multi_tensor_apply_kernel<FusedAdamMathFunctor>", device_type=cuda),
              SimpleNamespace(name="Memcpy DtoD (Device -> Device)", device_type=cuda),
              # Inductor's launcher records a host event named as its Triton kernel: still a kernel
              SimpleNamespace(name="triton_poi_fused_add_mish_0", device_type=cpu),
              SimpleNamespace(name="triton_poi_fused_add_mish_0", device_type=cuda, is_user_annotation=False),
              SimpleNamespace(name="my range", device_type=cuda, is_user_annotation=True)]
    assert [e.name for e in device_kernels(events, cuda)] == [
        "void multi_tensor_apply_kernel<FusedAdamMathFunctor>", "Memcpy DtoD (Device -> Device)",
        "triton_poi_fused_add_mish_0"]


def test_profile_step_switches_fused_adam_to_foreach():
    """The profile's `compiled+foreach-adam` trial: a fused Adam takes the foreach path from then
    on and steps as Adam (to rounding); other optimisers are left alone."""
    from types import SimpleNamespace

    import torch

    sys.path.insert(0, str(BENCH))
    from profile_step import foreach_adam

    torch.manual_seed(0)
    w = [torch.randn(5, 3) for _ in range(2)]
    params = [[torch.nn.Parameter(x.clone())] for x in (w[0], w[0], w[1])]
    fused = torch.optim.Adam(params[0], lr=1e-2, fused=True)
    plain = torch.optim.Adam(params[1], lr=1e-2)
    sgd = torch.optim.SGD(params[2], lr=1e-2)
    foreach_adam(SimpleNamespace(optimizers={"a": fused, "s": sgd}))
    assert (fused.param_groups[0]["fused"], fused.param_groups[0]["foreach"]) == (False, True)
    assert sgd.param_groups[0].get("fused") in (None, False) and sgd.param_groups[0].get("foreach") in (None, False)
    for _ in range(3):
        for opt, (p,) in ((fused, params[0]), (plain, params[1])):
            opt.zero_grad()
            (p ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(params[0][0], params[1][0])


def test_estimate_cost_counts_the_scheduled_evaluations():
    """The AntMaze evaluation estimate counts the steps a run evaluates at: every `eval_every` from
    `eval_from` on, and the last step once."""
    sys.path.insert(0, str(BENCH))
    from estimate_cost import evaluation_steps

    assert evaluation_steps(1_000_000, 50_000) == list(range(50_000, 1_000_001, 50_000))
    assert evaluation_steps(1_000_000, 50_000, 550_000) == list(range(550_000, 1_000_001, 50_000))
    assert evaluation_steps(130, 50, 60) == [100, 130]
    assert evaluation_steps(130, 0) == []


def test_setting_check_plumbing(tmp_path):
    """benchmarks/setting_check.py trains one algorithm twice on one table, with and without the
    setting under test (here Diffusion-QL's bfloat16 backup, at tiny sizes on the CPU), and
    prints both sides and their speed ratio; the JSON holds each side's per-seed numbers, and
    the two sides' critics differ (the setting took effect). A setting not written KEY=VALUE is
    refused, naming it."""
    from helpers import make_transitions
    from seemrl.data.transitions import write_transitions

    t = make_transitions(episode_lengths=(40, 30, 50, 40), obs_dim=11, act_dim=3)
    t.meta.update(env_id="Hopper-v5", ref_min_score=-20.272305, ref_max_score=3234.3)
    write_transitions(tmp_path / "t.parquet", t)
    base = ["hidden=[16,16,16]", "reward_transform=none", "normalize_states=true", "sample_steps=3",
            "backup_samples=3", "eval_samples=4", "batch_size=32"]
    cmd = [sys.executable, str(BENCH / "setting_check.py"), str(tmp_path / "t.parquet"), "--algo", "diffql",
           "--steps", "30", "--seeds", "0", "1", "--eval-episodes", "1", "--device", "cpu", "--base", *base]
    proc = subprocess.run([*cmd, "--setting", "backup_dtype=bfloat16", "--json", str(tmp_path / "c.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| with backup_dtype=bfloat16 | " in proc.stdout and "speed ratio" in proc.stdout
    out = json.loads((tmp_path / "c.json").read_text())
    as_given, with_setting = out["results"].values()
    assert len(as_given["scores"]) == len(with_setting["q_mean"]) == 2
    assert as_given["q_mean"] != with_setting["q_mean"]
    bad = subprocess.run([*cmd, "--setting", "backup_dtype"], capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "'backup_dtype': expected KEY=VALUE" in bad.stderr


def test_critic_layout_variants_train_the_same_weights(tmp_path):
    """benchmarks/critic_layout.py times the twin critics as two stacks or one, with the input width
    23 (in rows of 23 or 24 floats) or padded to 24; each variant must be the same computation (bit for bit on the CPU), or its
    speed says nothing about the layout."""
    out = tmp_path / "layout.json"
    proc = subprocess.run([sys.executable, str(BENCH / "critic_layout.py"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["layout"], r["width"], r["row"], r["norm"]) for r in rows} == {
        (layout, width, row, norm) for layout in ("two stacks", "one stack") for width, row in ((23, 23), (23, 24), (24, 24))
        for norm in ("none", "layernorm")}
    assert all(r["max_weight_diff"] == 0.0 and r["us"] > 0 for r in rows), rows
