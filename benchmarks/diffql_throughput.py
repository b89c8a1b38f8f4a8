"""Benchmark: seed-steps per second of Diffusion-QL, seemrl's stacked-seed trainer vs plain PyTorch.

The algorithm is the SEEM authors' Diffusion-QL (`seemrl.algos.diffql`, defaults: T = 1000,
15-step DPM-Solver, max-Q backup over 10 actions at s' sampled by the EMA actor, EDP's one-step
action in the actor loss, Mish 3x256 nets, cosine learning rate, per-network gradient clipping).
Measured side by side in one run on one device:
  plain    a single-seed PyTorch implementation as commonly written (CORL / Diffusion-QL style:
           nn.Sequential noise network and critics, torch.optim.Adam, polyak targets, random
           numbers from the global generator), one seed at a time: the baseline
  seemrl   seemrl.algos.diffql.DiffQLTrainer with S seeds stacked in one process, eager
           (cuda_graph=False) and, on a GPU, with the step replayed as a CUDA graph
for critics without and with LayerNorm; prints steps/s per seed, seed-steps/s summed over
seeds, the speed-up over plain and the peak GPU memory. Both use the same DPM-Solver stages
(`diffql.dpm_solver_plan`, host-side coefficients) and the same synthetic AntMaze-sized data.

    python benchmarks/diffql_throughput.py            # GPU if present: S = 1, 10, 40
    python benchmarks/diffql_throughput.py --tiny     # CPU smoke run, small nets and batch (tests keep it working)
"""
from __future__ import annotations

import argparse
import copy
import itertools
import math
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seemrl.algos import diffql
from seemrl.devices import matmul_precision

OBS, ACT = 29, 8  # AntMaze sizes


# ------------------------------------------------------------------ the plain baseline
def _mlp(i, o, hidden, ln=False):
    layers, d = [], i
    for h in hidden:
        layers += [nn.Linear(d, h)] + ([nn.LayerNorm(h)] if ln else []) + [nn.Mish()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, o))


class SinusoidalEmb(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        return diffql.sinusoidal_embedding(t, self.dim)


class PlainNoiseNet(nn.Module):
    def __init__(self, cfg: diffql.DiffQLConfig):
        super().__init__()
        e = cfg.time_embed
        self.time_mlp = nn.Sequential(SinusoidalEmb(e), nn.Linear(e, 2 * e), nn.Mish(), nn.Linear(2 * e, e))
        self.net = _mlp(ACT + e + OBS, ACT, cfg.hidden)

    def forward(self, x, t, s):
        return self.net(torch.cat([x, self.time_mlp(t), s], -1))


class PlainDiffQL:
    """Single-seed Diffusion-QL (the SEEM authors' settings) as commonly written."""

    def __init__(self, cfg: diffql.DiffQLConfig, data, device):
        ln = cfg.critic.get("norm") == "layernorm"
        self.cfg, self.data, self.it = cfg, data, 0
        self.actor = PlainNoiseNet(cfg).to(device)
        self.actor_ema = copy.deepcopy(self.actor)
        self.q1, self.q2 = (_mlp(OBS + ACT, 1, cfg.hidden, ln).to(device) for _ in range(2))
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.aopt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.copt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=cfg.lr)
        self.sched = diffql.DiffusionSchedule(cfg.beta_schedule, cfg.diffusion_steps, device)
        self.plan = diffql.dpm_solver_plan(self.sched, cfg.sample_steps, cfg.dpm_order)

    def sample(self, actor, s):
        x = torch.randn(s.shape[0], ACT, device=s.device)
        eps_fn = lambda x_in, t_in: actor(x_in, torch.full(x_in.shape[:1], t_in, device=s.device), s)
        return diffql.dpm_solver_sample(eps_fn, x, self.plan).clamp(-1, 1)

    def step(self):
        c, d, sch = self.cfg, self.data, self.sched
        for opt in (self.aopt, self.copt):
            for g in opt.param_groups:
                g["lr"] = 0.5 * c.lr * (1 + math.cos(math.pi * min(self.it, c.steps) / c.steps))
        self.it += 1
        B, n = c.batch_size, c.backup_samples
        idx = torch.randint(len(d), (B,), device=d.obs.device)
        s, a, r, s2, nd = d.obs[idx], d.action[idx], d.reward[idx], d.next_obs[idx], d.not_done[idx]
        with torch.no_grad():
            s2_rep = s2.repeat_interleave(n, 0)
            a2 = self.sample(self.actor_ema, s2_rep)
            x2 = torch.cat([s2_rep, a2], 1)
            q1 = self.q1_t(x2).view(B, n).max(1, keepdim=True)[0]
            q2 = self.q2_t(x2).view(B, n).max(1, keepdim=True)[0]
            target = r + c.gamma * nd * torch.min(q1, q2)
        x = torch.cat([s, a], 1)
        loss = F.mse_loss(self.q1(x), target) + F.mse_loss(self.q2(x), target)
        self.copt.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.q1.parameters(), c.grad_clip)
            nn.utils.clip_grad_norm_(self.q2.parameters(), c.grad_clip)
        self.copt.step()
        t = torch.randint(c.diffusion_steps, (B,), device=a.device)
        eps = torch.randn_like(a)
        a_t = sch.sqrt_abar_t[t, None] * a + sch.sqrt_1m_abar_t[t, None] * eps
        eps_pred = self.actor(a_t, t.float(), s)
        bc_loss = F.mse_loss(eps_pred, eps)
        a0 = (sch.sqrt_recip_abar_t[t, None] * a_t - sch.sqrt_recipm1_abar_t[t, None] * eps_pred).clamp(-1, 1)
        q = (self.q1 if random.random() > 0.5 else self.q2)(torch.cat([s, a0], 1))
        aloss = c.bc_weight * bc_loss - c.alpha * q.mean() / q.abs().mean().detach()
        self.aopt.zero_grad(set_to_none=True)
        aloss.backward()
        if c.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_clip)
        self.aopt.step()
        with torch.no_grad():
            pairs = [(self.q1, self.q1_t), (self.q2, self.q2_t)]
            if self.it > c.actor_ema_start and self.it % c.actor_ema_every == 0:
                pairs.append((self.actor, self.actor_ema))
            for net, tgt in pairs:
                for p, tp in zip(net.parameters(), tgt.parameters()):
                    tp.lerp_(p, c.tau)


