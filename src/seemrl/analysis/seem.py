"""SEEM (self-excite eigenvalue measure) of a critic, computed as the paper's authors do.

For N transitions, X = (s, a) and X* = (s', pi(s')); with phi(x) = dQ1(x)/dtheta / sqrt(P), the
linearised TD update of Q is driven by A = gamma Phi(X*) Phi(X)^T - Phi(X) Phi(X)^T. SEEM is the
largest real part of A's eigenvalues: positive means Q grows without bound under semi-gradient
TD (paper Thm. 1). `analyse_run` computes it, with Q, TD loss and parameter norms, for every
checkpoint and seed of a run; the NTK is built from structured per-layer products where it can
be (exact), else from per-sample Jacobians. `docs/analysis.md` explains sampling, the
tolerances of `divergence_verdict` and the methods.
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call, jacrev, vmap
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from seemrl.algos import load_checkpoint
from seemrl.training.loop import Checkpoint
from seemrl.training.nets import StackedMLP, per_seed_norm, plain_affine, seed_slice
from seemrl.training.resume import checkpoint_paths

log = logging.getLogger(__name__)

# Final |Q| above this counts as divergence (see `q_value_bound`): D4RL locomotion rewards are
# below ~10 per step, so with gamma = 0.99 no policy's |Q| exceeds 10 / (1 - 0.99) = 1e3, and a
# tenfold margin keeps slow-but-sane value overestimation from being called divergence.
DEFAULT_Q_BOUND = 1e4
# Default bound on the Jacobian rows held at once by `analyse_run` / `seem`: even the Jacobian
# method's full rows in the paper's setting (N = 2560, P = 138k, fp32: 2 x 1.4 GB plus one chunk)
# fit, so it runs in one pass.
DEFAULT_MAX_JACOBIAN_BYTES = 4 * 2**30
NAN_SEEM = {"seem": math.nan, "seem_normalized": math.nan, "a_fro_norm": math.nan, "ntk_diag_mean": math.nan,
            "seem_solver": None}


# ------------------------------------------------------------------ per-sample gradients
@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _seed_params(q1: StackedMLP, seed_index: int) -> dict[str, torch.Tensor]:
    """Seed `seed_index`'s parameters that Q1's output depends on (a bias before BatchNorm is not
    one: StackedMLP skips it), detached, with a seed dimension of 1."""
    unused = {f"biases.{k}" for k in getattr(q1, "unused_biases", ())}
    return seed_slice({k: v.detach() for k, v in q1.named_parameters() if k not in unused}, seed_index)


class _Q1Jacobian:
    """Rows of the per-sample Jacobian of one seed's Q1, / sqrt(P), written into given buffers.

    Columns follow `q1.named_parameters()` order, less the biases a BatchNorm critic leaves
    unused (and, with `wrt`, less the parameters not named there; P still counts all of them).
    Q is taken in eval mode (BatchNorm uses its running statistics, dropout is off), with the
    seed's buffers alongside its parameters. At most `chunk_size` samples are differentiated at
    once, so at most `chunk_size` rows exist outside the caller's buffers.
    """

    def __init__(self, q1: StackedMLP, seed_index: int, chunk_size: int, wrt: set[str] | None = None):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.q1, self.chunk_size = q1, chunk_size
        self.all_params = _seed_params(q1, seed_index)
        self.n_params = sum(v.numel() for v in self.all_params.values())  # P: every parameter of Q1
        self.params = {k: v for k, v in self.all_params.items() if wrt is None or k in wrt}
        fixed = {k: v for k, v in self.all_params.items() if k not in self.params}
        self.buffers = seed_slice(dict(q1.named_buffers()), seed_index)
        self.layout, offset = [], 0
        for name, v in self.params.items():
            self.layout.append((name, offset, v.numel()))
            offset += v.numel()
        self.n_cols = offset
        first = next(iter(self.all_params.values()))
        self.dtype, self.device = first.dtype, first.device
        buffers = self.buffers

        def q_of_one_sample(p, xi):
            return functional_call(q1, ({**p, **fixed}, buffers), (xi.reshape(1, 1, -1),)).reshape(())

        self._grads = vmap(jacrev(q_of_one_sample), in_dims=(None, 0))

    @property
    def row_bytes(self) -> int:
        return self.n_cols * torch.empty((), dtype=self.dtype).element_size()

    def rows(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Phi(x) [len(x), P] into `out` (allocated if None)."""
        n = x.shape[0]
        if out is None:
            out = torch.empty((n, self.n_cols), dtype=self.dtype, device=self.device)
        scale = math.sqrt(self.n_params)
        with _eval_mode(self.q1):
            for start in range(0, n, self.chunk_size):
                stop = min(n, start + self.chunk_size)
                grads = self._grads(self.params, x[start:stop])
                for name, offset, size in self.layout:
                    out[start:stop, offset:offset + size].copy_(grads[name].reshape(stop - start, size))
                del grads
                out[start:stop].div_(scale)
        return out


