"""The 2-D toy task with SGD (paper Sec. 3.2, Fig. 2, App. E).

States in R^2, 8 actions moving the state by 0.01, all rewards zero (true Q = 0), 100 random
(s, a) pairs, a two-layer MLP (hidden 200) trained by full-batch SGD (lr 0.01, gamma 0.99) with
semi-gradient Q-learning and no target network. Theory (Thm. 3): once SEEM > 0, 1/Q decays
linearly, so a line fitted to 1/Q predicts the crash step. `docs/theory.md` gives the setting
and what the authors' released toy does differently.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch.func import jacrev, vmap

# the 8 actions: direction vectors (forward / backward / none along each axis, not both none)
ACTION_DIRECTIONS = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))
_DIAGONAL = torch.tensor([dx != 0 and dy != 0 for dx, dy in ACTION_DIRECTIONS])


@dataclass(frozen=True)
class ToyConfig:
    """Settings of the toy SGD run (defaults: paper App. E, plus the choices in the module doc)."""

    n_samples: int = 100  # (s, a) pairs in the offline dataset
    step: float = 0.01  # distance an action moves the state along each axis it touches
    state_low: float = 0.0  # states are uniform in [state_low, state_high]^2
    state_high: float = 1.0  # upper end of that square
    hidden: tuple[int, ...] = (200,)  # hidden widths; (200,) is the paper's two-layer MLP (L = 2)
    bias: bool = False  # bias terms in the linear layers (see module doc for why not by default)
    lr: float = 0.01  # SGD learning rate
    gamma: float = 0.99  # discount factor
    max_steps: int = 2000  # stop here if nothing crashed
    seed: int = 0  # seeds the dataset and the initial weights
    dtype: str = "float32"  # "float32" (crash = float32 overflow, like the paper) or "float64"
    seem_every: int = 1  # compute SEEM every this many steps (0 = never)
    fit_window: tuple[int, int] | None = None  # explicit [start, end] steps of the line fit; None = rule
    fit_end_fraction: float = 0.05  # rule: window ends where y falls below this fraction of its running max
    fit_length: int = 50  # rule: steps in the window (the paper's 450-500 is 50)

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.fit_window is not None:
            object.__setattr__(self, "fit_window", tuple(int(v) for v in self.fit_window))
            if len(self.fit_window) != 2 or not 0 <= self.fit_window[0] < self.fit_window[1]:
                raise ValueError(f"fit_window must be (start, end) with 0 <= start < end, got {self.fit_window}")
        if self.n_samples < 1 or self.max_steps < 1 or not self.hidden or min(self.hidden) < 1:
            raise ValueError("n_samples, max_steps and hidden widths must be >= 1")
        if self.seem_every < 0 or self.fit_length < 2:
            raise ValueError("seem_every must be >= 0 and fit_length >= 2")
        if not 0 < self.fit_end_fraction < 1:
            raise ValueError(f"fit_end_fraction must be in (0, 1), got {self.fit_end_fraction}")
        if not self.state_high > self.state_low:
            raise ValueError("state_high must exceed state_low")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")

    @property
    def n_layers(self) -> int:
        """L, the number of linear layers."""
        return len(self.hidden) + 1


@dataclass
class ToyResult:
    steps: pd.DataFrame  # one row per step until (and including) the crash step
    summary: pd.DataFrame  # one row: crash step, Thm.-3 prediction, fit window and quality, SEEM sign
    config: ToyConfig
    seconds: float


# ------------------------------------------------------------------ data and network
def make_dataset(cfg: ToyConfig) -> dict[str, torch.Tensor]:
    """Inputs X [N, 4] = (s, dir(a)), all next inputs [N, 8, 4] = (s', dir(a')) and the actions."""
    g = torch.Generator().manual_seed(_stream(cfg.seed, 0))
    dtype = getattr(torch, cfg.dtype)
    dirs = torch.tensor(ACTION_DIRECTIONS, dtype=torch.float64)
    s = cfg.state_low + (cfg.state_high - cfg.state_low) * torch.rand(cfg.n_samples, 2, generator=g, dtype=torch.float64)
    a = torch.randint(0, len(ACTION_DIRECTIONS), (cfg.n_samples,), generator=g)
    s_next = s + cfg.step * dirs[a]
    x = torch.cat([s, dirs[a]], 1)
    x_next = torch.cat([s_next[:, None, :].expand(-1, len(dirs), -1),
                        dirs[None].expand(cfg.n_samples, -1, -1)], 2)
    return {"x": x.to(dtype), "x_next": x_next.to(dtype), "action": a, "state": s.to(dtype)}


def init_params(cfg: ToyConfig) -> dict[str, torch.Tensor]:
    """nn.Linear-style init (uniform +-1/sqrt(fan_in)); biases only if cfg.bias."""
    g = torch.Generator().manual_seed(_stream(cfg.seed, 1))
    dims = [4, *cfg.hidden, 1]
    params = {}
    for k, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        bound = 1.0 / math.sqrt(d_in)
        params[f"w{k}"] = (torch.rand(d_out, d_in, generator=g, dtype=torch.float64) * 2 - 1) * bound
        b = (torch.rand(d_out, generator=g, dtype=torch.float64) * 2 - 1) * bound  # drawn either way
        if cfg.bias:
            params[f"b{k}"] = b
    return {k: v.to(getattr(torch, cfg.dtype)) for k, v in params.items()}


def q_values(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Q for inputs [..., 4] -> [...]."""
    n = sum(1 for k in params if k.startswith("w"))
    h = x
    for k in range(n):
        h = h @ params[f"w{k}"].T
        if f"b{k}" in params:
            h = h + params[f"b{k}"]
        if k < n - 1:
            h = torch.relu(h)
    return h.squeeze(-1)


