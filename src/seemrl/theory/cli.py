"""Command line for the theory experiments (for Snakemake rules):
`python -m seemrl.theory.cli {toy,ntk-map,baird,homogeneity} --out-dir DIR [options]`.

Every file is written atomically, so a killed job never leaves a half-written output under its
final name; `docs/theory.md` lists the files of each subcommand.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

OUTPUTS = {
    "toy": ("toy_steps.parquet", "toy_summary.csv", "toy.png", "toy_meta.json"),
    "ntk-map": ("ntk_map_grid.parquet", "ntk_map_summary.csv", "ntk_map.png", "ntk_map_meta.json"),
    "baird": ("baird_trajectory.parquet", "baird_summary.csv", "baird.png", "baird_meta.json"),
    "homogeneity": ("homogeneity_table.csv", "homogeneity_table.parquet", "homogeneity_paper_table.csv",
                    "homogeneity.png", "homogeneity_meta.json"),
}


def build_parser() -> argparse.ArgumentParser:
    from seemrl.theory.baird import UPDATES, VARIANTS, BairdConfig
    from seemrl.theory.homogeneity import HomogeneityConfig
    from seemrl.theory.ntk_map import NTKMapConfig
    from seemrl.theory.toy import ToyConfig

    parser = argparse.ArgumentParser(prog="python -m seemrl.theory.cli", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--out-dir", required=True, type=Path, help="directory for the tables, figure and meta JSON")
        p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")

    t, d = sub.add_parser("toy", help="2-D toy task with SGD: SEEM and Theorem 3's crash prediction (Fig. 2)"), ToyConfig()
    common(t)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--max-steps", type=int, default=d.max_steps)
    t.add_argument("--n-samples", type=int, default=d.n_samples)
    t.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden), help="hidden widths (one value: L = 2)")
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--gamma", type=float, default=d.gamma)
    t.add_argument("--step", type=float, default=d.step, help="distance an action moves the state")
    t.add_argument("--state-low", type=float, default=d.state_low)
    t.add_argument("--state-high", type=float, default=d.state_high)
    t.add_argument("--bias", action=argparse.BooleanOptionalAction, default=d.bias, help="bias terms in the MLP")
    t.add_argument("--dtype", choices=("float32", "float64"), default=d.dtype)
    t.add_argument("--seem-every", type=int, default=d.seem_every, help="SEEM every this many steps (0 = never)")
    t.add_argument("--fit-window", type=int, nargs=2, default=None, metavar=("START", "END"),
                   help="explicit fit window, e.g. 450 500 (the paper's); default: the causal rule")
    t.add_argument("--fit-end-fraction", type=float, default=d.fit_end_fraction)
    t.add_argument("--fit-length", type=int, default=d.fit_length)

    n, d = sub.add_parser("ntk-map", help="normalised NTK map with and without LayerNorm (Fig. 5)"), NTKMapConfig()
    common(n)
    n.add_argument("--hidden", type=int, default=d.hidden)
    n.add_argument("--resolution", type=int, default=d.resolution)
    n.add_argument("--extent", type=float, default=d.extent)
    n.add_argument("--n-inits", type=int, default=d.n_inits)
    n.add_argument("--seed", type=int, default=d.seed)
    n.add_argument("--x0", type=float, nargs=2, default=list(d.x0))
    n.add_argument("--probe", type=float, nargs=2, default=list(d.probe))
    n.add_argument("--ln-affine", action=argparse.BooleanOptionalAction, default=d.ln_affine)
    n.add_argument("--dtype", choices=("float32", "float64"), default=d.dtype)
    n.add_argument("--chunk-size", type=int, default=d.chunk_size)

    b, d = sub.add_parser("baird", help="Baird's counterexample with and without LayerNorm (Fig. 14)"), BairdConfig()
    common(b)
    b.add_argument("--steps", type=int, default=d.steps)
    b.add_argument("--step-size", type=float, default=d.step_size)
    b.add_argument("--gamma", type=float, default=d.gamma)
    b.add_argument("--update", choices=UPDATES, default=d.update)
    b.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(d.variants))
    b.add_argument("--seed", type=int, default=d.seed)
    b.add_argument("--log-every", type=int, default=d.log_every)
    b.add_argument("--diverge-threshold", type=float, default=d.diverge_threshold)

    h, d = sub.add_parser("homogeneity", help="homogeneity of output, gradient and NTK (Table 3)"), HomogeneityConfig()
    common(h)
    h.add_argument("--checkpoint", type=Path, default=None, help="TD3 checkpoint (its Q1 head); default: random network")
    h.add_argument("--seed-index", type=int, default=d.seed_index)
    h.add_argument("--lambdas", type=float, nargs="+", default=list(d.lambdas))
    h.add_argument("--base-scale", type=float, default=None,
                   help="scale all base parameters first (default: 1 with --checkpoint, 1000 without)")
    h.add_argument("--in-dim", type=int, default=d.in_dim)
    h.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden))
    h.add_argument("--n-inputs", type=int, default=d.n_inputs)
    h.add_argument("--seed", type=int, default=d.seed)
    h.add_argument("--chunk-size", type=int, default=d.chunk_size)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        import torch
        torch.set_num_threads(max(1, args.threads))
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    handler = {"toy": _toy, "ntk-map": _ntk_map, "baird": _baird, "homogeneity": _homogeneity}[args.command]
    headline = handler(args, out)
    for key, value in headline.items():
        print(f"{key}: {value}")
    return 0


# ------------------------------------------------------------------ subcommands
def _toy(args, out: Path) -> dict:
    from seemrl.theory.toy import ToyConfig, plot_toy, run_toy

    cfg = ToyConfig(seed=args.seed, max_steps=args.max_steps, n_samples=args.n_samples, hidden=tuple(args.hidden),
                    lr=args.lr, gamma=args.gamma, step=args.step, state_low=args.state_low,
                    state_high=args.state_high, bias=args.bias, dtype=args.dtype, seem_every=args.seem_every,
                    fit_window=tuple(args.fit_window) if args.fit_window else None,
                    fit_end_fraction=args.fit_end_fraction, fit_length=args.fit_length)
    res = run_toy(cfg)
    s = res.summary.iloc[0]
    headline = {"crash_step": _num(s["crash_step"]), "predicted_step": _num(s["predicted_step"]),
                "rel_error": _num(s["rel_error"]), "fit_window": [_num(s["window_start"]), _num(s["window_end"])],
                "fit_slope": _num(s["slope"]), "fit_intercept": _num(s["intercept"]), "fit_r2": _num(s["r2"]),
                "seem_positive_frac": _num(s["seem_positive_frac"])}
    return _write_outputs(out, "toy", cfg, res, headline, plot_toy,
                          {"toy_steps.parquet": res.steps, "toy_summary.csv": res.summary})


def _ntk_map(args, out: Path) -> dict:
    from seemrl.theory.ntk_map import (
        NTKMapConfig,
        plot_ntk_map,
        probe_ratios,
        run_ntk_map,
    )

    cfg = NTKMapConfig(hidden=args.hidden, resolution=args.resolution, extent=args.extent, n_inits=args.n_inits,
                       seed=args.seed, x0=tuple(args.x0), probe=tuple(args.probe), ln_affine=args.ln_affine,
                       dtype=args.dtype, chunk_size=args.chunk_size)
    res = run_ntk_map(cfg)
    ratios = probe_ratios(res)
    headline = {f"ratio_at_probe_{k}": round(v, 4) for k, v in ratios.items()}
    return _write_outputs(out, "ntk_map", cfg, res, headline, plot_ntk_map,
                          {"ntk_map_grid.parquet": res.grid, "ntk_map_summary.csv": res.summary})


def _baird(args, out: Path) -> dict:
    from seemrl.theory.baird import BairdConfig, plot_baird, run_baird

    cfg = BairdConfig(steps=args.steps, step_size=args.step_size, gamma=args.gamma, update=args.update,
                      variants=tuple(args.variants), seed=args.seed, log_every=args.log_every,
                      diverge_threshold=args.diverge_threshold)
    res = run_baird(cfg)
    headline = {f"{r.variant}": {"final_param_norm": _num(r.final_param_norm), "diverged": bool(r.diverged),
                                 "seem_init": _num(r.seem_init)} for r in res.summary.itertuples()}
    return _write_outputs(out, "baird", cfg, res, headline, plot_baird,
                          {"baird_trajectory.parquet": res.trajectory, "baird_summary.csv": res.summary})


def _homogeneity(args, out: Path) -> dict:
    from seemrl.theory.homogeneity import (
        HomogeneityConfig,
        plot_homogeneity,
        run_homogeneity,
    )

    cfg = HomogeneityConfig(lambdas=tuple(args.lambdas), checkpoint=str(args.checkpoint) if args.checkpoint else None,
                            seed_index=args.seed_index, in_dim=args.in_dim, hidden=tuple(args.hidden),
                            base_scale=args.base_scale, n_inputs=args.n_inputs, seed=args.seed,
                            chunk_size=args.chunk_size)
    res = run_homogeneity(cfg)
    t = res.table
    headline = {f"lambda={r['lambda']:g}": {"output": _num(r["output_ratio"]), "grad": _num(r["grad_ratio"]),
                                            "ntk": _num(r["ntk_ratio"]), "ntk_cos_gap": _num(r["ntk_cos_gap"])}
                for _, r in t.iterrows()}
    headline["n_layers"] = res.info["n_layers"]
    return _write_outputs(out, "homogeneity", cfg, res, headline, plot_homogeneity,
                          {"homogeneity_table.csv": t, "homogeneity_table.parquet": t,
                           "homogeneity_paper_table.csv": (res.paper_table, True)},
                          extra={"network": res.info})


# ------------------------------------------------------------------ atomic writers
def _write_outputs(out: Path, name: str, cfg, res, headline: dict, plot, tables: dict, extra: dict | None = None) -> dict:
    """An experiment's files: each table (file name -> frame, or (frame, keep_index); Parquet or
    CSV by suffix), the figure `<name>.png` and `<name>_meta.json`; returns the headline."""
    headline["seconds"] = round(res.seconds, 2)
    from seemrl.report.tables import write_table_csv

    for file, table in tables.items():
        df, index = table if isinstance(table, tuple) else (table, False)
        if file.endswith(".parquet"):
            _write_parquet(df, out / file)
        else:
            write_table_csv(df, out / file, index=index)
    plot(res, out / f"{name}.png")
    _write_meta(out / f"{name}_meta.json", cfg, res.seconds, headline, extra)
    return headline


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    from seemrl.io import atomic_path

    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def _write_meta(path: Path, cfg, seconds: float, headline: dict, extra: dict | None = None) -> None:
    import torch

    from seemrl.io import write_json_atomic

    write_json_atomic(path, {"config": dataclasses.asdict(cfg), "seconds": seconds, "headline": headline,
                             "torch": torch.__version__, "threads": torch.get_num_threads(),
                             **(extra or {})})


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None


if __name__ == "__main__":
    sys.exit(main())