@plain_affine()  # the critics' layers as z = x W, as the structured NTK traces them
def q1_jacobian(q1: StackedMLP, seed_index: int, x: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
    """Per-sample gradients [N, P] of seed `seed_index`'s Q1(x) w.r.t. its P parameters, / sqrt(P).

    Columns follow `q1.named_parameters()` order, less the biases a BatchNorm critic leaves unused. Runs on the device of `q1`'s parameters.
    Q is taken in eval mode (per-sample: BatchNorm uses its running statistics, dropout is off),
    with the seed's buffers alongside its parameters.
    """
    return _Q1Jacobian(q1, seed_index, chunk_size).rows(x)


# ------------------------------------------------------------------ SEEM of one network
def seem_matrix(phi_x: torch.Tensor, phi_xstar: torch.Tensor, gamma: float) -> torch.Tensor:
    """A = gamma * Phi(X*) Phi(X)^T - Phi(X) Phi(X)^T, returned in float64.

    The product runs in the Jacobians' dtype (fp32, as the authors do; in fp64 it is 3x slower on
    the CPU and changed SEEM by < 1e-5 relative in our check); the eigen-solve gets fp64 because
    eigenvalues of a non-symmetric matrix are sensitive to rounding, and the N x N solve is cheap.
    """
    return ((gamma * phi_xstar - phi_x) @ phi_x.T).double()


METHODS = ("auto", "structured", "jacobian")


@plain_affine()  # the critics' layers as z = x W, as the structured NTK traces them
def seem_matrices(q1: StackedMLP, seed_index: int, x: torch.Tensor, x_star: torch.Tensor, gamma: float,
                  chunk_size: int = 512, max_jacobian_bytes: int | None = None,
                  stats: dict | None = None, method: str = "auto") -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, G(X, X), mean NTK diagonal) of seed `seed_index`'s Q1, holding bounded Jacobian memory.

    A = gamma Phi(X*) Phi(X)^T - Phi(X) Phi(X)^T in float64, G(X, X) = Phi(X) Phi(X)^T and
    trace(G) / N, by one of two methods:

    "jacobian": materialise the per-sample Jacobians (`_jacobian_seem_matrices`: A as
        `seem_matrix`, G in the Jacobians' dtype; bit for bit the unbounded computation when
        everything fits in `max_jacobian_bytes`, panels and streamed rows otherwise).
    "structured": never materialise the big blocks (`_structured_grams`): the per-sample gradient
        of a linear layer's weight is the outer product of the layer's input and of dQ/d(its
        output), so its Gram is the elementwise product of two small Grams. Both Grams in fp64.
        Falls back to "jacobian" (with a warning) if the network is not of that form.
    "auto" (default): "structured" where it applies and its few rows fit in the bound, else
        "jacobian".

    `stats`, if given, receives `method` (the one used), `peak_jacobian_bytes` (the most bytes of
    Jacobian rows, or of the structured method's activations and small-parameter Jacobians, held
    at once, by this module's accounting), and for "jacobian" `jacobian_rows_computed`,
    `panel_rows` and `chunk_rows`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if x_star.shape[0] != x.shape[0]:
        raise ValueError(f"X has {x.shape[0]} rows but X* has {x_star.shape[0]}")
    if method in ("auto", "structured"):
        out = _structured_grams(q1, seed_index, x, x_star, chunk_size, max_jacobian_bytes, stats,
                                warn=method == "structured")
        if out is not None:
            g_sx, g_xx = out
            return gamma * g_sx - g_xx, g_xx, torch.diagonal(g_xx).mean().item()
    return _jacobian_seem_matrices(q1, seed_index, x, x_star, gamma, chunk_size, max_jacobian_bytes, stats)


def _jacobian_seem_matrices(q1, seed_index, x, x_star, gamma, chunk_size, max_jacobian_bytes, stats):
    """A = (gamma Phi(X*) - Phi(X)) Phi(X)^T (float64) and G(X, X) from materialised Jacobians.

    With `max_jacobian_bytes` None, or when Phi(X), Phi(X*) and one chunk of rows fit in it, both
    Jacobians are computed once (fastest). Otherwise panels of m samples' rows of Phi(X) and
    gamma Phi(X*) - Phi(X) are held while the other rows of Phi(X) are recomputed and streamed past
    in blocks: at most (2 m + 2 c) P * itemsize <= max_jacobian_bytes bytes of Jacobian exist at
    any time (c = the vmap chunk, at most `chunk_size`), at the cost of recomputing Phi(X) about
    N / m times. Needs room for 4 rows at least.
    """
    jac = _Q1Jacobian(q1, seed_index, chunk_size)
    n, row_bytes = x.shape[0], jac.row_bytes
    itemsize = row_bytes // jac.n_cols
    chunk = min(chunk_size, n)
    if max_jacobian_bytes is None or (2 * n + chunk) * row_bytes <= max_jacobian_bytes:
        panel = n
    else:
        budget_rows = int(max_jacobian_bytes // row_bytes)
        if budget_rows < 4:
            raise ValueError(f"max_jacobian_bytes={max_jacobian_bytes} holds {budget_rows} Jacobian rows of "
                             f"{row_bytes} bytes; at least 4 are needed")
        chunk = max(1, min(chunk, budget_rows // 4))
        panel = max(1, (budget_rows - 2 * chunk) // 2)
    jac.chunk_size = chunk
    computed, peak = 0, 0

    def held(*tensors) -> None:
        nonlocal peak
        # the buffers given, plus one chunk being differentiated
        peak = max(peak, sum(t.numel() for t in tensors) * itemsize + chunk * row_bytes)

    a = g = stream = None
    diag = []
    for i0 in range(0, n, panel):
        i1 = min(n, i0 + panel)
        phi_i = jac.rows(x[i0:i1])
        held(phi_i)
        d_i = jac.rows(x_star[i0:i1])  # becomes gamma * Phi(X*) - Phi(X) in place
        held(phi_i, d_i)
        computed += 2 * (i1 - i0)
        d_i.mul_(gamma).sub_(phi_i)
        diag.append(phi_i.pow(2).sum(1))
        if panel == n:
            a = (d_i @ phi_i.T).double()
            g = phi_i @ phi_i.T
            break
        if stream is None:
            a = torch.empty((n, n), dtype=torch.float64, device=jac.device)
            g = torch.empty((n, n), dtype=jac.dtype, device=jac.device)
            stream = torch.empty((chunk, jac.n_cols), dtype=jac.dtype, device=jac.device)
        a[i0:i1, i0:i1] = d_i @ phi_i.T
        g[i0:i1, i0:i1] = phi_i @ phi_i.T
        for j0 in [*range(0, i0, chunk), *range(i1, n, chunk)]:
            j1 = min(n, j0 + chunk, i0 if j0 < i0 else n)
            phi_j = jac.rows(x[j0:j1], stream[: j1 - j0])
            held(phi_i, d_i, stream)
            computed += j1 - j0
            a[i0:i1, j0:j1] = d_i @ phi_j.T
            g[i0:i1, j0:j1] = phi_i @ phi_j.T
        del phi_i, d_i
    if stats is not None:
        stats.update(method="jacobian", peak_jacobian_bytes=peak, jacobian_rows_computed=computed,
                     panel_rows=panel, chunk_rows=chunk)
    return a, g, torch.cat(diag).mean().item()


class _LinearTaps(TorchFunctionMode):
    """Records, for each candidate weight, the input x and output z of `bmm(x, W)` /
    `baddbmm(b, x, W)`; a weight used in any other way (or twice) is marked `bad`."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.ids = {id(v): k for k, v in weights.items()}
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.bad: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # every use, also inside lists (torch.cat([...])) or keyword arguments
        used = [self.ids[id(t)] for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and id(t) in self.ids]
        if used:
            mat2 = {torch.bmm: 1, torch.Tensor.bmm: 1, torch.baddbmm: 2, torch.Tensor.baddbmm: 2}.get(func)
            name = used[0]
            if len(used) == 1 and mat2 is not None and len(args) == mat2 + 1 and not kwargs \
                    and isinstance(args[mat2], torch.Tensor) and id(args[mat2]) in self.ids and name not in self.inputs:
                self.inputs[name], self.outputs[name] = args[mat2 - 1], out
            else:
                self.bad.update(used)
        return out


def _structured_grams(q1: StackedMLP, seed_index: int, x: torch.Tensor, x_star: torch.Tensor, chunk_size: int,
                      max_jacobian_bytes: int | None, stats: dict | None,
                      warn: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(G(X*, X), G(X, X)) in float64 without materialising the Jacobians of the linear weights.

    For a weight W used once, as z = x W (+ b), dQ/dW = x^T dQ/dz per sample, so its part of
    G(U, V) is (x_U x_V^T) * (delta_U delta_V^T) (elementwise) with delta = dQ/dz, divided by P.
    The layer inputs and deltas come from one forward of the module's own code with the weights'
    uses recorded (`_LinearTaps`) and one backward of sum(Q): in eval mode the samples do not
    interact, so that gives every sample's delta. The other parameters (biases, norm affines,
    WeightNorm gain and direction) get per-sample Jacobians (`_Q1Jacobian`, a few columns), and
    where a bias sits right at z their columns must equal the deltas: if not, or if no weight
    qualifies, or if the rows held would exceed `max_jacobian_bytes`, None (use "jacobian").
    """
    params = _seed_params(q1, seed_index)
    buffers = seed_slice(dict(q1.named_buffers()), seed_index)
    candidates = {k: v for k, v in params.items() if k.startswith("weights.")}
    n, p_all = x.shape[0], sum(v.numel() for v in params.values())
    taps = []
    with _eval_mode(q1), torch.enable_grad():
        for inp in (x, x_star):
            inp = inp.detach().reshape(1, n, -1).requires_grad_(True)
            mode = _LinearTaps(candidates)
            with mode:
                q = functional_call(q1, (params, buffers), (inp,))
            taps.append(mode)
            mode.q = q
    structured = [k for k in candidates if all(k in m.inputs and k not in m.bad for m in taps)]
    if not structured:
        if warn:
            warnings.warn("no linear weight of the form z = x W: using the Jacobian method")
        return None
    small = {k for k in params if k not in structured}
    jac = _Q1Jacobian(q1, seed_index, chunk_size, wrt=small) if small else None
    itemsize = torch.empty((), dtype=x.dtype).element_size()
    tap_cols = sum(taps[0].inputs[k].shape[-1] + taps[0].outputs[k].shape[-1] for k in structured)
    held_bytes = 2 * n * ((jac.n_cols if jac else 0) + tap_cols) * itemsize \
        + (min(chunk_size, n) * jac.row_bytes if jac else 0)
    if max_jacobian_bytes is not None and held_bytes > max_jacobian_bytes:
        return None
    factors = []  # per input: (layer inputs, deltas, small-parameter Jacobian), all [N, .] in fp64
    for mode, inp in zip(taps, (x, x_star)):
        deltas = torch.autograd.grad(mode.q.sum(), [mode.outputs[k] for k in structured])
        factors.append(([mode.inputs[k].detach().reshape(n, -1).double() for k in structured],
                        [d.reshape(n, -1).double() for d in deltas],
                        jac.rows(inp).double() if jac else None))
    deltas_x = factors[0][1]
    # a bias added right at z has dQ/db = delta: check the recorded deltas against it
    if jac is not None:
        cols = {name: (offset, size) for name, offset, size in jac.layout}
        for k, delta in zip(structured, deltas_x):
            bias = f"biases.{k.split('.', 1)[1]}"
            if bias in cols and delta.shape[1] == cols[bias][1]:
                offset, size = cols[bias]
                ref = factors[0][2][:, offset:offset + size] * math.sqrt(p_all)
                scale = ref.abs().max().item() if ref.numel() else 0.0
                if not (math.isfinite(scale) and torch.allclose(delta, ref, rtol=1e-4, atol=1e-5 * max(scale, 1e-30))):
                    warnings.warn(f"structured NTK: dQ/dz of {k} disagrees with dQ/d{bias}; using the Jacobian method")
                    return None

    def gram(u, v):
        (a_u, d_u, j_u), (a_v, d_v, j_v) = u, v
        g = sum((au @ av.T) * (du @ dv.T) for au, av, du, dv in zip(a_u, a_v, d_u, d_v)) / p_all
        return g + j_u @ j_v.T if j_u is not None else g

    if stats is not None:
        stats.update(method="structured", peak_jacobian_bytes=held_bytes, structured=list(structured))
    return gram(factors[1], factors[0]), gram(factors[0], factors[0])


def seem_eigenvalues(phi_x: torch.Tensor, phi_xstar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Complex eigenvalues of the (non-symmetric) SEEM matrix A."""
    return torch.linalg.eigvals(seem_matrix(phi_x, phi_xstar, gamma))


# ------------------------------------------------------------------ the rightmost eigenvalue
SOLVERS = ("krylov", "full")
# Krylov-Schur settings: a 64-vector subspace, the 20 rightmost Ritz vectors kept at a restart, a
# Ritz pair accepted when its residual is below 1e-10 ||A||_F (the positive-SEEM tolerance is 1e-6)
KRYLOV_DIM, KRYLOV_KEEP, KRYLOV_TOL, KRYLOV_RESTARTS = 64, 20, 1e-10, 60


def _wanted_basis(h: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Ritz values and vectors of the small matrix h, the index of the rightmost, and an orthonormal
    real basis of the invariant subspace of the `keep` rightmost (a conjugate pair kept whole)."""
    theta, y = np.linalg.eig(h)
    theta, y = theta.astype(complex), y.astype(complex)
    order = np.argsort(-theta.real, kind="stable")
    chosen, cols = set(), []
    for i in order:
        if len(chosen) >= keep:
            break
        if i in chosen:
            continue
        chosen.add(i)
        if theta[i].imag != 0:
            rest = [j for j in range(len(theta)) if j not in chosen]
            if rest:
                chosen.add(min(rest, key=lambda j: abs(theta[j] - np.conj(theta[i]))))
            cols += [y[:, i].real, y[:, i].imag]
        else:
            cols.append(y[:, i].real)
    q, _ = np.linalg.qr(np.stack(cols, 1))
    return theta, y, int(order[0]), q


def rightmost_eigenvalue(a: torch.Tensor, dim: int = KRYLOV_DIM, keep: int = KRYLOV_KEEP, tol: float = KRYLOV_TOL,
                         max_restarts: int | None = None, seed: int = 0,
                         a_norm: float | None = None) -> tuple[float | None, dict]:
    """The largest real part of A's eigenvalues by restarted Arnoldi (Krylov-Schur, with the kept
    Ritz vectors' real invariant subspace in place of a Schur basis), on A's device.

    Each cycle extends an orthonormal Krylov basis to `dim` vectors (one product with A each,
    classical Gram-Schmidt twice), takes the Ritz values of the projected matrix on the host, and
    keeps the `keep` rightmost. It stops when the rightmost Ritz pair's residual is below
    `tol` * ||A||_F, and checks that residual once more with A itself. Returns (value, info), or
    (None, info) when it did not converge in `max_restarts` cycles or the basis broke down (an
    invariant subspace, which may miss the rightmost eigenvalue): the caller then solves fully.
    `a_norm` is ||A||_F where the caller has it already."""
    max_restarts = KRYLOV_RESTARTS if max_restarts is None else max_restarts
    n = a.shape[0]
    device, dtype = a.device, a.dtype
    a_norm = torch.linalg.matrix_norm(a).item() if a_norm is None else a_norm
    m = min(dim, n - 1)
    v = torch.zeros(n, m + 1, dtype=dtype, device=device)
    h = torch.zeros(m + 1, m, dtype=dtype, device=device)
    start = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)
    v[:, 0] = start / start.norm()
    k, products = 0, 0
    for restart in range(max_restarts):
        for j in range(k, m):
            w = a @ v[:, j]
            products += 1
            c = v[:, :j + 1].T @ w
            w = w - v[:, :j + 1] @ c
            c2 = v[:, :j + 1].T @ w
            w = w - v[:, :j + 1] @ c2
            h[:j + 1, j] = c + c2
            beta = w.norm()
            if beta.item() <= 1e-14 * a_norm:
                return None, {"restarts": restart, "products": products, "breakdown": True}
            h[j + 1, j] = beta
            v[:, j + 1] = w / beta
        hb = h.cpu().numpy().copy()  # on the CPU, h.numpy() would share h's memory, zeroed below
        theta, y, top, q = _wanted_basis(hb[:m, :m], keep)
        estimate = abs(hb[m, :] @ y[:, top]) / np.linalg.norm(y[:, top])
        if estimate <= tol * a_norm:
            x = v[:, :m].to(torch.complex128) @ torch.as_tensor(y[:, top], device=device)
            residual = (a.to(torch.complex128) @ x - complex(theta[top]) * x).norm().item() / x.norm().item()
            if residual <= 10 * tol * a_norm:
                return float(theta[top].real), {"restarts": restart, "products": products,
                                                "residual": residual / a_norm if a_norm else 0.0}
        # restart from the kept Ritz vectors: A W = W (Q^T H Q) + v_m (h_m Q), W = V Q
        kept = q.shape[1]
        qt = torch.as_tensor(q, device=device)
        v[:, :kept] = v[:, :m] @ qt
        v[:, kept] = v[:, m]
        h.zero_()
        h[:kept, :kept] = torch.as_tensor(q.T @ hb[:m, :m] @ q, device=device)
        h[kept, :kept] = torch.as_tensor(hb[m, :] @ q, device=device)
        k = kept
    return None, {"restarts": max_restarts, "products": products}


def seem_from_matrix(a: torch.Tensor, ntk_diag_mean: float = math.nan, solver: str = "krylov") -> dict:
    """SEEM and extras from A (float64, on any device); NaN everywhere if A is not finite.

    `solver` "full": all eigenvalues (`torch.linalg.eigvals`, on A's device, as the authors);
    "krylov" (the default): the rightmost one alone (`rightmost_eigenvalue`), with the full solve
    where it does not converge or A is small. `seem_solver` says which one gave the value.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if not torch.isfinite(a).all():  # eigvals raises or hangs on non-finite input
        return dict(NAN_SEEM)
    fro = torch.linalg.matrix_norm(a).item()
    seem, used = None, "full"
    if solver == "krylov" and a.shape[0] > 2 * KRYLOV_DIM:
        seem, _ = rightmost_eigenvalue(a, a_norm=fro)
        used = "krylov" if seem is not None else "full (krylov did not converge)"
    if seem is None:
        try:
            seem = torch.linalg.eigvals(a).real.max().item()
        except (torch.linalg.LinAlgError, RuntimeError) as exc:  # did not converge: report, don't crash
            warnings.warn(f"eigvals failed: {exc}; SEEM set to NaN")
            return dict(NAN_SEEM)
    return {"seem": seem, "seem_normalized": seem / fro if fro > 0 else math.nan,
            "a_fro_norm": fro, "ntk_diag_mean": ntk_diag_mean, "seem_solver": used}


def seem_from_jacobians(phi_x: torch.Tensor, phi_xstar: torch.Tensor, gamma: float) -> dict[str, float]:
    """SEEM and extras from per-sample gradients; NaN everywhere if anything is non-finite."""
    a = seem_matrix(phi_x, phi_xstar, gamma)
    if not torch.isfinite(a).all():
        return dict(NAN_SEEM)
    return seem_from_matrix(a, phi_x.pow(2).sum(1).mean().item())  # = trace(G(X, X)) / N


def seem(q1: StackedMLP, seed_index: int, x: torch.Tensor, x_star: torch.Tensor, gamma: float,
         chunk_size: int = 512, max_jacobian_bytes: int | None = DEFAULT_MAX_JACOBIAN_BYTES,
         method: str = "auto", solver: str = "krylov") -> dict[str, float]:
    """SEEM of seed `seed_index`'s Q1 on inputs X [N, in] and bootstrap inputs X* [N, in].

    At most `max_jacobian_bytes` of Jacobian are held at once (None: no bound); `method` as in
    `seem_matrices`, `solver` as in `seem_from_matrix`.
    """
    a, _, ntk_diag = seem_matrices(q1, seed_index, x, x_star, gamma, chunk_size, max_jacobian_bytes, method=method)
    return seem_from_matrix(a, ntk_diag, solver)


# ------------------------------------------------------------------ TD loss and its gradient
@plain_affine()  # the critics' layers as z = x W, as the structured NTK traces them
def td_gradient_norms(nets, gamma: float, twin_q: bool, x: torch.Tensor, x_star: torch.Tensor,
                      reward: torch.Tensor, not_done: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per seed, the critic's TD loss on a fixed batch and the norm of its gradient.

    x = (s, a) and x_star = (s', pi(s')) are [S, N, in] (normalised states, the checkpoint's own
    online actor); reward and not_done are [N]. The loss is the SEEM setting's critic loss with
    everything taken from this one checkpoint:
        y   = r + gamma * not_done * min(Q1(x*), Q2(x*))     (Q1(x*) alone if not twin_q)
        L_s = mean_i (Q1(x_i) - y_i)^2 + mean_i (Q2(x_i) - y_i)^2   (second term only if twin_q)
    with y held constant (no gradient through the target), the target networks being this
    checkpoint's online critics (the SEEM setting copies them every update, tau = 1; a checkpoint
    stores no others), no target-policy smoothing noise, and both critics in eval mode
    (BatchNorm: running statistics; dropout off). Returned, each [S]: `td_loss` (L_s),
    `critic_grad_norm` (L2 norm of dL_s/d(Q1, Q2 parameters), what the trainer logs as
    `critic_grad_norm` on its noisy random minibatches) and `q1_grad_norm` (Q1's part alone).
    The seeds are independent: a non-finite seed gives NaN / inf for itself only.
    """
    q1_params = [p for p in nets.q1.parameters()]
    q2_params = [p for p in nets.q2.parameters()] if twin_q else []
    with _eval_mode(nets.q1), _eval_mode(nets.q2), torch.enable_grad():
        with torch.no_grad():
            q_next = nets.q1(x_star)
            if twin_q:
                q_next = torch.minimum(q_next, nets.q2(x_star))
            target = reward.reshape(1, -1, 1) + gamma * not_done.reshape(1, -1, 1) * q_next
        loss = ((nets.q1(x) - target) ** 2).mean((1, 2))
        if twin_q:
            loss = loss + ((nets.q2(x) - target) ** 2).mean((1, 2))
        grads = torch.autograd.grad(loss.sum(), q1_params + q2_params, allow_unused=True)
    g1 = [g for g in grads[: len(q1_params)] if g is not None]  # None: a bias unused before BatchNorm
    g2 = [g for g in grads[len(q1_params):] if g is not None]
    return {"td_loss": loss.detach(), "critic_grad_norm": per_seed_norm(g1 + g2), "q1_grad_norm": per_seed_norm(g1)}


# ------------------------------------------------------------------ SEEM over a training run
BATCH_KEYS = ("obs", "action", "next_obs")


def sample_batch(transitions: dict[str, np.ndarray], n_samples: int, sample_seed: int,
                 replace: bool = True, keys: tuple[str, ...] = BATCH_KEYS) -> dict[str, np.ndarray]:
    """The fixed measurement batch: n_samples transitions drawn uniformly (with replacement).

    `keys` that `transitions` lacks are left out; the drawn indices do not depend on `keys`.
    """
    n = len(transitions["obs"])
    idx = np.random.default_rng(sample_seed).choice(n, size=n_samples, replace=replace)
    return {k: np.asarray(transitions[k])[idx] for k in keys if k in transitions}


def _cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    u, v = u.double().flatten(), v.double().flatten()
    return (u @ v / (u.norm() * v.norm())).item()


def _per_seed_finite(module: torch.nn.Module) -> torch.Tensor:
    return torch.stack([torch.isfinite(p.detach()).flatten(1).all(1) for p in module.parameters()]).all(0)


def _q1_vector(q1: StackedMLP, seed_index: int) -> torch.Tensor:
    return torch.cat([p.detach()[seed_index].flatten() for p in q1.parameters()])


@plain_affine()  # the critics' layers as z = x W, as the structured NTK traces them
def _analyse_checkpoint(ckpt: Checkpoint, batch: dict[str, torch.Tensor], chunk_size: int,
                        max_jacobian_bytes: int | None = DEFAULT_MAX_JACOBIAN_BYTES, method: str = "auto",
                        solver: str = "krylov") -> list[dict]:
    """Rows (one per seed) with SEEM and the paper's side metrics; keeps tensors for Fig. 1."""
    nets, n_seeds, cfg = ckpt.nets, len(ckpt.seeds), ckpt.config
    expand = lambda t: t.unsqueeze(0).expand(n_seeds, *t.shape)
    with torch.no_grad():
        obs_n, next_obs_n = nets.normalize(expand(batch["obs"])), nets.normalize(expand(batch["next_obs"]))
        action = expand(batch["action"])
        pi, next_pi = nets.policy(obs_n), nets.policy(next_obs_n)
        x, x_star = torch.cat([obs_n, action], -1), torch.cat([next_obs_n, next_pi], -1)
        with _eval_mode(nets.q1):  # a no-op unless the critic has BatchNorm or dropout
            q_data = nets.q1(x).squeeze(-1)
            q_policy = nets.q1(torch.cat([obs_n, pi], -1)).squeeze(-1)
        critic_norm = per_seed_norm([*nets.q1.parameters(), *nets.q2.parameters()])
        q1_norm = per_seed_norm(list(nets.q1.parameters()))
        weights_finite = _per_seed_finite(nets.q1) & _per_seed_finite(nets.q2) & _per_seed_finite(nets.actor)
    if "reward" in batch:
        not_done = 1.0 - batch["terminal"].float() if "terminal" in batch else torch.ones_like(batch["reward"])
        # checkpoints of other algorithms (online SAC: twin critics, no twin_q flag) get the same loss
        td = td_gradient_norms(nets, cfg.gamma, getattr(cfg, "twin_q", True), x, x_star, batch["reward"].float(),
                               not_done)
    else:  # no rewards given: no TD loss
        td = {k: torch.full((n_seeds,), math.nan) for k in ("td_loss", "critic_grad_norm", "q1_grad_norm")}
    rows = []
    for i, seed in enumerate(ckpt.seeds):
        finite = bool(weights_finite[i]) and bool(torch.isfinite(q_data[i]).all()) \
            and bool(torch.isfinite(q_policy[i]).all()) and bool(torch.isfinite(x_star[i]).all())
        flagged = ckpt.diverged_step[i] is not None and ckpt.diverged_step[i] <= ckpt.step
        result = dict(NAN_SEEM)
        gram = None
        if finite:
            a, gram, ntk_diag = seem_matrices(nets.q1, i, x[i], x_star[i], cfg.gamma, chunk_size, max_jacobian_bytes,
                                              method=method)
            result = seem_from_matrix(a, ntk_diag, solver)
            del a
            # Overflowing gradients of a finite-but-huge net are divergence too.
            finite = math.isfinite(result["seem"])
            if not finite:
                result, gram = dict(NAN_SEEM), None
        rows.append({
            "step": ckpt.step, "seed": seed, **result,
            "q_data_mean": q_data[i].mean().item(), "q_policy_mean": q_policy[i].mean().item(),
            "q_data_abs_mean": q_data[i].abs().mean().item(),
            "critic_param_norm": critic_norm[i].item(), "q1_param_norm": q1_norm[i].item(),
            "td_loss": td["td_loss"][i].item(), "critic_grad_norm": td["critic_grad_norm"][i].item(),
            "q1_grad_norm": td["q1_grad_norm"][i].item(),
            "policy_action_norm_mean": pi[i].norm(dim=-1).mean().item(),
            "data_action_norm_mean": action[i].norm(dim=-1).mean().item(),
            "diverged": (not finite) or flagged,
            # for the cosines to the final checkpoint; popped by the caller
            "_q1": _q1_vector(nets.q1, i), "_actions": pi[i], "_gram": gram,
        })
    return rows


COSINE_KINDS = ("params", "ntk", "actions")


def training_rewards(transitions, checkpoint_dir: str | Path) -> np.ndarray:
    """The rewards the run in `checkpoint_dir` trained on: its transition table
    (`seemrl.data.transitions.Transitions`) prepared by the run's own config, as its first
    checkpoint holds it (`seemrl.data.preparation.prepare`: e.g. Diffusion-QL's x10, IQL's
    scaling). Passed to `analyse_run`, the TD loss has the training's scale."""
    import dataclasses

    from seemrl.data.preparation import prepare

    paths = checkpoint_paths(checkpoint_dir)
    if not paths:
        raise FileNotFoundError(f"no checkpoints in {checkpoint_dir}")
    return prepare(transitions, dataclasses.asdict(load_checkpoint(paths[0]).config)).reward


def analyse_run(checkpoint_dir: str | Path, transitions: dict[str, np.ndarray], n_samples: int,
                sample_seed: int, device: str | torch.device = "cpu", chunk_size: int = 512,
                replace: bool = True, max_jacobian_bytes: int | None = DEFAULT_MAX_JACOBIAN_BYTES,
                method: str = "auto", solver: str = "krylov") -> pd.DataFrame:
    """SEEM and side metrics of every checkpoint and seed of one run; one row per (step, seed).

    `transitions` holds raw (unnormalised) obs, action, next_obs, and optionally reward (needed for
    the TD loss columns, NaN without it) and terminal (masks the TD target where given; the X*
    of SEEM never masks terminals); each checkpoint normalises with its own state statistics. The
    same batch is used at every checkpoint, as in the paper. At most `max_jacobian_bytes` of
    Jacobian are held at once (None: no bound); `method` as in `seem_matrices` (default: the
    structured NTK where it applies); `solver` as in `seem_from_matrix` (default: the rightmost
    eigenvalue by Krylov-Schur, the full solve where that does not converge).

    Columns: step, seed; seem, seem_normalized, a_fro_norm, ntk_diag_mean (NaN where diverged),
    seem_solver (the eigen-solver that gave the value);
    q_data_mean, q_data_abs_mean (Q1 on X), q_policy_mean (Q1 on (s, pi(s))); critic_param_norm
    (Q1 and Q2), q1_param_norm; td_loss, critic_grad_norm, q1_grad_norm (`td_gradient_norms`);
    policy_action_norm_mean, data_action_norm_mean (mean L2 norm of pi(s) and of a, Fig. 15);
    diverged; `cos_to_final_{params,ntk,actions}`: cosine similarities to the final checkpoint of
    the seed's Q1 parameters, its NTK Gram matrix G(X, X) (flattened) and its policy actions on
    the batch (paper Fig. 1); `cos_to_last_finite_*`: the same against the seed's last finite
    checkpoint (`last_finite_step`), which differs from the final one only for a seed that went
    non-finite (its `cos_to_final_*` are NaN); n_unique_samples, the distinct transitions in the
    batch (`docs/analysis.md`).
    """
    paths = checkpoint_paths(checkpoint_dir)
    if not paths:
        raise FileNotFoundError(f"no checkpoints in {checkpoint_dir}")
    drawn = sample_batch(transitions, n_samples, sample_seed, replace, keys=(*BATCH_KEYS, "reward", "terminal"))
    n_unique = len(np.unique(np.concatenate([np.asarray(drawn[k], np.float32) for k in BATCH_KEYS], 1), axis=0))
    batch = {k: torch.as_tensor(np.asarray(v, np.float32), device=device).reshape(n_samples, -1)
             for k, v in drawn.items()}
    batch.update({k: batch[k].reshape(-1) for k in ("reward", "terminal") if k in batch})
    if "reward" not in batch:
        log.info("no rewards given: td_loss and gradient norms are NaN")
    rows, final, last_finite = [], None, None
    # Newest first: the final checkpoint, then each seed's last finite one, are known before any
    # older checkpoint is compared with them, and nothing else is kept.
    for path in reversed(paths):
        ckpt = load_checkpoint(path)
        ckpt.nets.to(device)
        ckpt_rows = _analyse_checkpoint(ckpt, batch, chunk_size, max_jacobian_bytes, method, solver)
        current = [tuple(row.pop(k) for k in ("_q1", "_gram", "_actions")) for row in ckpt_rows]
        final = final or current
        last_finite = last_finite or [None] * len(current)
        for i, (row, now, end) in enumerate(zip(ckpt_rows, current, final)):
            if last_finite[i] is None and now[1] is not None:  # has a Gram matrix: finite
                last_finite[i] = (ckpt.step, now)
            ref_step, ref = last_finite[i] if last_finite[i] is not None else (math.nan, None)
            for kind, u, v, w in zip(COSINE_KINDS, now, end, ref or (None,) * 3):
                row[f"cos_to_final_{kind}"] = math.nan if u is None or v is None else _cosine(u, v)
                row[f"cos_to_last_finite_{kind}"] = math.nan if u is None or w is None else _cosine(u, w)
            row["last_finite_step"] = ref_step
        rows.extend(ckpt_rows)
        log.debug("SEEM of checkpoint step %d done", ckpt.step)
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
