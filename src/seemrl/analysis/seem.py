"""SEEM (self-excite eigenvalue measure) of a critic, computed as the paper's authors do.

For a fixed batch of N transitions, X = (s, a) from the data and X* = (s', pi(s')) with the
online actor (no smoothing noise, terminals not masked). With phi(x) = dQ1(x)/dtheta flattened
and divided by sqrt(P) (P = number of Q1 parameters), the linearised TD update of Q on X is
driven by A = gamma * Phi(X*) Phi(X)^T - Phi(X) Phi(X)^T (N x N, not symmetric). SEEM is the
largest real part of A's eigenvalues: positive means Q grows without bound under semi-gradient
TD (paper Thm. 1). See `shared/REFERENCE.md` §1.

Sampling with replacement (the authors' way, our default) repeats transitions once N is more
than about sqrt(dataset size): a repeated row makes A singular, so a stable critic's SEEM reads
~0 (+-1e-18, rounding) rather than negative. Only clearly positive SEEM is therefore read as
self-excitation (`divergence_verdict`'s `positive_tol`); `replace=False` gives the negative values.

The authors take one backward pass per sample; here the per-sample gradients are one vectorised
`vmap(jacrev(...))` over chunks of samples, which gives the same matrix (tested) many times faster.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call, jacrev, vmap

from seemrl.algos.td3 import Checkpoint, checkpoint_paths, load_checkpoint
from seemrl.nets import StackedMLP, per_seed_norm, seed_slice

# Final |Q| above this counts as divergence (see `q_value_bound`): D4RL locomotion rewards are
# below ~10 per step, so with gamma = 0.99 no policy's |Q| exceeds 10 / (1 - 0.99) = 1e3, and a
# tenfold margin keeps slow-but-sane value overestimation from being called divergence.
DEFAULT_Q_BOUND = 1e4


# ------------------------------------------------------------------ SEEM of one network
def q1_jacobian(q1: StackedMLP, seed_index: int, x: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
    """Per-sample gradients [N, P] of seed `seed_index`'s Q1(x) w.r.t. its P parameters, / sqrt(P).

    Columns follow `q1.named_parameters()` order, less the biases a BatchNorm critic leaves unused. Runs on the device of `q1`'s parameters.
    Q is taken in eval mode (per-sample: BatchNorm uses its running statistics, dropout is off),
    with the seed's buffers alongside its parameters.
    """
    # parameters the output depends on (a bias before BatchNorm is not one: StackedMLP skips it)
    unused = {f"biases.{k}" for k in getattr(q1, "unused_biases", ())}
    params = seed_slice({k: v.detach() for k, v in q1.named_parameters() if k not in unused}, seed_index)
    buffers = seed_slice(dict(q1.named_buffers()), seed_index)
    n_params = sum(v.numel() for v in params.values())

    def q_of_one_sample(p, xi):
        return functional_call(q1, (p, buffers), (xi.reshape(1, 1, -1),)).reshape(())

    was_training = q1.training
    q1.eval()
    try:
        grads = vmap(jacrev(q_of_one_sample), in_dims=(None, 0), chunk_size=chunk_size)(params, x)
    finally:
        q1.train(was_training)
    jac = torch.cat([g.reshape(x.shape[0], -1) for g in grads.values()], dim=1)
    return jac / math.sqrt(n_params)


def seem_matrix(phi_x: torch.Tensor, phi_xstar: torch.Tensor, gamma: float) -> torch.Tensor:
    """A = gamma * Phi(X*) Phi(X)^T - Phi(X) Phi(X)^T, returned in float64.

    The product runs in the Jacobians' dtype (fp32, as the authors do; in fp64 it is 3x slower on
    the CPU and changed SEEM by < 1e-5 relative in our check); the eigen-solve gets fp64 because
    eigenvalues of a non-symmetric matrix are sensitive to rounding, and the N x N solve is cheap.
    """
    return ((gamma * phi_xstar - phi_x) @ phi_x.T).double()


def seem_eigenvalues(phi_x: torch.Tensor, phi_xstar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Complex eigenvalues of the (non-symmetric) SEEM matrix A."""
    return torch.linalg.eigvals(seem_matrix(phi_x, phi_xstar, gamma))


