"""Benchmark: one checkpoint's SEEM, seemrl's vectorised computation vs the authors' per-sample loop.

Measured side by side in one run on one device, for one critic head Q1 (Linear-ReLU-Linear-ReLU-
Linear, hidden 256-256, input obs 17 + act 6, as HalfCheetah / Walker2d) and random X, X*:
  authors   one backward pass per sample on a plain nn.Sequential with the same weights (their
            `td3/main.py`), rows / sqrt(P), A = gamma Phi* Phi^T - Phi Phi^T
            in fp32, then torch.linalg.eigvals(A) in fp32 on the same device
  seemrl    seemrl.analysis.seem.seem_matrices, then seem_from_matrix (fp64 on A's device: the
            rightmost eigenvalue alone by Krylov-Schur, its default), with each of its methods:
              structured NTK (the default): each linear weight's Gram from the outer-product
                  form of its per-sample gradient, no N x P Jacobian (fp64 Grams)
              vmap Jacobians: vmap(jacrev) over chunks of samples, Phi Phi^T in fp32
              vmap Jacobians, chunked: the same with the Jacobian memory bounded by --budget-mib
                  (panels of rows, the rest recomputed and streamed past them)
It prints markdown tables: times of Jacobians + Gram and of the eigen-solve, the speed-ups, the
peak GPU memory (torch.cuda.max_memory_allocated) or, on the CPU, the Jacobian bytes held by
seemrl's own accounting; the two SEEM values and their difference; and the eigen-solve at the
largest N: all eigenvalues (eigvals) on the GPU vs the CPU in fp32 / fp64, and the rightmost alone
by Krylov-Schur in fp64 (issue 17's target: <= 0.1 s per checkpoint at N = 2560).

On the CPU the per-sample loop at N = 2560 takes minutes: in full mode it is timed on the first
--loop-max samples and extrapolated linearly in N (labelled "extrapolated"); the SEEM values are
then compared at that subset size.

    python benchmarks/seem_speed.py              # GPU if present: N = 256, 1024, 2560
    python benchmarks/seem_speed.py --tiny       # CPU, hidden 32-32, N = 64, 128: seconds (CI)
    python benchmarks/seem_speed.py --n 512 --device cpu
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn

from seemrl.analysis.seem import rightmost_eigenvalue, seem_from_matrix, seem_matrices
from seemrl.training.nets import StackedMLP, seed_generators

OBS, ACT = 17, 6
GAMMA = 0.99
DEFAULT = "seemrl structured NTK (default)"


def METHODS(budget: int):
    """(label, seem_matrices method, max_jacobian_bytes) of each seemrl variant timed."""
    return [(DEFAULT, "structured", None), ("seemrl vmap Jacobians", "jacobian", None),
            (f"seemrl vmap Jacobians, chunked ({budget / 2**20:g} MiB)", "jacobian", budget)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats=1):
    """(median seconds, last result) over `repeats` runs."""
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def plain_copy(net: StackedMLP) -> nn.Sequential:
    """Seed 0 of a (norm-free) StackedMLP as the nn.Sequential the authors would write."""
    layers = []
    n = len(net.weights)
    for k in range(n):
        w, b = net.weights[k][0].detach(), net.biases[k][0, 0].detach()
        lin = nn.Linear(w.shape[0], w.shape[1]).to(w.device)
        with torch.no_grad():
            lin.weight.copy_(w.T)
            lin.bias.copy_(b)
        layers.append(lin)
        if k < n - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def loop_jacobian(plain: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The authors' way: one forward and backward pass per sample."""
    params = list(plain.parameters())
    n_params = sum(p.numel() for p in params)
    out = torch.empty((x.shape[0], n_params), device=x.device)
    for i in range(x.shape[0]):
        plain.zero_grad(set_to_none=True)
        plain(x[i:i + 1]).sum().backward()
        out[i] = torch.cat([p.grad.reshape(-1) for p in params]) / math.sqrt(n_params)
    return out


def authors_matrix(plain, x, xs):
    phi, phi_s = loop_jacobian(plain, x), loop_jacobian(plain, xs)
    return GAMMA * phi_s @ phi.T - phi @ phi.T


