"""Peer check: seemrl's TD3+BC, IQL and CQL against d3rlpy's (an independent, maintained
implementation) on the same dataset, evaluated by the same evaluator.

Both libraries get the same transitions (a Parquet transition table of whole episodes in order),
the same state normalisation (the table's mean and std + 1e-3), the same prepared rewards (IQL's
locomotion scaling applied once, before either sees them), the same hyperparameters as far as
both expose them (the workflow's `td3bc`, `iql` and `cql` settings; the mapping is below, with
what differs), the same number of gradient steps and the same seeds. Each final policy plays
`--eval-episodes` deterministic episodes in seemrl's evaluator (`evaluate_policies`: the same
reset seeds per seed for both). Printed per algorithm: the D4RL-normalised score, mean ± std over
seeds, for both; Welch's t-test p-value; the mean Q of the final critics on the data's (s, a)
and at (s, the final policy's deterministic action) on the same states; and both libraries' training speed on the device (seemrl trains the seeds stacked in one process:
seed-steps/s; d3rlpy one seed per process: steps/s of one seed, with `--jobs` processes at once).

seemrl's runs go first, each algorithm alone on the device; then every d3rlpy (algorithm, seed),
`--jobs` at a time, slowest first. Never both at once on one GPU: time-sliced against a dozen
d3rlpy processes, seemrl's CUDA-graph CQL and d3rlpy alike ran 5-10x slower (benchmarks/README.md).
d3rlpy's update is bound by the host (one core ran its TD3+BC at 115 steps/s, an H100 at 155), so
`--d3rlpy-device cpu` trains its seeds on the host's cores while seemrl has the GPU; `--probe`
times d3rlpy alone on a device for the speed column. On a GPU, `--d3rlpy-update graph` replays
d3rlpy's gradient functions as CUDA graphs (its own wrapper, without the torch.compile that its
`compile_graph` adds and that fails on CQL in torch 2.11). The JSON is rewritten after every run that
ends, so a run cut short keeps what it finished; `--merge` combines runs of some algorithms or of
one side each, and probes, into one table.

    python -m pip install --no-deps --target .peer -r benchmarks/peer/requirements.txt
    PYTHONPATH=.peer python benchmarks/peer_check.py --data resources/datasets/ev-halfcheetah-medium/transitions.parquet \\
        --steps 100000 --seeds 5 --device cuda --d3rlpy-device cpu --jobs 10 --out peer_check.json

Without d3rlpy installed (as in CI) the d3rlpy half is skipped, and says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

ALGOS = ("td3bc", "iql", "cql")
# The workflow's algorithm entries (config/config.yaml, config/paper/xpercent.yaml) as trainer settings.
SEEMRL = {
    "td3bc": ("td3", {"bc_weight": 1.0, "tau": 0.005}),
    "iql": ("iql", {}),
    "cql": ("cql", {}),
}
# Relative cost of a d3rlpy step (measured on one H100: TD3+BC 155, IQL 107, CQL 69 steps/s): the
# slowest runs start first.
COST = {"td3bc": 1.0, "iql": 1.45, "cql": 2.25}
# What d3rlpy's configs cannot express the same way (said in the output).
DIFFERENCES = {
    "td3bc": "none known",
    "iql": "none known (actor lr cosine-decayed to 0 over the steps on both sides)",
    "cql": "d3rlpy's TD target (soft_q_backup off) takes Q at the policy's mean action tanh(mu(s')), seemrl's "
           "(as JaxCQL's and CORL's) at a sampled a' ~ pi(s'), which the conservative term has pushed down: "
           "d3rlpy's Q comes out higher (benchmarks/cql_q_trace.py traces both); its logsumexp term draws "
           "actions at s and s' (CQL(H), importance-sampled) as seemrl's; its fixed conservative weight is "
           "5 x exp(log_alpha = 0), seemrl's cql_alpha 5",
}


# ------------------------------------------------------------------ the data
def load(path: str):
    """The table, checked to be whole episodes in order (what d3rlpy's episodes are built from)."""
    from seemrl.data.transitions import read_transitions

    t = read_transitions(path)
    ends = np.asarray(t.terminal, bool) | np.asarray(t.timeout, bool)
    if not ends[-1]:
        raise SystemExit(f"{path}: the last transition ends no episode; the peer check needs whole episodes")
    inside = ~ends[:-1]
    if not np.array_equal(np.asarray(t.obs)[1:][inside], np.asarray(t.next_obs)[:-1][inside]):
        raise SystemExit(f"{path}: rows are not whole episodes in order (next_obs[t] != obs[t+1] inside an "
                         "episode): use a full dataset, not an X% subset")
    return t


# ------------------------------------------------------------------ seemrl
HIDDEN: list[int] | None = None  # --hidden: both sides' widths (tests); None = the workflow's


def seemrl_config(algo: str, steps: int, eval_episodes: int):
    from seemrl.algos import trainer_module

    trainer, params = SEEMRL[algo]
    params = {**params, **({"hidden": HIDDEN} if HIDDEN else {})}
    cfg = trainer_module(trainer).Config(**{**params, "steps": steps, "checkpoint_every": steps,
                                            "log_every": max(1, steps // 10), "eval_every": steps,
                                            "eval_episodes": eval_episodes})
    return trainer, params, cfg


def train_seemrl(trainer: str, cfg, params: dict, seeds: list[int], data_path: str, device: str):
    """seemrl's training entry point (`seemrl.train.train_offline`, seeds stacked) in a temporary
    directory: (run.json, the metrics table, the last checkpoint's networks, wall seconds)."""
    import pandas as pd

    from seemrl.algos import trainer_module
    from seemrl.train import Outputs, train_offline
    from seemrl.training.resume import checkpoint_name

    with tempfile.TemporaryDirectory() as tmp:
        out = Outputs(checkpoints=f"{tmp}/checkpoints", metrics=f"{tmp}/metrics.parquet", run=f"{tmp}/run.json",
                      evaluations=f"{tmp}/evaluations.parquet")
        t0 = time.perf_counter()
        run = train_offline(trainer, cfg, params, seeds, data_path, out, device=device, device_info={"device": device},
                            labels={})
        wall = time.perf_counter() - t0
        metrics = pd.read_parquet(out.metrics)
        ckpt = trainer_module(trainer).load_checkpoint(Path(tmp) / "checkpoints" / checkpoint_name(cfg.steps))
    return run, metrics, ckpt.nets, wall


def run_seemrl(algo: str, data_path: str, seeds: list[int], steps: int, device: str, eval_episodes: int,
               q_rows: np.ndarray) -> dict:
    import torch

    trainer, params, cfg = seemrl_config(algo, steps, eval_episodes)
    run, _, nets, wall = train_seemrl(trainer, cfg, params, seeds, data_path, device)
    per_seed = run["evaluation"]["per_seed"]
    with torch.no_grad():
        obs, act = (torch.as_tensor(q_rows[k], dtype=torch.float32) for k in ("obs", "action"))
        obs_n = nets.normalize(obs.expand(len(seeds), *obs.shape))
        x = torch.cat([obs_n, act.expand(len(seeds), *act.shape)], -1)
        q = (nets.q1(x) + nets.q2(x)) / 2  # the twin critics' mean, as d3rlpy's predict_value
        x_pi = torch.cat([obs_n, nets.policy(obs_n)], -1)  # the final policy's (deterministic) action instead
        q_pi = (nets.q1(x_pi) + nets.q2(x_pi)) / 2
    return {"scores": [per_seed[str(s)]["final_score"] for s in seeds],
            "returns": [per_seed[str(s)]["final_return"] for s in seeds],
            "q_mean": q.mean((1, 2)).tolist(), "q_policy": q_pi.mean((1, 2)).tolist(),
            "seed_steps_per_second": run["seed_steps_per_second"], "wall_seconds": wall,
            "config": run["config"], "update_mode": run.get("update_mode")}


# ------------------------------------------------------------------ d3rlpy
def d3rlpy_config(algo: str, steps: int, obs_mean: np.ndarray, obs_std: np.ndarray):
    """seemrl's settings of `algo` in d3rlpy's terms (defaults equal unless set here)."""
    import d3rlpy

    _, _, ours = seemrl_config(algo, steps, 1)
    scaler = d3rlpy.preprocessing.StandardObservationScaler(mean=obs_mean, std=obs_std, eps=1e-3)
    common = {"batch_size": ours.batch_size, "gamma": ours.gamma, "tau": ours.tau, "observation_scaler": scaler,
              "actor_encoder_factory": d3rlpy.models.VectorEncoderFactory(list(ours.hidden)),
              "critic_encoder_factory": d3rlpy.models.VectorEncoderFactory(list(ours.hidden))}
    if algo == "td3bc":
        return d3rlpy.algos.TD3PlusBCConfig(actor_learning_rate=ours.actor_lr, critic_learning_rate=ours.critic_lr,
                                            target_smoothing_sigma=ours.policy_noise,
                                            target_smoothing_clip=ours.noise_clip, alpha=ours.alpha,
                                            update_actor_interval=ours.policy_delay, **common)
    if algo == "iql":
        cosine = d3rlpy.optimizers.AdamFactory(lr_scheduler_factory=d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=steps))
        return d3rlpy.algos.IQLConfig(actor_learning_rate=ours.actor_lr, critic_learning_rate=ours.critic_lr,
                                      actor_optim_factory=cosine, expectile=ours.expectile, weight_temp=ours.beta,
                                      max_weight=ours.exp_adv_max,
                                      value_encoder_factory=d3rlpy.models.VectorEncoderFactory(list(ours.hidden)),
                                      **common)
    if algo == "cql":
        return d3rlpy.algos.CQLConfig(actor_learning_rate=ours.actor_lr, critic_learning_rate=ours.critic_lr,
                                      temp_learning_rate=ours.alpha_lr or ours.actor_lr, alpha_learning_rate=0.0,
                                      initial_alpha=1.0, conservative_weight=ours.cql_alpha,
                                      n_action_samples=ours.cql_n_actions, soft_q_backup=ours.backup_entropy,
                                      max_q_backup=ours.max_target_backup, **common)
    raise ValueError(algo)


class D3Policies:
    """d3rlpy policies (one per seed) in the shape seemrl's evaluator asks for."""

    def __init__(self, algos):
        import torch

        self.algos, self.obs_mean = algos, torch.zeros(1)  # evaluate_policies reads obs_mean.device

    def normalize(self, obs):
        return obs  # d3rlpy scales inside predict()

    def policy(self, obs):
        import torch

        return torch.stack([torch.as_tensor(a.predict(obs[i].cpu().numpy().astype(np.float32)))
                            for i, a in enumerate(self.algos)])


def run_d3rlpy(tasks: list[tuple], jobs: int = 1, meanwhile=lambda: None):
    """d3rlpy's runs, one (algorithm, seed) per process, `jobs` processes at once; yields
    (algo, seed, result) as each ends. `meanwhile()` runs in this process once the pool has
    started (seemrl's runs on the GPU while d3rlpy's train on the host's cores). d3rlpy trains one
    seed per process and its update is bound by the host, so its processes run side by side;
    seemrl's runs must not share the GPU with them (a CUDA-graph trainer time-sliced against many
    processes slows both by 5-10x)."""
    if jobs <= 1:
        meanwhile()
        for task in tasks:
            yield task[0], task[2], _d3rlpy_seed(task)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(d3rlpy_seed_in_pool, task): task for task in tasks}
        meanwhile()
        for future in as_completed(futures):
            task = futures[future]
            yield task[0], task[2], future.result()


