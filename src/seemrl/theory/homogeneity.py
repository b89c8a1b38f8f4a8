"""Table 3 / App. F.1: L-degree homogeneity of a ReLU MLP's output, gradient and NTK.

Scaling all parameters of an L-layer ReLU MLP by lambda scales (once the biases are negligible,
as in a diverged network) the output by lambda^L, the gradient by lambda^(L-1) and the NTK by
lambda^(2(L-1)). Measured on the Q1 head of a trained checkpoint or on a fresh network.
`docs/theory.md` says how.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call, jacrev, vmap

from seemrl.training.nets import StackedMLP, seed_slice


@dataclass(frozen=True)
class HomogeneityConfig:
    """Settings of the homogeneity check (defaults: paper Table 3 with a random stand-in network)."""

    lambdas: tuple[float, ...] = (1, 2, 5, 10, 100)  # scalings of all parameters
    checkpoint: str | None = None  # TD3 checkpoint whose Q1 head is used; None = random network
    seed_index: int = 0  # which stacked seed of the checkpoint
    in_dim: int = 23  # random network: input dimension (Walker2d obs 17 + action 6)
    hidden: tuple[int, ...] = (256, 256)  # random network: hidden widths (L = len(hidden) + 1)
    base_scale: float | None = None  # multiply all base parameters by this first; None = 1 (checkpoint) / 1000 (random)
    n_inputs: int = 128  # inputs in the batch X (standard normal)
    seed: int = 0  # seeds the random network and the inputs
    chunk_size: int = 64  # samples per vmap(jacrev) chunk

    def __post_init__(self):
        object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not self.lambdas or min(self.lambdas) <= 0:
            raise ValueError("lambdas must be positive")
        if self.n_inputs < 1 or self.in_dim < 1 or (self.base_scale is not None and not self.base_scale > 0):
            raise ValueError("n_inputs and in_dim must be >= 1 and base_scale > 0")

    @property
    def effective_base_scale(self) -> float:
        """base_scale, or its default: 1 for a checkpoint (used as is), 1000 for a random network."""
        if self.base_scale is not None:
            return float(self.base_scale)
        return 1.0 if self.checkpoint is not None else 1000.0


@dataclass
class HomogeneityResult:
    table: pd.DataFrame  # one row per lambda: measured ratios, expected powers, relative errors, NTK cosine
    paper_table: pd.DataFrame  # the paper's Table 3 layout: rows = quantities, columns = lambda, "value (k^p)"
    info: dict  # network source, L, activation, norm, number of parameters
    config: HomogeneityConfig
    seconds: float


# ------------------------------------------------------------------ network
def load_network(cfg: HomogeneityConfig) -> tuple[StackedMLP, dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(module, params of one seed [float64], buffers of one seed, info)."""
    if cfg.checkpoint is not None:
        from seemrl.algos import load_checkpoint  # any algorithm's, by its format tag

        ckpt = load_checkpoint(cfg.checkpoint)
        net = ckpt.nets.q1
        if not 0 <= cfg.seed_index < net.n_seeds:
            raise ValueError(f"seed index {cfg.seed_index} out of range: the checkpoint has {net.n_seeds} seeds")
        source = f"checkpoint {cfg.checkpoint} (step {ckpt.step}, seed {ckpt.seeds[cfg.seed_index]})"
    else:
        net = StackedMLP([torch.Generator().manual_seed(int(cfg.seed))], cfg.in_dim, 1, cfg.hidden)
        source = f"random StackedMLP in {cfg.in_dim}, hidden {list(cfg.hidden)}, seed {cfg.seed}"
    net = net.double().eval()
    unused = {f"biases.{k}" for k in getattr(net, "unused_biases", ())}
    params = seed_slice({k: v.detach() for k, v in net.named_parameters() if k not in unused}, cfg.seed_index
                        if cfg.checkpoint is not None else 0)
    buffers = seed_slice({k: v.detach() for k, v in net.named_buffers()}, cfg.seed_index if cfg.checkpoint is not None else 0)
    params = {k: v * cfg.effective_base_scale for k, v in params.items()}
    info = {"source": source, "n_layers": len(net.weights), "activation": net.activation, "norm": net.norm,
            "in_dim": net.dims[0], "hidden": list(net.dims[1:-1]),
            "n_params": int(sum(v.numel() for v in params.values())), "base_scale": cfg.effective_base_scale}
    return net, params, buffers, info


def _outputs(net, params, buffers, x: torch.Tensor) -> torch.Tensor:
    return functional_call(net, (params, buffers), (x[None],)).reshape(-1)


