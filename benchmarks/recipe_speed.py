"""D4RL's recipe needs 1M steps of online SAC per environment; how fast can each loop run it?

Times, side by side in one run on one device, over the same environment steps (warm-up and the
deterministic evaluations included):
  plain      the single-seed eager SAC loop (`seemrl.generate.behaviour_sac.train_sac_run`), the
             recipe's behaviour policy before issue 16
  engine     the stacked online SAC engine (`seemrl.algos.online_sac.train`, one seed), standard
             SAC order (act, step, store, update), with and without the compiled update
  recipe     the engine as the recipe runs it (`RecipeConfig.sac_config()`: the update compiled,
             each action from the policy before the step's update, so the environment steps on
             the host while the GPU updates)
  parallel   the recipe's SAC on several environments at once in one process, one thread and
             CUDA stream each (`--parallel Hopper-v5 Walker2d-v5 HalfCheetah-v5`)
  processes  the same environments at once, one process each (the workflow's way: one recipe per
             job); on a GPU shared through NVIDIA MPS (`tools/mps.sh start`) their kernels can run
             side by side instead of taking turns, and the table says whether MPS was on
and prints env steps/s (whole call, and steady: between the first and last evaluation, leaving
out warm-up, compilation and capture), minutes per 1M steps, the speed-up over plain, and each
run's last deterministic evaluation return (competence, when run for 1M steps).
Issue 16's target: 1M steps with 1M updates in <= 10 min per environment on one H100.

    python benchmarks/recipe_speed.py --env Hopper-v5 --steps 20000 --learning-starts 2000
    python benchmarks/recipe_speed.py --steps 1000000 --only parallel --parallel Hopper-v5 Walker2d-v5 HalfCheetah-v5
    tools/mps.sh start && python benchmarks/recipe_speed.py --steps 1000000 --only processes --parallel ...
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

MODES = ("plain", "engine", "recipe", "parallel", "processes")


def recipe_config(a, eval_every: int):
    from seemrl.generate.recipe import RecipeConfig

    cfg = RecipeConfig(sac_steps=a.steps, learning_starts=a.learning_starts, hidden=tuple(a.hidden),
                       snapshot_every=a.steps // 2, eval_episodes=a.eval_episodes).sac_config()
    return dataclasses.replace(cfg, checkpoint_every=eval_every, eval_every=eval_every,
                               log_every=min(eval_every, 10_000))


class Clock:
    """A run's log that notes when each evaluation was reached: the steady rate between the
    first and the last evaluation leaves out the start (warm-up, compilation, graph capture)."""

    def __init__(self, log):
        self.log, self.marks = log, []

    def __call__(self, msg: str) -> None:
        m = re.match(r"evaluation at step (\d+)", msg)
        if m:
            self.marks.append((int(m.group(1)), time.perf_counter()))
        self.log(msg)

    def steady_rate(self) -> float | None:
        if len(self.marks) < 2:
            return None
        (s0, t0), (s1, t1) = self.marks[0], self.marks[-1]
        return (s1 - s0) / (t1 - t0)


def run_engine(cfg, env_id: str, device: str, log) -> tuple[float, object, float | None]:
    from seemrl.algos.online_sac import train

    clock = Clock(log)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(cfg, [0], env_id, Path(tmp) / "checkpoints", device=device, log=clock)
        return time.perf_counter() - t0, result, clock.steady_rate()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--steps", type=int, default=20_000, help="environment steps (warm-up included) of the engine runs")
    p.add_argument("--plain-steps", type=int, default=None, help="steps of the plain loop (default: --steps)")
    p.add_argument("--learning-starts", type=int, default=2_000)
    p.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default: --steps)")
    p.add_argument("--eval-episodes", type=int, default=1)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--device", default="cuda")
    p.add_argument("--only", nargs="+", choices=MODES, default=["plain", "engine", "recipe"])
    p.add_argument("--parallel", nargs="+", default=[], help="environments trained at once (mode parallel)")
    p.add_argument("--progress", action="store_true", help="print the runs' progress lines")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON (each with its evaluations)")
    a = p.parse_args()
    if "processes" in a.only:
        return run_processes(a)

    import torch

    from seemrl.generate.behaviour_sac import SACConfig, train_sac_run

    torch.set_num_threads(1)
    threading.current_thread().name = a.env  # progress lines name their environment (processes mode too)
    eval_every = a.eval_every or a.steps
    log = (lambda msg: print(f"  [{threading.current_thread().name}] {msg}", flush=True)) if a.progress else (lambda *_: None)
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    print(f"{a.steps:,} env steps per run ({a.learning_starts:,} warm-up), hidden {a.hidden}, {name}, "
          f"torch {torch.__version__}\n", flush=True)
    rows = []  # label, env, steps, wall, last evaluation return, steady rate
    if "plain" in a.only:
        steps = a.plain_steps or a.steps
        cfg = SACConfig(total_steps=steps, learning_starts=a.learning_starts, hidden=tuple(a.hidden),
                        eval_episodes=a.eval_episodes, log_every=max(1, (steps - a.learning_starts) // 3))
        rates = []

        def plain_log(msg: str) -> None:  # its progress lines end in the rate since the last one
            m = re.search(r"(\d+) steps/s$", msg)
            if m:
                rates.append(float(m.group(1)))
            log(msg)

        t0 = time.perf_counter()
        run = train_sac_run(a.env, cfg, seed=0, log=plain_log, device=a.device)
        rows.append(("plain loop (the recipe before issue 16)", a.env, steps, time.perf_counter() - t0,
                     run.agent.info.get("eval_return_mean"), rates[-1] if len(rates) > 1 else None))
    rcfg = recipe_config(a, eval_every)
    if "engine" in a.only:
        for compiled in (False, True):
            cfg = dataclasses.replace(rcfg, act_before_update=False, compile_update=compiled)
            wall, result, steady = run_engine(cfg, a.env, a.device, log)
            rows.append((f"engine, act after update ({result.update_mode})", a.env, a.steps, wall,
                         result.evaluations["return_mean"].iloc[-1], steady))
    evaluations = {}  # env -> every evaluation's (step, mean return) of the recipe's run
    if "recipe" in a.only:
        wall, result, steady = run_engine(rcfg, a.env, a.device, log)
        rows.append((f"recipe's SAC: engine, act before update ({result.update_mode})", a.env, a.steps, wall,
                     result.evaluations["return_mean"].iloc[-1], steady))
        evaluations[a.env] = [(int(s_), float(r)) for s_, r in
                              zip(result.evaluations["step"], result.evaluations["return_mean"])]
    if "parallel" in a.only and a.parallel:
        results: dict[str, tuple] = {}
        walls: dict[str, float] = {}

        def work(env_id: str) -> None:
            with torch.cuda.stream(torch.cuda.Stream()) if a.device.startswith("cuda") else _nothing():
                results[env_id] = run_engine(rcfg, env_id, a.device, log)
                walls[env_id] = time.perf_counter() - t0

        threads = [threading.Thread(target=work, args=(e,), name=e) for e in a.parallel]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = time.perf_counter() - t0
        for env_id in a.parallel:
            if env_id not in results:
                raise SystemExit(f"the run on {env_id} failed (see above)")
            wall, result, steady = results[env_id]
            rows.append((f"recipe's SAC, {len(a.parallel)} envs at once (threads, one stream each)", env_id,
                         a.steps, wall, result.evaluations["return_mean"].iloc[-1], steady))
        print(f"{len(a.parallel)} environments at once: {total:.1f} s wall for all", flush=True)

    if a.json:
        a.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "evaluations": evaluations,
                                      "rows": [dict(zip(ROW_KEYS, r)) for r in rows]}, indent=1))
    print_table(rows)


ROW_KEYS = ("label", "env", "steps", "wall", "last_return", "steady")


def print_table(rows) -> None:
    base = (rows[0][5] or rows[0][2] / rows[0][3]) if rows and rows[0][0].startswith("plain") else None
    print("Whole: steps / wall time of the whole call. Steady: between the first and the last evaluation "
          "(after warm-up, compilation and capture; evaluations included); for the plain loop, over its last "
          "third of updates.")
    print("| loop | env | steps | wall s | env steps/s, whole | env steps/s, steady | minutes per 1M steps "
          "(steady) | vs plain (steady) | last eval return |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, env_id, steps, wall, ret, steady in rows:
        rate = steps / wall
        best = steady or rate
        ratio = f"{best / base:.1f}x" if base else "-"
        ret_s = "-" if ret is None else f"{ret:,.0f}"
        steady_s = "-" if steady is None else f"{steady:,.0f}"
        print(f"| {label} | {env_id} | {steps:,} | {wall:.1f} | {rate:,.0f} | {steady_s} | {1e6 / best / 60:.1f} "
              f"| {ratio} | {ret_s} |")


def mps_active() -> bool:
    """Whether an NVIDIA MPS control daemon answers (at `CUDA_MPS_PIPE_DIRECTORY` or the default
    pipe directory), so that this process's CUDA clients go through it. Asked, not read from the
    pipe directory: a stopped daemon can leave its pipes behind."""
    try:
        return subprocess.run(["nvidia-cuda-mps-control"], input="get_server_list\n", capture_output=True,
                              text=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_processes(a) -> None:
    """Each environment of --parallel in a process of its own (this script, mode recipe), all
    started at once; the table is theirs, plus the wall time of all, and every evaluation return."""
    if not a.parallel:
        raise SystemExit("--only processes needs --parallel ENV [ENV ...]")
    with tempfile.TemporaryDirectory() as tmp:
        procs = {}
        t0 = time.perf_counter()
        for env_id in a.parallel:
            cmd = [sys.executable, __file__, "--env", env_id, "--only", "recipe", "--steps", str(a.steps),
                   "--learning-starts", str(a.learning_starts), "--eval-episodes", str(a.eval_episodes),
                   "--hidden", *map(str, a.hidden), "--device", a.device, "--json", f"{tmp}/{env_id}.json"]
            if a.eval_every:
                cmd += ["--eval-every", str(a.eval_every)]
            if a.progress:
                cmd.append("--progress")
            procs[env_id] = subprocess.Popen(cmd, stdout=None if a.progress else subprocess.DEVNULL)
        for proc in procs.values():
            proc.wait()
        total = time.perf_counter() - t0
        failed = [e for e, proc in procs.items() if proc.returncode != 0]
        if failed:
            raise SystemExit(f"the run on {', '.join(failed)} failed (see above)")
        outs = {e: json.loads(Path(f"{tmp}/{e}.json").read_text()) for e in a.parallel}
    mps = "through MPS" if mps_active() else "no MPS"
    rows = []
    for env_id, out in outs.items():
        r = out["rows"][0]
        rows.append((f"recipe's SAC, {len(a.parallel)} envs at once (processes, {mps})", env_id, r["steps"],
                     r["wall"], r["last_return"], r["steady"]))
        returns = " / ".join(f"{ret:,.0f} ({step:,})" for step, ret in out["evaluations"][env_id])
        print(f"{env_id}: evaluation returns (step): {returns}")
    print(f"{len(a.parallel)} environments at once, one process each ({mps}), {outs[a.parallel[0]]['device']}: "
          f"{total:.1f} s wall for all\n", flush=True)
    print_table(rows)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