def d3rlpy_summary(results: dict[int, dict], seeds: list[int], steps: int, processes: int) -> dict:
    """One algorithm's d3rlpy seeds that have ended, in seed order."""
    done = [s for s in seeds if s in results]
    walls = [results[s]["wall"] for s in done]
    return {"seeds": done, "scores": [results[s]["score"] for s in done],
            "returns": [results[s]["return"] for s in done], "q_mean": [results[s]["q_mean"] for s in done],
            "q_policy": [results[s]["q_policy"] for s in done],
            "wall_seconds": walls, "processes": processes,
            "steps_per_second_per_seed": steps / float(np.mean(walls)) if walls else None}


# How d3rlpy runs its update on CUDA (elsewhere always eager): `compile` is its compile_graph (torch.compile,
# then CUDA graphs); `graph` the same CUDA graphs of its own eager update, without torch.compile
# (d3rlpy's CudaGraphWrapper with compile_func off), for where its compilation fails (CQL on torch 2.11).
UPDATES = ("eager", "compile", "graph")


def d3rlpy_model(algo: str, t, seed: int, steps: int, device: str, update: str = "eager"):
    """d3rlpy's model of `algo` (seeded) and its dataset from the table `t`, prepared as seemrl's, its
    update run as `update` says (UPDATES)."""
    import d3rlpy
    import torch

    from seemrl.data.preparation import prepare

    _, _, cfg = seemrl_config(algo, steps, 1)
    prepared = prepare(t, dataclasses.asdict(cfg))
    dataset = d3rlpy.dataset.MDPDataset(
        observations=np.asarray(t.obs, np.float32), actions=prepared.action, rewards=prepared.reward,
        terminals=np.asarray(t.terminal, np.float32), timeouts=np.asarray(t.timeout, np.float32))
    raw_std = prepared.obs_std - 1e-3  # seemrl's std has the 1e-3 added; d3rlpy adds its eps itself
    d3rlpy.seed(seed)
    config = d3rlpy_config(algo, steps, prepared.obs_mean, raw_std)
    config.compile_graph = update != "eager"  # d3rlpy's CUDA graphs (+ torch.compile); CUDA only, ignored elsewhere
    if update == "graph":
        # d3rlpy's graph wrapper, which compiles what it captures unless told not to (CudaGraphWrapper's
        # compile_func), is made in the model's build: one process runs one update mode
        init = d3rlpy.torch_utility.CudaGraphWrapper.__init__
        if init.__defaults__ not in ((3, True), (3, False)):
            raise SystemExit(f"d3rlpy {d3rlpy.__version__}: CudaGraphWrapper's defaults {init.__defaults__} are not "
                             "(warmup_steps=3, compile_func=True) as in 2.8.1; --d3rlpy-update graph cannot set them")
        init.__defaults__ = (3, False)
        # torch.distributions checks its arguments' values by default, which reads them back to the
        # host: not allowed inside a capture (torch.compile traces that check away). Only checks.
        torch.distributions.Distribution.set_default_validate_args(False)
    model = config.create(device=_d3_device(device))
    if update == "graph" and model.compiled:
        model.build_with_dataset(dataset)  # what fit() would do first (the same draws), so that
        capturable(model)                  # the optimisers exist to be marked
    return model, dataset