def per_sample_gradients(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """dQ(x_i)/dtheta flattened, [N, P] (not normalised)."""
    def one(p, xi):
        return q_values(p, xi[None])[0]
    jac = vmap(jacrev(one), in_dims=(None, 0))(params, x)
    return torch.cat([jac[k].reshape(x.shape[0], -1) for k in params], 1)


def seem_stats(params: dict[str, torch.Tensor], x: torch.Tensor, x_star: torch.Tensor, gamma: float,
               eta_eff: float) -> dict[str, float]:
    """SEEM (authors' normalisation, gradients / sqrt(P)) and the per-step rates (module doc)."""
    phi = per_sample_gradients(params, x).double()
    phi_star = per_sample_gradients(params, x_star).double()
    n_params = phi.shape[1]
    nan = {"seem": math.nan, "seem_normalized": math.nan, "seem_rate": math.nan, "sharpness": math.nan}
    if not (torch.isfinite(phi).all() and torch.isfinite(phi_star).all()):
        return nan
    a = (gamma * phi_star - phi) @ phi.T / n_params
    g = phi @ phi.T / n_params
    try:
        seem = torch.linalg.eigvals(a).real.max().item()
        g_max = torch.linalg.eigvalsh(g).max().item()
    except torch.linalg.LinAlgError:
        return nan
    fro = torch.linalg.matrix_norm(a).item()
    return {"seem": seem, "seem_normalized": seem / fro if fro > 0 else math.nan,
            "seem_rate": eta_eff * n_params * seem, "sharpness": eta_eff * n_params * g_max}


# ------------------------------------------------------------------ the run
def run_toy(cfg: ToyConfig = ToyConfig()) -> ToyResult:
    """Semi-gradient Q-learning with full-batch SGD until the first non-finite step (or max_steps).

    Runs with one intra-op thread (restored afterwards): the tensors are tiny, and extra threads
    only add overhead (10-50x slower per step on a busy 2-core machine).
    """
    with single_thread():
        return _run_toy(cfg)


@contextlib.contextmanager
def single_thread():
    """Limit torch to one intra-op thread inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_toy(cfg: ToyConfig) -> ToyResult:
    t_start = time.perf_counter()
    data = make_dataset(cfg)
    x, x_next = data["x"], data["x_next"]
    n = x_next.shape[0]
    params = init_params(cfg)
    eta_eff = 2.0 * cfg.lr / n  # loss = mean(u^2): d loss / d theta = (2 / N) sum_i u_i phi_i
    rows: list[dict] = []
    prev_greedy = None
    crash_step = None
    for t in range(cfg.max_steps):
        params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        q = q_values(params, x)
        with torch.no_grad():
            q_next = q_values(params, x_next)  # [N, 8]
            q_star, greedy = q_next.max(1)
            target = cfg.gamma * q_star  # rewards are zero
        u = q - target
        with torch.no_grad():
            p_norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in params.values()))
            finite = bool(torch.isfinite(u).all()) and math.isfinite(p_norm)
            u_norm = float(u.double().norm())
            row = {
                "step": t, "finite": finite, "u_norm": u_norm,
                "inv_u_norm": 1.0 / u_norm if u_norm > 0 else math.inf,
                "q_norm": float(q.double().norm()), "q_mean": float(q.double().mean()),
                "q_abs_max": float(q.double().abs().max()), "q_star_mean": float(q_star.double().mean()),
                "param_norm": p_norm, "loss": float((u.double() ** 2).mean()),
                "greedy_changes": int((greedy != prev_greedy).sum()) if prev_greedy is not None else 0,
                "greedy_diagonal_frac": float(_DIAGONAL[greedy].double().mean()),
                "seem": math.nan, "seem_normalized": math.nan, "seem_rate": math.nan, "sharpness": math.nan,
            }
            if finite and cfg.seem_every and t % cfg.seem_every == 0:
                x_star = x_next[torch.arange(n), greedy]
                row.update(seem_stats({k: v.detach() for k, v in params.items()}, x, x_star, cfg.gamma, eta_eff))
        rows.append(row)
        if not finite:
            crash_step = t
            break
        prev_greedy = greedy
        loss = (u ** 2).mean()
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {k: v.detach() - cfg.lr * g for (k, v), g in zip(params.items(), grads)}
    steps = pd.DataFrame(rows)
    fit = fit_singularity(steps, cfg)
    seem_before = steps.loc[steps["finite"] & steps["seem"].notna(), "seem"]
    end_for_seem = fit["window_end"] if math.isfinite(fit["window_end"]) else (crash_step or len(steps))
    seem_pre_window = steps.loc[(steps["step"] <= end_for_seem) & steps["seem"].notna(), "seem"]
    sharp = steps.loc[steps["sharpness"] > 2, "step"]
    summary = pd.DataFrame([{
        "crash_step": float(crash_step) if crash_step is not None else math.nan,
        "crashed": crash_step is not None,
        **fit,
        "rel_error": (fit["predicted_step"] - crash_step) / crash_step if crash_step else math.nan,
        "seem_positive_frac": float((seem_before > 0).mean()) if len(seem_before) else math.nan,
        "seem_min_to_window_end": float(seem_pre_window.min()) if len(seem_pre_window) else math.nan,
        "seem_positive_to_window_end": bool((seem_pre_window > 0).all()) if len(seem_pre_window) else False,
        "first_sharpness_above_2": float(sharp.iloc[0]) if len(sharp) else math.nan,
        "n_layers": cfg.n_layers,
        **{f"cfg_{k}": (str(v) if isinstance(v, tuple) or v is None else v) for k, v in asdict(cfg).items()},
    }])
    return ToyResult(steps, summary, cfg, time.perf_counter() - t_start)


# ------------------------------------------------------------------ Theorem 3 fit
def singular_coordinate(u_norm: np.ndarray, n_layers: int) -> np.ndarray:
    """y = ||u||^(-(2L - 2) / L): linear in t in the singular regime of Thm. 3 (1 / ||u|| for L = 2)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(u_norm, dtype=float) ** (-(2.0 * n_layers - 2.0) / n_layers)


def choose_window(y: np.ndarray, end_fraction: float, length: int) -> tuple[int, int] | None:
    """Causal window rule (module doc): end at the first index where y < end_fraction * running max."""
    y = np.where(np.isfinite(y), y, np.nan)
    running = np.fmax.accumulate(np.nan_to_num(y, nan=-np.inf))
    below = np.flatnonzero(np.isfinite(y) & (y < end_fraction * running))
    if not len(below):
        return None
    end = int(below[0])
    peak = int(np.nanargmax(y[: end + 1]))
    start = max(end - length, peak)
    return (start, end) if end - start >= 2 else None


def fit_singularity(steps: pd.DataFrame, cfg: ToyConfig) -> dict[str, float]:
    """Line fit of y = ||u||^(-(2L-2)/L) on the window; predicted singular step = -intercept / slope."""
    nan = {"window_start": math.nan, "window_end": math.nan, "slope": math.nan, "intercept": math.nan,
           "r2": math.nan, "predicted_step": math.nan, "window_rule": "explicit" if cfg.fit_window else "auto"}
    ok = steps[steps["finite"]]
    if ok.empty:
        return nan
    t = ok["step"].to_numpy(dtype=float)
    y = singular_coordinate(ok["u_norm"].to_numpy(), cfg.n_layers)
    window = cfg.fit_window or choose_window(y, cfg.fit_end_fraction, cfg.fit_length)
    if window is None:
        return nan
    m = (t >= window[0]) & (t <= window[1]) & np.isfinite(y)
    if m.sum() < 3:
        return {**nan, "window_start": float(window[0]), "window_end": float(window[1])}
    slope, intercept = np.polyfit(t[m], y[m], 1)
    resid = y[m] - (slope * t[m] + intercept)
    ss = float(((y[m] - y[m].mean()) ** 2).sum())
    return {"window_start": float(window[0]), "window_end": float(window[1]), "slope": float(slope),
            "intercept": float(intercept), "r2": 1 - float((resid ** 2).sum()) / ss if ss > 0 else math.nan,
            "predicted_step": float(-intercept / slope) if slope < 0 else math.inf,
            "window_rule": nan["window_rule"]}


# ------------------------------------------------------------------ figure
def plot_toy(result: ToyResult, path) -> None:
    """Figure 2 analogue: y = 1/||u_t|| with the fitted line, predicted and observed crash; SEEM below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, s, summ = result.config, result.steps, result.summary.iloc[0]
    ok = s[s["finite"]]
    y = singular_coordinate(ok["u_norm"].to_numpy(), cfg.n_layers)
    ylabel = r"$1/\|u_t\|$" if cfg.n_layers == 2 else rf"$\|u_t\|^{{-{2 * cfg.n_layers - 2}/{cfg.n_layers}}}$"
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ax.plot(ok["step"], y, color="tab:blue", lw=1.5, label=ylabel)
    if math.isfinite(summ["slope"]):
        t_end = summ["predicted_step"] if math.isfinite(summ["predicted_step"]) else ok["step"].max()
        tt = np.linspace(summ["window_start"], max(t_end, summ["window_end"]), 200)
        ax.plot(tt, summ["slope"] * tt + summ["intercept"], "--", color="tab:green",
                label=f"fit on [{summ['window_start']:.0f}, {summ['window_end']:.0f}]: "
                      f"{summ['slope']:.3g} t + {summ['intercept']:.3g}")
        ax.axvspan(summ["window_start"], summ["window_end"], color="tab:green", alpha=0.12)
        if math.isfinite(summ["predicted_step"]):
            ax.axvline(summ["predicted_step"], color="tab:green", ls=":", label=f"predicted singular step {summ['predicted_step']:.0f}")
    if summ["crashed"]:
        ax.axvline(summ["crash_step"], color="tab:red", ls="-", alpha=0.7, label=f"observed crash (NaN) {summ['crash_step']:.0f}")
    ax.set_ylim(bottom=0)
    ax.set_ylabel(ylabel)
    ax.set_title(f"Toy task, SGD lr {cfg.lr}, L = {cfg.n_layers}, hidden {cfg.hidden}, seed {cfg.seed}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    have = ok[ok["seem"].notna()]
    ax2.plot(have["step"], have["seem_rate"], color="tab:purple", label=r"SEEM rate $\eta_{eff}\lambda_{max}(A)$")
    ax2.plot(have["step"], have["sharpness"], color="tab:orange", label=r"sharpness $\eta_{eff}\lambda_{max}(G)$")
    ax2.axhline(2.0, color="tab:orange", ls=":", lw=1)
    ax2.set_yscale("symlog", linthresh=1e-4)
    ax2.set_ylim(-1e-2, 1e2)  # the last steps before the NaN explode; keep the run's scale readable
    ax2.set_xlabel("step")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    from seemrl.theory import save_png
    save_png(fig, path)
    plt.close(fig)


def _stream(seed: int, stream: int) -> int:
    return int(seed) * 1_000_003 + stream
