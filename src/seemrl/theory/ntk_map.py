"""Figure 5: the normalised NTK map of a 2-layer ReLU MLP, with and without LayerNorm.

Input dim 2, one hidden layer (10,000 wide in the paper), scalar output; the map is
k(x0, x) / k(x0, x0) over a grid of the input plane for a reference x0. Without LayerNorm the
kernel grows with |x| (the paper: about 4.5x at (4, 4)), with it the kernel stays local.
`docs/theory.md` gives the details.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import grad, jvp

LN_EPS = 1e-5  # as nn.LayerNorm


@dataclass(frozen=True)
class NTKMapConfig:
    """Settings of the NTK map (defaults: the paper's Figure 5)."""

    hidden: int = 10_000  # hidden width of the 2-layer ReLU MLP
    x0: tuple[float, float] = (0.1, 0.2)  # reference point x0 (paper Sec. 4)
    probe: tuple[float, float] = (4.0, 4.0)  # far point whose k(x, x0) / k(x0, x0) is reported
    extent: float = 4.0  # the map covers [-extent, extent]^2
    resolution: int = 101  # grid points per axis (odd keeps 0 on the grid)
    n_inits: int = 1  # independent random initialisations; the map is their mean
    seed: int = 0  # base seed; init i uses seed + i (same weights with and without LN)
    ln_affine: bool = True  # LayerNorm with learnable gain/bias (their gradients enter the NTK)
    dtype: str = "float64"  # "float64" or "float32"
    chunk_size: int = 2048  # grid points per Jacobian-vector product

    def __post_init__(self):
        if self.hidden < 1 or self.resolution < 2 or self.n_inits < 1 or self.chunk_size < 1:
            raise ValueError("hidden, n_inits and chunk_size must be >= 1 and resolution >= 2")
        if not self.extent > 0:
            raise ValueError(f"extent must be positive, got {self.extent}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        object.__setattr__(self, "x0", tuple(float(v) for v in self.x0))
        object.__setattr__(self, "probe", tuple(float(v) for v in self.probe))
        if len(self.x0) != 2 or len(self.probe) != 2:
            raise ValueError("x0 and probe must be 2-D points")


@dataclass
class NTKMapResult:
    grid: pd.DataFrame  # one row per (layernorm, grid point): x1, x2, k_norm (mean over inits), k_norm_std
    summary: pd.DataFrame  # one row per (layernorm, init): k(x0,x0), ratio at the probe, map extrema
    config: NTKMapConfig
    seconds: float


# ------------------------------------------------------------------ network
def init_params(cfg: NTKMapConfig, seed: int, layernorm: bool) -> dict[str, torch.Tensor]:
    """PyTorch-default init of the 2-layer MLP; the linear weights do not depend on `layernorm`."""
    g = torch.Generator().manual_seed(int(seed))
    dtype = getattr(torch, cfg.dtype)
    b_in, b_hid = 1 / math.sqrt(2), 1 / math.sqrt(cfg.hidden)
    u = lambda shape, bound: (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound
    p = {"w1": u((cfg.hidden, 2), b_in), "b1": u((cfg.hidden,), b_in),
         "w2": u((cfg.hidden,), b_hid), "b2": u((), b_hid)}
    if layernorm and cfg.ln_affine:
        p["ln_weight"] = torch.ones(cfg.hidden, dtype=torch.float64)
        p["ln_bias"] = torch.zeros(cfg.hidden, dtype=torch.float64)
    return {k: v.to(dtype) for k, v in p.items()}


def mlp(params: dict[str, torch.Tensor], x: torch.Tensor, layernorm: bool) -> torch.Tensor:
    """f(x) for inputs [N, 2] -> [N]."""
    h = x @ params["w1"].T + params["b1"]
    if layernorm:
        h = F.layer_norm(h, h.shape[-1:], params.get("ln_weight"), params.get("ln_bias"), LN_EPS)
    return torch.relu(h) @ params["w2"] + params["b2"]


def ntk_column(params: dict[str, torch.Tensor], x: torch.Tensor, x0: torch.Tensor, layernorm: bool,
               chunk_size: int = 2048) -> tuple[torch.Tensor, float]:
    """(k(X, x0) [N], k(x0, x0)) for inputs X [N, 2] and one reference point x0 [2]."""
    g0 = grad(lambda p: mlp(p, x0[None], layernorm).sum())(params)
    k00 = float(sum((v * v).sum() for v in g0.values()))
    cols = []
    for chunk in x.split(chunk_size):
        _, k = jvp(lambda p: mlp(p, chunk, layernorm), (params,), (g0,))
        cols.append(k)
    return torch.cat(cols), k00


# ------------------------------------------------------------------ experiment
def grid_points(cfg: NTKMapConfig) -> tuple[np.ndarray, np.ndarray]:
    """Axis values and the [R*R, 2] grid (x1 varies fastest)."""
    axis = np.linspace(-cfg.extent, cfg.extent, cfg.resolution)
    xx, yy = np.meshgrid(axis, axis, indexing="xy")
    return axis, np.stack([xx.ravel(), yy.ravel()], 1)


def run_ntk_map(cfg: NTKMapConfig = NTKMapConfig()) -> NTKMapResult:
    """Normalised NTK maps with and without LayerNorm, averaged over `n_inits` initialisations."""
    t0 = time.perf_counter()
    dtype = getattr(torch, cfg.dtype)
    _, pts = grid_points(cfg)
    x = torch.as_tensor(pts, dtype=dtype)
    x0 = torch.tensor(cfg.x0, dtype=dtype)
    probe = torch.tensor([cfg.probe], dtype=dtype)
    grid_frames, summary_rows = [], []
    with torch.no_grad():
        for layernorm in (False, True):
            maps = []
            for i in range(cfg.n_inits):
                params = init_params(cfg, cfg.seed + i, layernorm)
                k, k00 = ntk_column(params, torch.cat([x, probe]), x0, layernorm, cfg.chunk_size)
                ratio = (k / k00).cpu().double().numpy()
                k_grid, k_probe = ratio[:-1], float(ratio[-1])
                maps.append(k_grid)
                dist = np.linalg.norm(pts - np.asarray(cfg.x0), axis=1)
                far = dist >= 0.5 * cfg.extent
                summary_rows.append({
                    "layernorm": layernorm, "init": i, "seed": cfg.seed + i, "hidden": cfg.hidden,
                    "x0_1": cfg.x0[0], "x0_2": cfg.x0[1], "probe_1": cfg.probe[0], "probe_2": cfg.probe[1],
                    "k_x0_x0": k00, "k_probe_x0": k_probe * k00, "ratio_probe": k_probe,
                    "ratio_max": float(k_grid.max()), "ratio_min": float(k_grid.min()),
                    "argmax_1": float(pts[k_grid.argmax(), 0]), "argmax_2": float(pts[k_grid.argmax(), 1]),
                    "ratio_mean_far": float(k_grid[far].mean()) if far.any() else math.nan,
                })
            maps = np.stack(maps)
            grid_frames.append(pd.DataFrame({
                "layernorm": layernorm, "x1": pts[:, 0], "x2": pts[:, 1],
                "k_norm": maps.mean(0), "k_norm_std": maps.std(0) if cfg.n_inits > 1 else np.zeros(len(pts)),
            }))
    return NTKMapResult(pd.concat(grid_frames, ignore_index=True), pd.DataFrame(summary_rows), cfg,
                        time.perf_counter() - t0)


def probe_ratios(result: NTKMapResult) -> dict[str, float]:
    """Mean k(probe, x0) / k(x0, x0) over inits: {"no_layernorm": ..., "layernorm": ...}."""
    s = result.summary.groupby("layernorm")["ratio_probe"].mean()
    return {"no_layernorm": float(s.loc[False]), "layernorm": float(s.loc[True])}


# ------------------------------------------------------------------ figure
def plot_ntk_map(result: NTKMapResult, path) -> None:
    """Two heat maps side by side (no LN | LN) of k(x, x0) / k(x0, x0), written as PNG to `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    ratios = probe_ratios(result)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, layernorm in zip(axes, (False, True)):
        d = result.grid[result.grid["layernorm"] == layernorm]
        img = d["k_norm"].to_numpy().reshape(cfg.resolution, cfg.resolution)
        im = ax.imshow(img, origin="lower", extent=(-cfg.extent, cfg.extent, -cfg.extent, cfg.extent),
                       cmap="viridis", aspect="equal")
        fig.colorbar(im, ax=ax, shrink=0.85, label=r"$k(x, x_0) / k(x_0, x_0)$")
        ax.plot(*cfg.x0, marker="*", color="red", markersize=12, label=r"$x_0$")
        ax.plot(*cfg.probe, marker="o", color="white", markeredgecolor="black", markersize=7,
                label=f"x = {cfg.probe}")
        key = "layernorm" if layernorm else "no_layernorm"
        ax.set_title(f"{'with' if layernorm else 'without'} LayerNorm: "
                     f"ratio at {cfg.probe} = {ratios[key]:.2f}")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle(f"Normalised NTK of a 2-layer ReLU MLP (hidden {cfg.hidden}, {cfg.n_inits} init(s))")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    from seemrl.theory import save_png
    save_png(fig, path)
    plt.close(fig)