def _jacobian(net, params, buffers, x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    def one(p, xi):
        return functional_call(net, (p, buffers), (xi.reshape(1, 1, -1),)).reshape(())
    jac = vmap(jacrev(one), in_dims=(None, 0), chunk_size=chunk_size)(params, x)
    return torch.cat([jac[k].reshape(x.shape[0], -1) for k in params], 1)


# ------------------------------------------------------------------ experiment
def run_homogeneity(cfg: HomogeneityConfig = HomogeneityConfig()) -> HomogeneityResult:
    t0 = time.perf_counter()
    net, params, buffers, info = load_network(cfg)
    L = info["n_layers"]
    g = torch.Generator().manual_seed(int(cfg.seed) + 1)
    x = torch.randn(cfg.n_inputs, info["in_dim"], generator=g, dtype=torch.float64)
    with torch.no_grad():
        f1 = _outputs(net, params, buffers, x)
        j1 = _jacobian(net, params, buffers, x, cfg.chunk_size)
        g1 = j1 @ j1.T
        rows = []
        for lam in cfg.lambdas:
            p_lam = {k: v * lam for k, v in params.items()}
            f = _outputs(net, p_lam, buffers, x)
            j = _jacobian(net, p_lam, buffers, x, cfg.chunk_size)
            gl = j @ j.T
            exp_out, exp_grad, exp_ntk = lam ** L, lam ** (L - 1), lam ** (2 * (L - 1))
            row = {
                "lambda": lam, "n_layers": L,
                "output_ratio_single": float(f[0] / f1[0]),
                "output_ratio": float(f.norm() / f1.norm()),
                "grad_ratio_single": float(j[0].norm() / j1[0].norm()),
                "grad_ratio": float(j.norm() / j1.norm()),
                "ntk_ratio": float(gl.norm() / g1.norm()),
                "ntk_cos": float((gl * g1).sum() / (gl.norm() * g1.norm())),
                "output_expected": exp_out, "grad_expected": exp_grad, "ntk_expected": exp_ntk,
            }
            for q, e in (("output_ratio_single", exp_out), ("output_ratio", exp_out), ("grad_ratio_single", exp_grad),
                         ("grad_ratio", exp_grad), ("ntk_ratio", exp_ntk)):
                row[f"{q}_rel_err"] = row[q] / e - 1
            row["ntk_cos_gap"] = 1 - row["ntk_cos"]
            rows.append(row)
    table = pd.DataFrame(rows)
    info.update({f"cfg_{k}": (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()})
    return HomogeneityResult(table, paper_table(table), info, cfg, time.perf_counter() - t0)


def paper_table(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 3 layout: 'value (lambda^power)' per quantity and lambda."""
    L = int(table["n_layers"].iloc[0])
    cols = {}
    for _, r in table.iterrows():
        lam = r["lambda"]
        k = f"{lam:g}"
        cols[k] = {
            "f_{lambda theta}(x) / f_theta(x)": f"{r['output_ratio_single']:.6g} ({k}^{L})",
            "grad scale": f"{r['grad_ratio_single']:.6g} ({k}^{L - 1})",
            "NTK scale": f"{r['ntk_ratio']:.6g} ({k}^{2 * (L - 1)})",
            "NTK cos": f"1 - {r['ntk_cos_gap']:.1e}" if r["ntk_cos_gap"] > 0 else f"{r['ntk_cos']:.12g}",
        }
    out = pd.DataFrame(cols)
    out.index.name = "quantity"
    return out


# ------------------------------------------------------------------ figure
def plot_homogeneity(result: HomogeneityResult, path) -> None:
    """Left: measured ratios vs lambda with lambda^L, lambda^(L-1), lambda^(2(L-1)); right: |relative error|."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = result.table
    L = int(t["n_layers"].iloc[0])
    lam = t["lambda"].to_numpy()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.3))
    grid = np.geomspace(lam.min(), lam.max(), 100) if lam.max() > lam.min() else lam
    for col, p, color, name in (("output_ratio", L, "tab:blue", "output"), ("grad_ratio", L - 1, "tab:orange", "gradient"),
                                ("ntk_ratio", 2 * (L - 1), "tab:green", "NTK")):
        ax.plot(lam, t[col], "o", color=color, label=f"{name} ratio")
        ax.plot(grid, grid ** p, "--", color=color, lw=1, label=rf"$\lambda^{{{p}}}$")
        err = np.abs(t[f"{col}_rel_err"].to_numpy())
        ax2.plot(lam, np.where(err > 0, err, np.nan), "o-", color=color, label=name)
    ax2.plot(lam, np.where(t["ntk_cos_gap"] > 0, t["ntk_cos_gap"], np.nan), "s-", color="tab:gray", label="1 - NTK cos")
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel(r"$\lambda$")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    ax.set_ylabel("ratio to the unscaled network")
    ax2.set_ylabel("|relative error|")
    info = result.info
    fig.suptitle(f"Homogeneity (L = {L}, base scale {info['base_scale']:g}): {info['source']}", fontsize=9)
    fig.tight_layout()
    from seemrl.theory import save_png
    save_png(fig, path)
    plt.close(fig)