def capturable(model) -> None:
    """Mark the model's Adam optimisers capturable, their step counts on the GPU. d3rlpy's SAC and CQL
    step the temperature's optimiser inside the actor's gradient function, which d3rlpy captures as a
    CUDA graph; under torch.compile that step is compiled into the graph, without it an optimiser in
    a capture must be capturable (the same Adam update, its bias correction computed on the GPU)."""
    import d3rlpy
    import torch

    for field in dataclasses.fields(model.impl.modules):
        wrapper = getattr(model.impl.modules, field.name)
        if not isinstance(wrapper, d3rlpy.optimizers.OptimizerWrapper):
            continue
        for group in wrapper.optim.param_groups:
            group["capturable"] = True
            for param in group["params"]:
                state = wrapper.optim.state.get(param, {})
                if "step" in state:
                    state["step"] = state["step"].to(param.device, dtype=torch.float32)


def probe(algos: list[str], t, steps: int, device: str, update: str) -> dict[str, float]:
    """d3rlpy's steps/s per algorithm, one seed alone in this process: `steps` timed after 50 of
    warm-up (graph capture and compilation fall in those)."""
    import d3rlpy

    rates = {}
    for algo in algos:
        model, dataset = d3rlpy_model(algo, t, 0, steps, device, update)
        for n in (50, steps):
            t0 = time.perf_counter()
            model.fit(dataset, n_steps=n, n_steps_per_epoch=n, show_progress=False, save_interval=10**9,
                      logger_adapter=d3rlpy.logging.NoopAdapterFactory())
        rates[algo] = steps / (time.perf_counter() - t0)
        print(f"d3rlpy {algo}: {rates[algo]:,.0f} steps/s (one seed alone, {update} update)", flush=True)
    return rates


