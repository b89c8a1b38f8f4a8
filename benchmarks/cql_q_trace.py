"""CQL's Q on the data over training, seemrl against d3rlpy: where their Q scales part.

The peer check (`peer_check.py`) compares final numbers only; this traces the critics' mean Q
on fixed data rows (s, a) and at (s, the policy's deterministic action) every `--every` steps,
for one seed of each side on the same table with the peer check's settings (`peer_check.py`'s
mapping). `--seemrl-target mean` trains seemrl's CQL with the policy's mean action tanh(mu(s'))
in the TD target, as d3rlpy's CQL does without `soft_q_backup`, instead of a sampled
a' ~ pi(s') as JaxCQL and CORL (and seemrl) do: the one difference between the two updates
that this trace is for (`docs/results/2026-12-07-cql-peer-demo/README.md`).

    PYTHONPATH=.peer python benchmarks/cql_q_trace.py --data resources/datasets/hopper-demo/transitions.parquet \\
        --steps 10000 --every 1000 --sides seemrl d3rlpy --seemrl-target sample mean --out trace.csv

Without d3rlpy installed (as in CI) its trace is skipped, and says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_check  # noqa: E402 (after the path; it puts src/ on the path too)


def q_on(nets, obs, act):
    """Mean Q of the twin critics (their average, as d3rlpy's predict_value) at (obs, act)."""
    import torch

    with torch.no_grad():
        x = torch.cat([obs, act], -1)
        return float(((nets.q1(x) + nets.q2(x)) / 2).mean())


def trace_seemrl(t, seed: int, steps: int, every: int, target: str, q_rows: dict) -> list[dict]:
    """seemrl's CQL on the table, one seed; Q every `every` steps. target "mean": the TD target's
    a' is tanh(mu(s')) (its draw of noise is zero), else sampled."""
    import torch

    from seemrl.algos import cql
    from seemrl.data.preparation import prepare
    from seemrl.training.draws import OfflineData

    _, _, cfg = peer_check.seemrl_config("cql", steps, 1)
    prepared = prepare(t, dataclasses.asdict(cfg))
    nets = cql.build_nets(cfg, [seed], t.obs_dim, t.act_dim, prepared.obs_mean, prepared.obs_std)
    trainer = cql.CQLTrainer(cfg, [seed], OfflineData.from_prepared(prepared, "cpu"), nets, "cpu")
    if target == "mean":
        update = trainer._update

        def mean_target_update(draws, *args, **kwargs):
            return update({**draws, "next_noise": torch.zeros_like(draws["next_noise"])}, *args, **kwargs)

        trainer._update = mean_target_update
    obs = nets.normalize(torch.as_tensor(q_rows["obs"])[None])
    act = torch.as_tensor(q_rows["action"])[None]
    rows, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        trainer.step()
        if step % every == 0 or step == steps:
            with torch.no_grad():
                rows.append({"side": f"seemrl, {target} a'", "step": step, "q_data": q_on(nets, obs, act),
                             "q_policy": q_on(nets, obs, nets.policy(obs)), "seconds": time.perf_counter() - t0})
            print(rows[-1], flush=True)
    return rows


def trace_d3rlpy(t, seed: int, steps: int, every: int, q_rows: dict) -> list[dict]:
    """d3rlpy's CQL on the table (the peer check's model), one seed; Q every `every` steps."""
    import d3rlpy

    model, dataset = peer_check.d3rlpy_model("cql", t, seed, steps, "cpu", False)
    rows, t0 = [], time.perf_counter()

    def record(_algo, _epoch, step):
        if step % every == 0 or step == steps:
            q = float(np.mean(model.predict_value(q_rows["obs"], q_rows["action"])))
            q_pi = float(np.mean(model.predict_value(q_rows["obs"], model.predict(q_rows["obs"]))))
            rows.append({"side": "d3rlpy (tanh(mu(s')) target)", "step": step, "q_data": q, "q_policy": q_pi,
                         "seconds": time.perf_counter() - t0})
            print(rows[-1], flush=True)

    model.fit(dataset, n_steps=steps, n_steps_per_epoch=steps, show_progress=False, save_interval=10**9,
              logger_adapter=d3rlpy.logging.NoopAdapterFactory(), callback=record)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a Parquet transition table of whole episodes")
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", nargs="+", choices=("seemrl", "d3rlpy"), default=["seemrl", "d3rlpy"])
    p.add_argument("--seemrl-target", nargs="+", choices=("sample", "mean"), default=["sample", "mean"])
    p.add_argument("--q-rows", type=int, default=10_000, help="data rows the mean Q is taken over (as peer_check.py)")
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden widths of both sides (tests)")
    p.add_argument("--out", help="write the trace as CSV here")
    a = p.parse_args()
    peer_check.HIDDEN = a.hidden
    import pandas as pd
    import torch

    torch.set_num_threads(1)
    t = peer_check.load(a.data)
    rows = np.random.default_rng(0).choice(len(t), size=min(a.q_rows, len(t)), replace=False)
    q_rows = {"obs": np.asarray(t.obs, np.float32)[rows], "action": np.asarray(t.action, np.float32)[rows]}
    print(f"{a.data} (sha256 {peer_check.sha256(a.data)[:12]}): CQL, seed {a.seed}, {a.steps:,} steps, "
          f"Q on {len(rows):,} rows every {a.every:,}; torch {torch.__version__}", flush=True)
    out = []
    for target in a.seemrl_target if "seemrl" in a.sides else ():
        out += trace_seemrl(t, a.seed, a.steps, a.every, target, q_rows)
    if "d3rlpy" in a.sides:
        try:
            import logging

            import structlog

            structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
            out += trace_d3rlpy(t, a.seed, a.steps, a.every, q_rows)
        except ImportError as exc:
            print(f"d3rlpy trace skipped: d3rlpy is not importable ({exc})", flush=True)
    table = pd.DataFrame(out)
    wide = table.pivot(index="step", columns="side", values="q_data")
    print("\nmean Q on the data's (s, a):\n" + wide.round(2).to_markdown())
    if a.out:
        tmp = Path(a.out + ".tmp")
        table.to_csv(tmp, index=False)
        tmp.replace(a.out)


if __name__ == "__main__":
    main()
