"""Baird's counterexample (paper App. F.5, Fig. 14): linear TD diverges, LayerNorm in front converges.

Sutton & Barto's 7-state MDP (all rewards 0, gamma 0.99, the features and initial weights of the
example), trained by expected semi-gradient TD with step 0.01: the plain linear value function
diverges, the same with LayerNorm over the features before the linear map stays bounded.
`docs/theory.md` gives the MDP and the variants.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

VARIANTS = ("linear", "layernorm", "layernorm_noaffine")
UPDATES = ("expected", "sampled")
N_STATES, N_FEATURES = 7, 8
LN_EPS = 1e-5  # as nn.LayerNorm


@dataclass(frozen=True)
class BairdConfig:
    """Settings of the Baird runs (defaults: paper Fig. 14 and App. F.5)."""

    steps: int = 5000  # updates per variant
    step_size: float = 0.01  # alpha
    gamma: float = 0.99  # discount
    update: str = "expected"  # "expected" (semi-gradient DP under b) or "sampled" (S & B transitions)
    variants: tuple[str, ...] = VARIANTS  # which value functions to run
    init_weights: tuple[float, ...] = (1, 1, 1, 1, 1, 1, 10, 1)  # initial linear weights w
    seed: int = 0  # seeds the sampled transitions (unused by "expected")
    log_every: int = 10  # record every this many steps (and the first and last)
    diverge_threshold: float = 1e6  # a variant counts as diverged once its parameter norm exceeds this

    def __post_init__(self):
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "init_weights", tuple(float(v) for v in self.init_weights))
        if self.update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {self.update!r}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ValueError(f"unknown variant(s) {bad}; choose from {VARIANTS}")
        if len(self.init_weights) != N_FEATURES:
            raise ValueError(f"init_weights needs {N_FEATURES} values")
        if self.steps < 1 or self.log_every < 1 or not self.step_size > 0:
            raise ValueError("steps and log_every must be >= 1 and step_size > 0")


@dataclass
class BairdResult:
    trajectory: pd.DataFrame  # per logged step and variant: parameter norm, w, values of the 7 states
    summary: pd.DataFrame  # per variant: final / max norms, divergence, SEEM at start and end
    config: BairdConfig
    seconds: float


# ------------------------------------------------------------------ features and models
def features() -> np.ndarray:
    """The classic feature matrix [7, 8] (row s-1 is x(s))."""
    x = np.zeros((N_STATES, N_FEATURES))
    for i in range(6):
        x[i, i], x[i, 7] = 2.0, 1.0
    x[6, 6], x[6, 7] = 1.0, 2.0
    return x


def layer_norm(x: np.ndarray) -> np.ndarray:
    m = x.mean(-1, keepdims=True)
    v = x.var(-1, keepdims=True)
    return (x - m) / np.sqrt(v + LN_EPS)


class _Model:
    """v(s) and grad_theta v(s) for all 7 states; theta is one flat vector (w first)."""

    def __init__(self, variant: str, init_w: np.ndarray):
        self.variant = variant
        x = features()
        self.z = x if variant == "linear" else layer_norm(x)
        self.theta = init_w.copy() if variant != "layernorm" else np.concatenate(
            [init_w, np.ones(N_FEATURES), np.zeros(N_FEATURES)])

    def w(self) -> np.ndarray:
        return self.theta[:N_FEATURES]

    def values(self) -> np.ndarray:
        if self.variant == "layernorm":
            w, g, b = np.split(self.theta, 3)
            return (self.z * g + b) @ w
        return self.z @ self.theta

    def grads(self) -> np.ndarray:
        """[7, P] gradients of v(s) w.r.t. theta."""
        if self.variant == "layernorm":
            w, g, b = np.split(self.theta, 3)
            return np.concatenate([self.z * g + b, self.z * w, np.broadcast_to(w, self.z.shape)], 1)
        return self.z


def seem_of(model: _Model, gamma: float) -> float:
    """max Re eig of A = gamma G(X*, X) - G(X, X) over the 7 states (X* = state 7 everywhere)."""
    phi = model.grads()
    with np.errstate(all="ignore"):
        a = (gamma * phi[[6] * N_STATES] - phi) @ phi.T
    if not np.isfinite(a).all():
        return math.nan
    return float(np.linalg.eigvals(a).real.max())


# ------------------------------------------------------------------ runs
def run_baird(cfg: BairdConfig = BairdConfig()) -> BairdResult:
    """Semi-gradient off-policy TD(0) on Baird's counterexample for each variant."""
    t0 = time.perf_counter()
    rows, summary = [], []
    for vi, variant in enumerate(cfg.variants):
        model = _Model(variant, np.asarray(cfg.init_weights, dtype=float))
        rng = np.random.default_rng([cfg.seed, vi])
        state = int(rng.integers(N_STATES))
        seem_init = seem_of(model, cfg.gamma)
        max_norm, diverged_step = float(np.linalg.norm(model.theta)), None
        rows.append(_row(0, variant, model))
        with np.errstate(all="ignore"):
            for t in range(1, cfg.steps + 1):
                v, phi = model.values(), model.grads()
                if cfg.update == "expected":
                    delta = cfg.gamma * v[6] - v  # r = 0, next state 7 under the target policy
                    model.theta = model.theta + cfg.step_size * (delta @ phi) / N_STATES
                else:
                    solid = rng.random() < 1.0 / N_STATES
                    nxt = 6 if solid else int(rng.integers(6))
                    if solid:  # rho = pi/b = 7 on solid, 0 on dashed
                        delta = cfg.gamma * v[nxt] - v[state]
                        model.theta = model.theta + cfg.step_size * N_STATES * delta * phi[state]
                    state = nxt
                norm = float(np.linalg.norm(model.theta))
                finite = math.isfinite(norm)
                if finite:
                    max_norm = max(max_norm, norm)
                if diverged_step is None and (not finite or norm > cfg.diverge_threshold):
                    diverged_step = t
                if t % cfg.log_every == 0 or t == cfg.steps or not finite:
                    rows.append(_row(t, variant, model))
                if not finite:
                    break
        final = rows[-1]
        summary.append({
            "variant": variant, "update": cfg.update, "step_size": cfg.step_size, "final_step": final["step"],
            "final_param_norm": final["param_norm"], "final_w_norm": final["w_norm"],
            "max_param_norm": max_norm, "final_max_abs_value": final["max_abs_value"],
            "diverged": diverged_step is not None,
            "diverged_step": float(diverged_step) if diverged_step is not None else math.nan,
            "seem_init": seem_init, "seem_final": seem_of(model, cfg.gamma),
            **{f"cfg_{k}": (str(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
               if k not in ("variants",)},
        })
    return BairdResult(pd.DataFrame(rows), pd.DataFrame(summary), cfg, time.perf_counter() - t0)


def _row(step: int, variant: str, model: _Model) -> dict:
    v = model.values()
    w = model.w()
    return {"step": step, "variant": variant, "param_norm": float(np.linalg.norm(model.theta)),
            "w_norm": float(np.linalg.norm(w)), "max_abs_value": float(np.abs(v).max()),
            "rms_value_error": float(np.sqrt(np.mean(v ** 2))),  # true values are 0
            **{f"v{i + 1}": float(v[i]) for i in range(N_STATES)},
            **{f"w{i + 1}": float(w[i]) for i in range(N_FEATURES)}}


# ------------------------------------------------------------------ figure
def plot_baird(result: BairdResult, path) -> None:
    """Per variant: the 8 linear weights over steps (symlog); last panel: parameter norms (log)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(result.config.variants)
    fig, axes = plt.subplots(1, len(variants) + 1, figsize=(4.2 * (len(variants) + 1), 3.8))
    tr = result.trajectory
    for ax, variant in zip(axes, variants):
        d = tr[tr["variant"] == variant]
        for i in range(N_FEATURES):
            ax.plot(d["step"], d[f"w{i + 1}"], lw=1, label=f"w{i + 1}")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(variant.replace("_", " "))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("weight")
    axes[0].legend(fontsize=7, ncol=2)
    ax = axes[-1]
    for variant in variants:
        d = tr[tr["variant"] == variant]
        ax.plot(d["step"], d["param_norm"], label=variant.replace("_", " "))
    ax.set_yscale("log")
    ax.set_title("parameter norm")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    cfg = result.config
    fig.suptitle(f"Baird's counterexample: {cfg.update} semi-gradient TD(0), alpha {cfg.step_size}, gamma {cfg.gamma}")
    fig.tight_layout()
    from seemrl.theory import save_png
    save_png(fig, path)
    plt.close(fig)