def _d3rlpy_seed(task) -> dict:
    """One seed of d3rlpy: train, evaluate in seemrl's evaluator, mean Q on the rows."""
    global HIDDEN
    algo, data_path, seed, steps, device, eval_episodes, q_rows, HIDDEN, update, state_dir, save_every = task
    import logging

    import d3rlpy
    import structlog
    import torch

    from seemrl.training.evaluation import evaluate_policies

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    torch.set_num_threads(1)
    t = load(data_path)
    model, dataset = d3rlpy_model(algo, t, seed, steps, device, update)
    state = D3State(state_dir, algo, seed, steps) if state_dir else None
    done, wall_before = state.restore(model, dataset) if state else (0, 0.0)
    if done and update == "graph" and model.compiled:
        capturable(model)  # the loaded optimiser state brings its own param groups
    t0 = time.perf_counter()
    every = max(1, steps // 10)

    def progress(_algo, _epoch, step):
        step += done
        if step % every == 0:
            print(f"d3rlpy {algo} seed {seed}: step {step:,}, "
                  f"{(step - done) / (time.perf_counter() - t0):,.0f} steps/s", file=sys.stderr, flush=True)
        if state and save_every and step % save_every == 0 and step < steps:
            state.save(model, step, wall_before + time.perf_counter() - t0)

    if done < steps:
        model.fit(dataset, n_steps=steps - done, n_steps_per_epoch=steps - done, show_progress=False,
                  save_interval=10**9, logger_adapter=d3rlpy.logging.NoopAdapterFactory(), callback=progress)
    wall = wall_before + time.perf_counter() - t0
    if state and done < steps:
        state.save(model, steps, wall)
    env_id = t.meta.get("eval_env_id") or t.meta["env_id"]
    ref = (t.meta.get("ref_min_score"), t.meta.get("ref_max_score"))
    (result,) = evaluate_policies(D3Policies([model]), [seed], env_id, eval_episodes, 0, *ref)
    q = float(np.mean(model.predict_value(q_rows["obs"], q_rows["action"])))
    q_pi = float(np.mean(model.predict_value(q_rows["obs"], model.predict(q_rows["obs"]))))  # deterministic action
    return {"score": result.normalized_score, "return": result.return_mean, "q_mean": q, "q_policy": q_pi,
            "wall": wall}


def d3rlpy_seed_in_pool(task) -> dict:
    """`_d3rlpy_seed` in a pool's worker process: an error comes back as a RuntimeError naming
    the run, with the worker's traceback as text. The error itself may not cross to the parent:
    TorchDynamo's errors hold modules, which do not pickle, and the pool then reports only
    "cannot pickle 'module' object" (d3rlpy's compiled CQL in torch 2.11, 2026-12-07)."""
    try:
        return _d3rlpy_seed(task)
    except Exception as exc:
        import traceback

        raise RuntimeError(f"d3rlpy {task[0]} seed {task[2]} failed: {type(exc).__name__}: {exc}\n"
                           f"{traceback.format_exc()}") from None


class D3State:
    """A d3rlpy seed's training state on disk, so a run too long for one sitting (d3rlpy's CQL:
    about 2 h per 100k-step seed on one CPU core) goes on where it stopped: d3rlpy's own
    `save_model` (networks and optimisers) and the step and training seconds so far, written
    atomically every `--d3rlpy-save-every` steps. On resuming, the minibatch sampler is seeded
    afresh from (seed, step), so the continued run draws other batches than a run from 0 would
    have: statistically the same training, not bit for bit the uninterrupted one."""

    def __init__(self, directory: str, algo: str, seed: int, steps: int):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model_path, self.meta_path = (self.dir / f"{algo}-seed{seed}-{steps}.{ext}" for ext in ("d3model", "json"))
        self.seed = seed

    def restore(self, model, dataset) -> tuple[int, float]:
        """(steps done, training seconds so far); the model built and loaded where a state exists."""
        if not self.meta_path.exists():
            return 0, 0.0
        import d3rlpy

        meta = json.loads(self.meta_path.read_text())
        if model.impl is None:
            model.build_with_dataset(dataset)
        model.load_model(str(self.model_path))
        d3rlpy.seed(self.seed * 1_000_003 + meta["step"])
        print(f"resuming from step {meta['step']:,} ({self.model_path})", file=sys.stderr, flush=True)
        return meta["step"], meta["wall"]

    def save(self, model, step: int, wall: float) -> None:
        tmp = self.model_path.with_suffix(".tmp")
        model.save_model(str(tmp))
        tmp.replace(self.model_path)
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step, "wall": wall}))
        tmp.replace(self.meta_path)


