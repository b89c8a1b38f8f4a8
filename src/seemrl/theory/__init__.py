"""The SEEM paper's theory experiments, each a pure function of a config dataclass.

- `toy`: the 2-D toy task with SGD; SEEM per step and Theorem 3's prediction of the crash step
  from a line fitted to 1/||u_t|| (paper Fig. 2).
- `ntk_map`: the normalised NTK map k(x, x0) / k(x0, x0) of a 2-layer ReLU MLP with and without
  LayerNorm (paper Fig. 5).
- `baird`: Baird's counterexample, linear TD vs LayerNorm in front of the linear map (Fig. 14).
- `homogeneity`: L-degree homogeneity of output, gradient and NTK under parameter scaling
  (Table 3), on a TD3 checkpoint's Q1 head or a random network.

Each `run_*` returns DataFrames in a result object and has a `plot_*` that writes a PNG;
`python -m seemrl.theory.cli {toy,ntk-map,baird,homogeneity} --out-dir DIR` writes both.
"""
from __future__ import annotations

import os


def save_png(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write a matplotlib figure as PNG atomically (temporary sibling, then os.replace)."""
    from seemrl.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


from seemrl.theory.baird import BairdConfig, BairdResult, plot_baird, run_baird  # noqa: E402
from seemrl.theory.homogeneity import HomogeneityConfig, HomogeneityResult, plot_homogeneity, run_homogeneity
from seemrl.theory.ntk_map import NTKMapConfig, NTKMapResult, plot_ntk_map, probe_ratios, run_ntk_map
from seemrl.theory.toy import ToyConfig, ToyResult, plot_toy, run_toy  # noqa: E402

__all__ = [
    "save_png",
    "ToyConfig", "ToyResult", "run_toy", "plot_toy",
    "NTKMapConfig", "NTKMapResult", "run_ntk_map", "plot_ntk_map", "probe_ratios",
    "BairdConfig", "BairdResult", "run_baird", "plot_baird",
    "HomogeneityConfig", "HomogeneityResult", "run_homogeneity", "plot_homogeneity",
]