def seem_from_jacobians(phi_x: torch.Tensor, phi_xstar: torch.Tensor, gamma: float) -> dict[str, float]:
    """SEEM and extras from per-sample gradients; NaN everywhere if anything is non-finite."""
    nan = {"seem": math.nan, "seem_normalized": math.nan, "a_fro_norm": math.nan, "ntk_diag_mean": math.nan}
    a = seem_matrix(phi_x, phi_xstar, gamma)
    if not torch.isfinite(a).all():  # eigvals raises or hangs on non-finite input
        return nan
    try:
        eig = torch.linalg.eigvals(a)
    except torch.linalg.LinAlgError as exc:  # LAPACK did not converge: report, don't crash
        warnings.warn(f"eigvals failed: {exc}; SEEM set to NaN")
        return nan
    seem = eig.real.max().item()
    fro = torch.linalg.matrix_norm(a).item()
    ntk_diag = phi_x.pow(2).sum(1).mean().item()  # = trace(G(X, X)) / N
    return {"seem": seem, "seem_normalized": seem / fro if fro > 0 else math.nan,
            "a_fro_norm": fro, "ntk_diag_mean": ntk_diag}


def seem(q1: StackedMLP, seed_index: int, x: torch.Tensor, x_star: torch.Tensor, gamma: float,
         chunk_size: int = 512) -> dict[str, float]:
    """SEEM of seed `seed_index`'s Q1 on inputs X [N, in] and bootstrap inputs X* [N, in]."""
    phi_x = q1_jacobian(q1, seed_index, x, chunk_size)
    phi_xstar = q1_jacobian(q1, seed_index, x_star, chunk_size)
    return seem_from_jacobians(phi_x, phi_xstar, gamma)


# ------------------------------------------------------------------ SEEM over a training run
def sample_batch(transitions: dict[str, np.ndarray], n_samples: int, sample_seed: int,
                 replace: bool = True) -> dict[str, np.ndarray]:
    """The fixed measurement batch: n_samples transitions drawn uniformly (with replacement)."""
    n = len(transitions["obs"])
    idx = np.random.default_rng(sample_seed).choice(n, size=n_samples, replace=replace)
    return {k: np.asarray(transitions[k])[idx] for k in ("obs", "action", "next_obs")}


def _cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    u, v = u.double().flatten(), v.double().flatten()
    return (u @ v / (u.norm() * v.norm())).item()


def _per_seed_finite(module: torch.nn.Module) -> torch.Tensor:
    return torch.stack([torch.isfinite(p.detach()).flatten(1).all(1) for p in module.parameters()]).all(0)


def _q1_vector(q1: StackedMLP, seed_index: int) -> torch.Tensor:
    return torch.cat([p.detach()[seed_index].flatten() for p in q1.parameters()])


def _analyse_checkpoint(ckpt: Checkpoint, batch: dict[str, torch.Tensor], chunk_size: int) -> list[dict]:
    """Rows (one per seed) with SEEM and the paper's side metrics; keeps tensors for Fig. 1."""
    nets, n_seeds = ckpt.nets, len(ckpt.seeds)
    expand = lambda t: t.unsqueeze(0).expand(n_seeds, *t.shape)
    with torch.no_grad():
        obs_n, next_obs_n = nets.normalize(expand(batch["obs"])), nets.normalize(expand(batch["next_obs"]))
        action = expand(batch["action"])
        pi, next_pi = nets.policy(obs_n), nets.policy(next_obs_n)
        x, x_star = torch.cat([obs_n, action], -1), torch.cat([next_obs_n, next_pi], -1)
        q_data = nets.q1(x).squeeze(-1)
        q_policy = nets.q1(torch.cat([obs_n, pi], -1)).squeeze(-1)
        critic_norm = per_seed_norm([*nets.q1.parameters(), *nets.q2.parameters()])
        q1_norm = per_seed_norm(list(nets.q1.parameters()))
        weights_finite = _per_seed_finite(nets.q1) & _per_seed_finite(nets.q2) & _per_seed_finite(nets.actor)
    rows = []
    for i, seed in enumerate(ckpt.seeds):
        finite = bool(weights_finite[i]) and bool(torch.isfinite(q_data[i]).all()) \
            and bool(torch.isfinite(q_policy[i]).all()) and bool(torch.isfinite(x_star[i]).all())
        flagged = ckpt.diverged_step[i] is not None and ckpt.diverged_step[i] <= ckpt.step
        result = {"seem": math.nan, "seem_normalized": math.nan, "a_fro_norm": math.nan, "ntk_diag_mean": math.nan}
        gram = None
        if finite:
            phi_x = q1_jacobian(nets.q1, i, x[i], chunk_size)
            phi_xstar = q1_jacobian(nets.q1, i, x_star[i], chunk_size)
            result = seem_from_jacobians(phi_x, phi_xstar, ckpt.config.gamma)
            # Overflowing gradients of a finite-but-huge net are divergence too.
            finite = math.isfinite(result["seem"])
            if finite:
                gram = phi_x @ phi_x.T
        rows.append({
            "step": ckpt.step, "seed": seed, **result,
            "q_data_mean": q_data[i].mean().item(), "q_policy_mean": q_policy[i].mean().item(),
            "critic_param_norm": critic_norm[i].item(), "q1_param_norm": q1_norm[i].item(),
            "diverged": (not finite) or flagged,
            # for the cosines to the final checkpoint; popped by the caller
            "_q1": _q1_vector(nets.q1, i), "_actions": pi[i], "_gram": gram,
        })
    return rows


