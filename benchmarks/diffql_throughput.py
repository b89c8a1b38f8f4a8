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
    python benchmarks/diffql_throughput.py --seeds 10 --variants default compiled bf16-backup compiled+bf16-backup

`--variants` times seemrl's step in several settings, each beside its own plain baseline, then
prints each one's seed-steps/s against the first variant's, row by row: `compiled` is
`compile_update`; `bf16-backup` is `backup_dtype: bfloat16` (the backup's sampler and target
critics under bfloat16 autocast: a speed trial that changes results beyond rounding).
"""
from __future__ import annotations

import copy
import math
import random
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from seemrl.algos import diffql

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
from common import compare, mlp, offline_data, offline_stacked, parser, polyak, print_title, setup

OBS, ACT = 29, 8  # AntMaze sizes
VARIANTS = {"default": {}, "compiled": {"compile_update": True}, "bf16-backup": {"backup_dtype": "bfloat16"},
            "compiled+bf16-backup": {"compile_update": True, "backup_dtype": "bfloat16"}}


# ------------------------------------------------------------------ the plain baseline
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
        self.net = mlp(ACT + e + OBS, ACT, cfg.hidden, activation=nn.Mish)

    def forward(self, x, t, s):
        return self.net(torch.cat([x, self.time_mlp(t), s], -1))


class PlainDiffQL:
    """Single-seed Diffusion-QL (the SEEM authors' settings) as commonly written."""

    def __init__(self, cfg: diffql.DiffQLConfig, data, device):
        ln = cfg.critic.get("norm") == "layernorm"
        self.cfg, self.data, self.it = cfg, data, 0
        self.actor = PlainNoiseNet(cfg).to(device)
        self.actor_ema = copy.deepcopy(self.actor)
        self.q1, self.q2 = (mlp(OBS + ACT, 1, cfg.hidden, ln, nn.Mish).to(device) for _ in range(2))
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.aopt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.copt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=cfg.critic_lr)
        self.sched = diffql.DiffusionSchedule(cfg.beta_schedule, cfg.diffusion_steps, device)
        self.plan = diffql.dpm_solver_plan(self.sched, cfg.sample_steps, cfg.dpm_order)

    def sample(self, actor, s):
        x = torch.randn(s.shape[0], ACT, device=s.device)
        eps_fn = lambda x_in, t_in: actor(x_in, torch.full(x_in.shape[:1], t_in, device=s.device), s)
        return diffql.dpm_solver_sample(eps_fn, x, self.plan).clamp(-1, 1)

    def step(self):
        c, d, sch = self.cfg, self.data, self.sched
        for opt, lr in ((self.aopt, c.actor_lr), (self.copt, c.critic_lr)):
            for g in opt.param_groups:
                g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * min(self.it, c.steps) / c.steps))
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
        pairs = [(self.q1, self.q1_t), (self.q2, self.q2_t)]
        if self.it > c.actor_ema_start and self.it % c.actor_ema_every == 0:
            pairs.append((self.actor, self.actor_ema))
        polyak(pairs, c.tau)


# ------------------------------------------------------------------ the table
def plain(cfg: diffql.DiffQLConfig, data, device) -> PlainDiffQL:
    torch.manual_seed(0)  # its random numbers come from the global generator
    return PlainDiffQL(cfg, data, device)


def main():
    p = parser(__doc__, precisions=["tf32"])
    p.add_argument("--sample-steps", type=int, default=15, help="DPM-Solver function evaluations")
    p.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=["default"],
                   help="settings of seemrl's step to time, each against the first")
    args = p.parse_args()
    device, seed_counts, iters = setup(args, iters=100, tiny_iters=5)
    hidden = (16, 16, 16) if args.tiny else (256, 256, 256)
    batch = 32 if args.tiny else 256
    warmup = 1 if args.tiny else 3
    data = offline_data(2_000 if args.tiny else 1_000_000, OBS, ACT, device,
                        action_bound=0.999, reward=lambda rng, n: 10.0 * (rng.random(n) < 0.01))
    print_title(device, f"Diffusion-QL, hidden {hidden}, batch {batch}, T 1000, {args.sample_steps}-step DPM-Solver, "
                        f"max-Q backup over 10 samples, {iters} timed steps after {warmup} warm-up")
    results = {}
    for variant in args.variants:
        if len(args.variants) > 1:
            print(f"\nvariant: {variant} ({VARIANTS[variant] or 'the defaults'})\n", flush=True)
        results[variant] = compare(
            device, args.norms, args.precision, seed_counts, iters=iters, warmup=warmup, graph_factor=2, fmt=".1f",
            config=lambda norm: diffql.DiffQLConfig(steps=1_000_000, batch_size=batch, hidden=hidden,
                                                    sample_steps=args.sample_steps, grad_clip=7.0,
                                                    critic={"norm": norm}, **VARIANTS[variant]),
            plain=lambda cfg: plain(cfg, data, device).step,
            stacked=offline_stacked(diffql.DiffQLTrainer, diffql.build_nets, data, device, OBS, ACT))
    if len(args.variants) > 1:
        first = args.variants[0]
        print(f"\nseed-steps/s against {first}, measured above in this run:\n")
        print("| critic | step | seeds | " + " | ".join(args.variants) + " |")
        print("|---|---|---|" + "---|" * len(args.variants))
        for k, base in enumerate(results[first]):
            cells = [f"{results[v][k]['seed_steps']:.1f} ({results[v][k]['seed_steps'] / base['seed_steps']:.2f}x)"
                     for v in args.variants]
            print(f"| {base['norm']} | {'graphed' if base['graph'] else 'eager'} | {base['seeds']} | "
                  + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