def max_real_eig(a: torch.Tensor) -> float:
    return torch.linalg.eigvals(a).real.max().item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="hidden 32-32, N = 64, 128, on the CPU (seconds)")
    p.add_argument("--n", type=int, nargs="+", default=None, help="batch sizes N (default 256 1024 2560)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available, cpu with --tiny)")
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden widths (default 256 256)")
    p.add_argument("--chunk-size", type=int, default=512, help="samples per vmap chunk")
    p.add_argument("--budget-mib", type=float, default=None,
                   help="Jacobian memory bound of the chunked run (default 256; tiny: 0.5)")
    p.add_argument("--loop-max", type=int, default=None,
                   help="on the CPU, time the per-sample loop on at most this many samples and extrapolate "
                        "(default 512; tiny: no limit)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of seemrl's computation (median)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    hidden = tuple(args.hidden or ((32, 32) if args.tiny else (256, 256)))
    sizes = args.n or ([64, 128] if args.tiny else [256, 1024, 2560])
    budget = int((args.budget_mib if args.budget_mib is not None else (0.5 if args.tiny else 256)) * 2**20)
    loop_max = args.loop_max if args.loop_max is not None else (None if args.tiny or device.type == "cuda" else 512)

    torch.manual_seed(0)
    net = StackedMLP(seed_generators([0], 0), OBS + ACT, 1, hidden).to(device)
    plain = plain_copy(net)
    n_params = sum(q.numel() for q in plain.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; critic Q1 {OBS + ACT}-{'-'.join(map(str, hidden))}-1, "
          f"P = {n_params}; gamma {GAMMA}; vmap chunk {args.chunk_size}; chunked run bounded to "
          f"{budget / 2**20:g} MiB of Jacobian; seemrl's times are the median of {args.repeats}")
    # X* = X + noise, drawn from separate generators so that the first n rows do not depend on max(N)
    x_all = torch.randn(max(sizes), OBS + ACT, generator=torch.Generator().manual_seed(1))
    xs_all = (x_all + 0.3 * torch.randn(x_all.shape, generator=torch.Generator().manual_seed(2))).to(device)
    x_all = x_all.to(device)

    # warm-up: cuBLAS / MAGMA initialisation, vmap tracing
    for method in ("structured", "jacobian"):
        seem_from_matrix(seem_matrices(net, 0, x_all[:16], xs_all[:16], GAMMA, args.chunk_size, method=method)[0])
    max_real_eig(authors_matrix(plain, x_all[:4], xs_all[:4]))

    timing_rows, agreement_rows, last = [], [], None
    for n in sizes:
        x, xs = x_all[:n], xs_all[:n]
        # ---- seemrl: each method
        results = {}
        for label, method, bound in METHODS(budget):
            stats = {}
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            t_jac, (a, _, diag) = _timed(
                lambda: seem_matrices(net, 0, x, xs, GAMMA, args.chunk_size, bound, stats, method=method),
                device, args.repeats)
            assert stats["method"] == method, stats
            t_eig, res = _timed(lambda: seem_from_matrix(a, diag), device, args.repeats)
            mem = (f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} GPU"
                   if device.type == "cuda" else f"{stats['peak_jacobian_bytes'] / 2**20:.1f} Jacobian")
            results[label] = (t_jac, t_eig, res, mem)
            last = a
        ours_jac, ours_eig, ours, _ = results[DEFAULT]
        # ---- the authors' loop
        n_loop = n if loop_max is None else min(n, loop_max)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        t_loop, a_loop = _timed(lambda: authors_matrix(plain, x[:n_loop], xs[:n_loop]), device)
        loop_mem = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} GPU" if device.type == "cuda" else "-"
        if n_loop == n:
            t_loop_eig, seem_loop = _timed(lambda: max_real_eig(a_loop), device)
            label = "authors' per-sample loop"
            ref = {lab: r[2] for lab, r in results.items()}
        else:  # extrapolate the loop; the eigen-solve of the same-size fp32 matrix is timed on ours
            t_loop = t_loop * n / n_loop
            t_loop_eig, _ = _timed(lambda: max_real_eig(last.float()), device)
            seem_loop = max_real_eig(a_loop)
            label = f"authors' per-sample loop (extrapolated from n={n_loop})"
            ref = {label: seem_from_matrix(seem_matrices(net, 0, x[:n_loop], xs[:n_loop], GAMMA, args.chunk_size,
                                                         bound, method=method)[0])
                   for label, method, bound in METHODS(budget)}
        base = t_loop + t_loop_eig
        timing_rows.append((n, label, t_loop, t_loop_eig, loop_mem, base, t_loop))
        for lab, (t_jac, t_eig, _res, mem) in results.items():
            timing_rows.append((n, lab, t_jac, t_eig, mem, base, t_loop))
        fro = ref[DEFAULT]["a_fro_norm"]
        agreement_rows.append((n, n_loop, seem_loop, *(ref[lab]["seem"] for lab, _, _ in METHODS(budget)),
                               max(abs(r["seem"] - seem_loop) for r in ref.values()) / fro))
        print(f"  N={n} done", flush=True)

    print()
    print("| N | implementation | Jacobians + Gram (s) | eigen-solve (s) | total (s) | speed-up Jacobians + Gram | "
          "speed-up total | peak memory (MiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n, label, t_jac, t_eig, mem, base, base_jac in timing_rows:
        total = t_jac + t_eig
        print(f"| {n} | {label} | {t_jac:.4f} | {t_eig:.4f} | {total:.4f} | {base_jac / t_jac:.1f}x | "
              f"{base / total:.1f}x | {mem} |")
    print()
    print("| N | compared at n | SEEM authors (fp32 eigvals) | SEEM structured | SEEM vmap Jacobians | "
          "SEEM vmap chunked | max difference / norm(A, fro) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, n_loop, s_loop, s_struct, s_jac, s_chunk, rel in agreement_rows:
        print(f"| {n} | {n_loop} | {s_loop:.7g} | {s_struct:.7g} | {s_jac:.7g} | {s_chunk:.7g} | {rel:.3g} |")

    # ---- eigvals: where and in which precision, on the largest A
    n = last.shape[0]
    print()
    print(f"| eigen-solve of A (N = {n}) | time (s) | max real part |")
    print("|---|---:|---:|")
    places = [device] + ([torch.device("cpu")] if device.type == "cuda" else [])
    for where in places:
        for dtype in (torch.float64, torch.float32):
            m = last.to(where, dtype)
            max_real_eig(m[:32, :32])  # warm-up
            t, value = _timed(lambda: max_real_eig(m), where)
            print(f"| {where.type} {str(dtype).replace('torch.', '')} | {t:.4f} | {value:.6g} |")
        m = last.to(where, torch.float64)
        rightmost_eigenvalue(m[:200, :200])  # warm-up
        t, (value, info) = _timed(lambda: rightmost_eigenvalue(m), where)
        print(f"| {where.type} float64, rightmost alone (Krylov-Schur, {info['products']} products with A) | {t:.4f} "
              f"| {value if value is None else format(value, '.6g')} |")
    big = [r for r in timing_rows if r[0] == max(sizes)]
    loop_row = big[0]
    ours_row = next(r for r in big if r[1] == DEFAULT)
    speedup = loop_row[6] / ours_row[2]
    total = ours_row[2] + ours_row[3]
    print()
    print(f"targets at N = {max(sizes)}, {DEFAULT}: Jacobians + Gram >= 50x faster than the per-sample loop: "
          f"{speedup:.1f}x ({'met' if speedup >= 50 else 'not met'}); one checkpoint's SEEM <= 1 s on an "
          f"H100/H200: {total:.3f} s on {name} ({'met' if total <= 1 else 'not met'}"
          f"{'' if device.type == 'cuda' else ', not a GPU'})")
    print(f"issue 17's target at N = {max(sizes)}: one checkpoint's SEEM (structured NTK + the default eigen-solve, "
          f"Krylov-Schur above N = 128) <= 0.1 s on an H100/H200: {total:.3f} s on {name} "
          f"({'met' if total <= 0.1 else 'not met'}"
          f"{'' if device.type == 'cuda' else ', not a GPU'})")


if __name__ == "__main__":
    main()