def analyse_run(checkpoint_dir: str | Path, transitions: dict[str, np.ndarray], n_samples: int,
                sample_seed: int, device: str | torch.device = "cpu", chunk_size: int = 512,
                replace: bool = True) -> pd.DataFrame:
    """SEEM and side metrics of every checkpoint and seed of one run; one row per (step, seed).

    `transitions` holds raw (unnormalised) obs, action, next_obs; each checkpoint normalises with
    its own state statistics. The same batch is used at every checkpoint, as in the paper.
    `n_unique_samples` counts the distinct transitions in the batch (see the module docstring).
    `cos_to_final_*` are cosine similarities to the final checkpoint of the seed's Q1 parameters,
    its NTK Gram matrix G(X, X), and its policy actions on the batch (paper Fig. 1).
    """
    paths = checkpoint_paths(checkpoint_dir)
    if not paths:
        raise FileNotFoundError(f"no checkpoints in {checkpoint_dir}")
    batch = {k: torch.as_tensor(v, dtype=torch.float32, device=device)
             for k, v in sample_batch(transitions, n_samples, sample_seed, replace).items()}
    n_unique = len(np.unique(np.concatenate([t.cpu().numpy() for t in batch.values()], 1), axis=0))
    rows, final = [], None
    # The final checkpoint first, so that each later one is compared to it without keeping all.
    for path in [paths[-1], *paths[:-1]]:
        ckpt = load_checkpoint(path)
        ckpt.nets.to(device)
        ckpt_rows = _analyse_checkpoint(ckpt, batch, chunk_size)
        current = [(row.pop("_q1"), row.pop("_actions"), row.pop("_gram")) for row in ckpt_rows]
        final = final or current
        for row, (q1, actions, gram), (q1_end, actions_end, gram_end) in zip(ckpt_rows, current, final):
            row["cos_to_final_params"] = _cosine(q1, q1_end)
            row["cos_to_final_actions"] = _cosine(actions, actions_end)
            row["cos_to_final_ntk"] = math.nan if gram is None or gram_end is None else _cosine(gram, gram_end)
        rows.extend(ckpt_rows)
    df = pd.DataFrame(rows).assign(n_unique_samples=n_unique)
    return df.sort_values(["step", "seed"], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------ verdict per seed
def q_value_bound(rewards: np.ndarray, gamma: float, factor: float = 10.0) -> float:
    """factor * max|r| / (1 - gamma): no policy's |Q| can exceed max|r| / (1 - gamma)."""
    return factor * float(np.max(np.abs(rewards))) / (1.0 - gamma)


def divergence_verdict(df: pd.DataFrame, q_bound: float = DEFAULT_Q_BOUND,
                       by: tuple[str, ...] = ("seed",), positive_tol: float = 1e-6) -> pd.DataFrame:
    """One row per seed (per group `by`) of an `analyse_run` frame.

    A seed diverged if any checkpoint is flagged non-finite, or if its final |q_data_mean|
    exceeds `q_bound` (pass `q_value_bound(rewards, gamma)` for a bound from the data).
    SEEM counts as positive where seem_normalized > `positive_tol`: a singular A's zero
    eigenvalue comes out of eigvals as +-1e-18 relative to ||A||_F, which is no self-excitation.
    """
    out = []
    for key, g in df.sort_values("step").groupby(list(by), sort=True):
        final = g.iloc[-1]
        exceeds = g["q_data_mean"].abs() > q_bound  # NaN compares False; NaN rows are flagged anyway
        bad = g["diverged"].astype(bool) | exceeds
        nonfinite, over_bound = bool(g["diverged"].any()), bool(abs(final["q_data_mean"]) > q_bound)
        positive = g.loc[g["seem_normalized"] > positive_tol, "step"]
        out.append({
            **dict(zip(by, key if isinstance(key, tuple) else (key,))),
            "diverged": nonfinite or over_bound,
            "diverged_reason": "non-finite" if nonfinite else ("q-bound" if over_bound else ""),
            "first_diverged_step": g.loc[bad, "step"].min() if (nonfinite or over_bound) else math.nan,
            "final_step": final["step"],
            "final_q_data_mean": final["q_data_mean"],
            "final_critic_param_norm": final["critic_param_norm"],
            "final_seem": final["seem"],
            "final_seem_normalized": final["seem_normalized"],
            "max_seem": g["seem"].max(),  # skips NaN
            "first_positive_seem_step": positive.min() if len(positive) else math.nan,
        })
    return pd.DataFrame(out)