def _d3_device(device: str):
    return "cuda:0" if device == "cuda" else (device if device.startswith("cuda:") else False)


# ------------------------------------------------------------------ the table
def welch_p(a: list[float], b: list[float]) -> float | None:
    if len(a) < 2 or len(b) < 2:
        return None
    try:
        from scipy.stats import ttest_ind  # scipy comes with the peer's packages, not seemrl's
    except ImportError:
        print("Welch's p-value needs scipy (benchmarks/peer/requirements.txt): left empty", file=sys.stderr)
        return None

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def mean_std(v: list[float]) -> str:
    """Mean ± std over seeds; one seed has no spread to show."""
    if not v or any(x is None for x in v):
        return "-"
    return f"{v[0]:.1f} (1 seed)" if len(v) == 1 else f"{np.mean(v):.1f} ± {np.std(v):.1f}"


def print_table(report: dict) -> None:
    devices, probes = report["devices"], report.get("probes", [])
    for pr in probes:  # files before --d3rlpy-update said compile_graph only
        pr.setdefault("update", "compile" if pr.get("compile_graph") else "eager")
    alone = next((pr for pr in probes if pr["device"] == devices.get("seemrl") and pr["update"] != "eager"), None) or \
        next((pr for pr in probes if pr["device"] == devices.get("seemrl")), None)
    print(f"\nseemrl trained on {devices.get('seemrl') or '-'}; d3rlpy on {devices.get('d3rlpy') or '-'}"
          + (f"; d3rlpy alone on {alone['device']} ({alone['update']} update) from --probe {alone['steps']}"
             if alone else ""))
    print("\n| algorithm | seemrl score | d3rlpy score | Welch p | mean Q on data, seemrl | mean Q, d3rlpy "
          "| Q at the policy's action, seemrl | d3rlpy "
          "| seemrl seed-steps/s (seeds stacked, one process) | d3rlpy steps/s per seed in the runs "
          "| d3rlpy steps/s alone, seemrl's device |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def num(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    for algo, r in report["algorithms"].items():
        o, d = r.get("seemrl") or {}, r.get("d3rlpy") or {}
        print(f"| {algo} | {mean_std(o.get('scores', []))} | {mean_std(d.get('scores', []))} "
              f"| {num(r.get('welch_p'), '.3f')} | {num(np.mean(o['q_mean']) if o else None, '.1f')} "
              f"| {num(np.mean(d['q_mean']) if d.get('q_mean') else None, '.1f')} "
              f"| {num(np.mean(o['q_policy']) if o.get('q_policy') else None, '.1f')} "
              f"| {num(np.mean(d['q_policy']) if d.get('q_policy') else None, '.1f')} "
              f"| {num(o.get('seed_steps_per_second'), ',.0f')} | {num(d.get('steps_per_second_per_seed'), ',.0f')} "
              f"| {num(alone['rates'].get(algo) if alone else None, ',.0f')} |")
    print("\nWhat differs between the two configurations: "
          + "; ".join(f"{k}: {DIFFERENCES[k]}" for k in report["algorithms"]))


SAME = ("data_sha256", "d3rlpy")  # every file of one merged check agrees on these (where it has them): the data's
# bytes, not its path (relative or absolute, another host's); torch may differ (d3rlpy's seeds on another
# host's cores): each run's version is listed
SAME_RUNS = ("steps",)  # and training files on these (seeds may be split between files: d3rlpy's are joined)


def join_d3rlpy(a: dict, b: dict, steps: int) -> dict:
    """One algorithm's d3rlpy seeds from two runs (disjoint seeds), in seed order."""
    # q_policy: in files since 2026-12-07 only; kept where every file has it
    keys = ("seeds", "scores", "returns", "q_mean", "wall_seconds") + (("q_policy",) if "q_policy" in a and "q_policy" in b else ())
    rows = sorted(zip(*(a[k] + b[k] for k in keys)))
    cols = {k: list(col) for k, col in zip(keys, zip(*rows))}
    seeds, scores, returns, q_mean, walls = (cols[k] for k in keys[:5])
    processes = sorted({*(a["processes"] if isinstance(a["processes"], list) else [a["processes"]]),
                        *(b["processes"] if isinstance(b["processes"], list) else [b["processes"]])})
    return {"seeds": seeds, "scores": scores, "returns": returns, "q_mean": q_mean, "wall_seconds": walls,
            "processes": processes, "steps_per_second_per_seed": steps / float(np.mean(walls)),
            **({"q_policy": cols["q_policy"]} if "q_policy" in cols else {})}


def merge(paths: list[str]) -> dict:
    """Several runs' JSON as one report: runs of some algorithms or of one side each (e.g. seemrl on
    the GPU, d3rlpy's seeds on the host's cores) and --probe files. They must share the data, steps,
    seeds and versions; each (algorithm, side) may come from one file only, and the files that
    trained one side must name the same device."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    merged = {"command": None, "data": reports[0]["data"], "torch": None, "d3rlpy": None,
              "devices": {"seemrl": None, "d3rlpy": None}, "algorithms": {}, "probes": [], "runs": []}
    first = {}
    for path, r in zip(paths, reports):
        for key in SAME + (SAME_RUNS if "algorithms" in r else ()):
            if r.get(key) is None:
                continue
            if key in first and r[key] != first[key][1]:
                raise SystemExit(f"{path}: {key} {r[key]!r} differs from {first[key][0]}'s {first[key][1]!r}")
            first.setdefault(key, (path, r[key]))
        merged["runs"].append({"file": path, "command": r.get("command"), "torch": r.get("torch"),
                               "devices": r.get("devices"), "probes": [pr["device"] for pr in r.get("probes", [])]})
        merged["probes"] += r.get("probes", [])
        for side, name in r.get("devices", {}).items():
            if name is None:
                continue
            if merged["devices"][side] not in (None, name):
                raise SystemExit(f"{path}: {side} trained on {name!r}, another file's on {merged['devices'][side]!r}")
            merged["devices"][side] = name
        for algo, entry in r.get("algorithms", {}).items():
            into = merged["algorithms"].setdefault(algo, {"seemrl": None, "d3rlpy": None,
                                                          "differences": DIFFERENCES[algo], "welch_p": None})
            for side in ("seemrl", "d3rlpy"):
                if entry.get(side) is None:
                    continue
                part = {"seeds": r.get("seeds"), **entry[side]}  # seemrl's seeds are its file's
                if into[side] is None:
                    into[side] = part
                elif side == "d3rlpy" and not set(into[side]["seeds"]) & set(part["seeds"]):
                    into[side] = join_d3rlpy(into[side], part, r["steps"])
                else:
                    raise SystemExit(f"{path}: algorithm {algo!r}'s {side} runs are already in another file")
            if into["seemrl"] and into["d3rlpy"]:
                into["welch_p"] = welch_p(into["seemrl"]["scores"], into["d3rlpy"]["scores"])
    merged.update({key: value for key, (_, value) in first.items()})
    merged["seeds"] = sorted({seed for entry in merged["algorithms"].values() for side in ("seemrl", "d3rlpy")
                              if entry[side] for seed in entry[side]["seeds"] or []})
    merged["torch"] = ", ".join(sorted({r["torch"] for r in reports}))
    return merged


def sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cpu_name() -> str:
    """The host's CPU model and core count (d3rlpy's seeds may train there)."""
    import os

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown model") if Path("/proc/cpuinfo").exists() else "unknown model"
    return f"CPU ({model}, {os.cpu_count()} cores)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="a Parquet transition table of whole episodes")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="print one table from earlier runs' --out files (some algorithms or one side each, probes)")
    p.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    p.add_argument("--sides", nargs="+", choices=("seemrl", "d3rlpy"), default=["seemrl", "d3rlpy"],
                   help="which implementations to train (default both; --merge combines files of one side each)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seed-list", type=int, nargs="+",
                   help="train these seeds instead of 0..seeds-1 (a check split over runs: --merge joins "
                        "d3rlpy seeds of one algorithm from several files)")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--q-rows", type=int, default=10_000, help="data rows the mean Q is taken over")
    p.add_argument("--device", default="cuda")
    p.add_argument("--d3rlpy-device", help="where d3rlpy trains (default --device); its update is bound by the "
                   "host, so its seeds may run on the host's cores while seemrl has the GPU")
    p.add_argument("--hidden", type=int, nargs="+", help="hidden widths of both sides (default: the workflow's)")
    p.add_argument("--jobs", type=int, default=1, help="d3rlpy runs (algorithm, seed) trained at once, one process each")
    p.add_argument("--d3rlpy-update", choices=UPDATES, default="eager",
                   help="d3rlpy's update on CUDA: eager; compile (its compile_graph: torch.compile + CUDA graphs, "
                        "its fastest where it compiles); graph (its CUDA graphs without torch.compile)")
    p.add_argument("--d3rlpy-compile", dest="d3rlpy_update", action="store_const", const="compile",
                   help="the same as --d3rlpy-update compile")
    p.add_argument("--probe", type=int, metavar="STEPS",
                   help="only time d3rlpy: STEPS steps of one seed per algorithm, alone (after 50 of warm-up)")
    p.add_argument("--d3rlpy-state", metavar="DIR",
                   help="keep each d3rlpy seed's training state here and resume from it (a long run over sittings)")
    p.add_argument("--d3rlpy-save-every", type=int, default=5000, help="steps between saved d3rlpy states")
    p.add_argument("--out", help="write every number as JSON here")
    a = p.parse_args()
    if a.merge:
        report = merge(a.merge)
        print(f"{report['data']}: {report.get('steps', 0):,} steps, seeds {report.get('seeds')}; "
              f"torch {report['torch']}; d3rlpy {report['d3rlpy'] or '-'}")
        print_table(report)
        if a.out:
            Path(a.out).write_text(json.dumps(report, indent=1, default=float))
        return
    if not a.data:
        p.error("--data is required (or --merge)")
    global HIDDEN
    HIDDEN = a.hidden

    import torch

    torch.set_num_threads(1)
    t = load(a.data)
    seeds = sorted(set(a.seed_list)) if a.seed_list else list(range(a.seeds))
    rows = np.random.default_rng(0).choice(len(t), size=min(a.q_rows, len(t)), replace=False)
    q_rows = {"obs": np.asarray(t.obs, np.float32)[rows], "action": np.asarray(t.action, np.float32)[rows]}
    try:
        import logging

        import d3rlpy
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        peer, why = d3rlpy.__version__, None
    except ImportError as exc:
        peer, why = None, f"d3rlpy is not importable ({exc}); install benchmarks/peer/requirements.txt (see the doc)"

    def where(dev: str) -> tuple[str, str]:
        dev = dev if not dev.startswith("cuda") or torch.cuda.is_available() else "cpu"
        return dev, (torch.cuda.get_device_name() if dev.startswith("cuda") else cpu_name())

    device, name = where(a.device)
    d3_device, d3_name = where(a.d3rlpy_device or a.device)
    print(f"{a.data}: {len(t):,} transitions of {t.meta.get('env_id')}; {a.steps:,} steps, seeds {seeds}, "
          f"{a.eval_episodes} evaluation episodes; "
          + "; ".join(f"{side} on {where_}" for side, where_ in (("seemrl", name), ("d3rlpy", d3_name))
                      if side in a.sides or (side == "d3rlpy" and a.probe))
          + f"; torch {torch.__version__}; "
          f"d3rlpy {peer or '-'}", flush=True)
    report = {"command": " ".join(sys.argv), "data": a.data, "data_sha256": sha256(a.data), "torch": torch.__version__,
              "d3rlpy": peer if "d3rlpy" in a.sides or a.probe else None}

    def save() -> None:  # after every run that ends, so a run cut short keeps what it finished
        if a.out:
            tmp = Path(a.out + ".tmp")
            tmp.write_text(json.dumps(report, indent=1, default=float))
            tmp.replace(a.out)

    if a.probe:
        if not peer:
            raise SystemExit(f"--probe times d3rlpy, which is not importable: {why}")
        report.update(devices={}, probes=[{"device": d3_name, "update": a.d3rlpy_update,
                                           "compile_graph": a.d3rlpy_update == "compile", "steps": a.probe,
                                           "rates": probe(a.algos, t, a.probe, d3_device, a.d3rlpy_update)}])
        save()
        return
    if why and "d3rlpy" in a.sides:
        print(f"d3rlpy half skipped: {why}", flush=True)
    report.update(steps=a.steps, seeds=seeds, jobs=a.jobs, d3rlpy_compile_graph=a.d3rlpy_update == "compile",
                  d3rlpy_update=a.d3rlpy_update,
                  devices={"seemrl": name if "seemrl" in a.sides else None,
                           "d3rlpy": d3_name if "d3rlpy" in a.sides and peer else None},
                  algorithms={algo: {"seemrl": None, "d3rlpy": None, "differences": DIFFERENCES[algo], "welch_p": None}
                              for algo in a.algos})
    def seemrl_runs() -> None:  # each algorithm alone on seemrl's device
        for algo in a.algos if "seemrl" in a.sides else ():
            ours = run_seemrl(algo, a.data, seeds, a.steps, device, a.eval_episodes, q_rows)
            report["algorithms"][algo]["seemrl"] = ours
            print(f"{algo}: seemrl {mean_std(ours['scores'])} ({ours['seed_steps_per_second']:,.0f} seed-steps/s, "
                  f"{ours['wall_seconds']:.0f} s)", flush=True)
            save()

    # d3rlpy on the host's cores trains while seemrl has the GPU; on one GPU, seemrl first, alone
    at_once = d3_device == "cpu" and device != "cpu"
    if not (at_once and peer and "d3rlpy" in a.sides):
        seemrl_runs()
    if peer and "d3rlpy" in a.sides:
        slowest_first = sorted(a.algos, key=lambda algo: -COST[algo])
        tasks = [(algo, a.data, s, a.steps, d3_device, a.eval_episodes, q_rows, HIDDEN, a.d3rlpy_update,
                  a.d3rlpy_state, a.d3rlpy_save_every) for algo in slowest_first for s in seeds]
        results = {algo: {} for algo in a.algos}
        processes = max(1, min(a.jobs, len(tasks)))
        for algo, seed, result in run_d3rlpy(tasks, a.jobs, seemrl_runs if at_once else lambda: None):
            results[algo][seed] = result
            entry = report["algorithms"][algo]
            entry["d3rlpy"] = d3rlpy_summary(results[algo], seeds, a.steps, processes)
            if entry["seemrl"]:
                entry["welch_p"] = welch_p(entry["seemrl"]["scores"], entry["d3rlpy"]["scores"])
            print(f"d3rlpy {algo} seed {seed}: score {result['score']:.1f}, {a.steps / result['wall']:,.0f} steps/s",
                  flush=True)
            save()
    print_table(report)
    save()


if __name__ == "__main__":
    main()