# ------------------------------------------------------------------ timing
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_second(step, device, warmup, iters) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return iters / (time.perf_counter() - start)


def make_data(n, device) -> diffql.OfflineData:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    return diffql.DiffQLData.from_arrays(
        obs, rng.uniform(-0.999, 0.999, (n, ACT)), 10.0 * (rng.random(n) < 0.01), obs + 0.01,
        rng.random(n) < 0.01, np.zeros(OBS), np.ones(OBS), device)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small networks on CPU (smoke run)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--precision", nargs="+", default=["tf32"], choices=["tf32", "ieee"],
                   help="CUDA float32 matmul precisions of the seemrl rows (the baseline runs in the first)")
    p.add_argument("--norms", nargs="+", default=["none", "layernorm"], choices=["none", "layernorm"])
    p.add_argument("--sample-steps", type=int, default=15, help="DPM-Solver function evaluations")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    seeds_list = args.seeds or ([1, 2] if args.tiny else [1, 10, 40])
    iters = args.iters or (5 if args.tiny else 100)
    hidden = (16, 16, 16) if args.tiny else (256, 256, 256)
    batch = 32 if args.tiny else 256
    warmup = 1 if args.tiny else 3
    data = make_data(2_000 if args.tiny else 1_000_000, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; Diffusion-QL, hidden {hidden}, batch {batch}, T 1000, "
          f"{args.sample_steps}-step DPM-Solver, max-Q backup over 10 samples, {iters} timed steps after {warmup} warm-up")
    print("| critic | implementation | matmul | seeds | steps/s per seed | seed-steps/s | speed-up | peak GPU MiB |")
    print("|---|---|---|---|---|---|---|---|")
    precisions = args.precision if device.type == "cuda" else ["ieee"]  # the CPU is always full fp32
    for norm in args.norms:
        cfg = diffql.DiffQLConfig(steps=1_000_000, batch_size=batch, hidden=hidden, sample_steps=args.sample_steps,
                                  grad_clip=7.0, critic={"norm": norm})
        torch.manual_seed(0)
        plain = PlainDiffQL(cfg, data, device)
        with matmul_precision(precisions[0]):
            base = steps_per_second(plain.step, device, warmup=warmup, iters=iters)
        print(f"| {norm} | plain PyTorch | {precisions[0]} | 1 | {base:.1f} | {base:.1f} | 1.0x | - |", flush=True)
        del plain
        modes = [("seemrl stacked", False)] + ([("seemrl stacked + CUDA graph", True)] if device.type == "cuda" else [])
        for (label, graph), precision, s in itertools.product(modes, precisions, seeds_list):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            seeds = list(range(s))
            run_cfg = diffql.DiffQLConfig(**{**cfg.__dict__, "cuda_graph": graph, "matmul_precision": precision})
            nets = diffql.build_nets(run_cfg, seeds, OBS, ACT)
            trainer = diffql.DiffQLTrainer(run_cfg, seeds, data, nets, device)
            # the graphed step captures its graphs in the first call (part of the warm-up); its
            # timed steps include drawing the per-seed windows of pre-drawn inputs
            rate = steps_per_second(trainer.step, device, warmup=warmup, iters=iters * (2 if graph else 1))
            mem = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "-"
            print(f"| {norm} | {label} | {precision} | {s} | {rate:.1f} | {rate * s:.1f} | {rate * s / base:.1f}x "
                  f"| {mem} |", flush=True)
            del trainer, nets


if __name__ == "__main__":
    main()
