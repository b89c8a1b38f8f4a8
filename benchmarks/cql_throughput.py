"""Benchmark: seed-steps per second of CQL, seemrl's stacked-seed trainer vs plain PyTorch.

Measured side by side in one run on one device:
  plain    the usual single-seed PyTorch CQL, written as CORL's algorithms/offline/cql.py
           (nn.Sequential tanh-Gaussian actor and twin critics, torch.distributions, one Adam per
           network, repeated observations and one critic call per set of CQL actions), one seed
  seemrl   seemrl.algos.cql.CQLTrainer with S seeds stacked in one process, eager
           (cuda_graph=False) and, on a GPU, with the step replayed as a CUDA graph
for critics without and with LayerNorm; prints steps/s per seed, seed-steps/s summed over seeds,
the speed-up over plain and the peak GPU memory. Both run the same update (CQL(H) with 10
importance-sampled actions per proposal, automatic entropy temperature, EMA targets).

    python benchmarks/cql_throughput.py                # GPU if present: S = 1, 10, 40
    python benchmarks/cql_throughput.py --tiny         # CPU smoke run (the tests keep it working)
"""
from __future__ import annotations

import argparse
import copy
import itertools
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from seemrl.algos import cql
from seemrl.devices import matmul_precision

OBS, ACT = 17, 6  # HalfCheetah / Walker2d sizes


# ------------------------------------------------------------------ the plain baseline
def _mlp(i, o, hidden, ln):
    layers, d = [], i
    for h in hidden:
        layers += [nn.Linear(d, h)] + ([nn.LayerNorm(h)] if ln else []) + [nn.ReLU()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, o))


class PlainActor(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.net = _mlp(OBS, 2 * ACT, hidden, False)
        self.log_std_multiplier = nn.Parameter(torch.tensor(1.0))
        self.log_std_offset = nn.Parameter(torch.tensor(-1.0))

    def forward(self, obs, repeat=None):
        if repeat is not None:
            obs = obs.unsqueeze(1).repeat_interleave(repeat, dim=1)
        mean, log_std = torch.split(self.net(obs), ACT, dim=-1)
        log_std = (self.log_std_multiplier * log_std + self.log_std_offset).clamp(-20.0, 2.0)
        dist = TransformedDistribution(Normal(mean, log_std.exp()), TanhTransform(cache_size=1))
        action = dist.rsample()
        return action, dist.log_prob(action).sum(-1)


class PlainQ(nn.Module):
    def __init__(self, hidden, ln):
        super().__init__()
        self.net = _mlp(OBS + ACT, 1, hidden, ln)

    def forward(self, obs, actions):
        if actions.dim() == 3:
            b, n = actions.shape[:2]
            obs = obs.unsqueeze(1).repeat_interleave(n, dim=1).reshape(-1, OBS)
            return self.net(torch.cat([obs, actions.reshape(-1, ACT)], -1)).reshape(b, n)
        return self.net(torch.cat([obs, actions], -1)).squeeze(-1)


class PlainCQL:
    """Single-seed CQL as commonly written (CORL's ContinuousCQL, non-Lagrange)."""

    def __init__(self, cfg: cql.CQLConfig, data: cql.OfflineData, device):
        ln = cfg.critic.get("norm") == "layernorm"
        self.cfg, self.data = cfg, data
        self.actor = PlainActor(cfg.hidden).to(device)
        self.q1, self.q2 = (PlainQ(cfg.hidden, ln).to(device) for _ in range(2))
        self.t1, self.t2 = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.log_alpha = nn.Parameter(torch.zeros((), device=device))
        self.aopt = torch.optim.Adam(self.actor.parameters(), lr=cfg.policy_lr)
        self.q1opt = torch.optim.Adam(self.q1.parameters(), lr=cfg.critic_lr)
        self.q2opt = torch.optim.Adam(self.q2.parameters(), lr=cfg.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.policy_lr)

    def step(self):
        c, d, n = self.cfg, self.data, self.cfg.cql_n_actions
        idx = torch.randint(len(d), (c.batch_size,), device=d.obs.device)
        s, a, r, s2, nd = d.obs[idx], d.action[idx], d.reward[idx, 0], d.next_obs[idx], d.not_done[idx, 0]
        new_actions, log_pi = self.actor(s)
        alpha_loss = -(self.log_alpha * (log_pi - ACT).detach()).mean()
        alpha = self.log_alpha.exp()
        q_new = torch.min(self.q1(s, new_actions), self.q2(s, new_actions))
        policy_loss = (alpha * log_pi - q_new).mean()
        q1p, q2p = self.q1(s, a), self.q2(s, a)
        with torch.no_grad():
            a2, _ = self.actor(s2)
            target = r + nd * c.gamma * torch.min(self.t1(s2, a2), self.t2(s2, a2))
        td = F.mse_loss(q1p, target) + F.mse_loss(q2p, target)
        rand = a.new_empty((c.batch_size, n, ACT)).uniform_(-1, 1)
        cur, cur_lp = (x.detach() for x in self.actor(s, repeat=n))
        nxt, nxt_lp = (x.detach() for x in self.actor(s2, repeat=n))
        density = math.log(0.5 ** ACT)
        cql_loss = 0.0
        for q, qp in ((self.q1, q1p), (self.q2, q2p)):
            cat = torch.cat([q(s, rand) - density, q(s, nxt) - nxt_lp, q(s, cur) - cur_lp], 1)
            cql_loss = cql_loss + c.cql_alpha * (torch.logsumexp(cat, 1) - qp).mean()
        qf_loss = td + cql_loss
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        self.aopt.zero_grad()
        policy_loss.backward()
        self.aopt.step()
        self.q1opt.zero_grad()
        self.q2opt.zero_grad()
        qf_loss.backward()
        self.q1opt.step()
        self.q2opt.step()
        with torch.no_grad():
            for net, tgt in ((self.q1, self.t1), (self.q2, self.t2)):
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


def make_data(n, device) -> cql.OfflineData:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    return cql.OfflineData.from_arrays(
        obs, rng.uniform(-1, 1, (n, ACT)), rng.normal(size=n), obs + 0.01, rng.random(n) < 0.01,
        np.zeros(OBS), np.ones(OBS), device)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small sizes on CPU (smoke run)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--precision", nargs="+", default=["tf32"], choices=["tf32", "ieee"],
                   help="CUDA float32 matmul precisions of the seemrl rows (the plain baseline runs "
                        "in the first one)")
    p.add_argument("--norms", nargs="+", default=["none", "layernorm"], choices=["none", "layernorm"])
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if args.tiny:
        torch.set_num_threads(1)  # tiny ops: intra-op threads only add synchronisation
    seeds_list = args.seeds or ([1, 2] if args.tiny else [1, 10, 40])
    iters = args.iters or (20 if args.tiny else 200)
    hidden = (32, 32) if args.tiny else (256, 256)
    batch = 32 if args.tiny else 256
    data = make_data(10_000 if args.tiny else 1_000_000, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; CQL(H), hidden {hidden}, batch {batch}, "
          f"10 CQL actions per proposal, {iters} timed steps after warm-up")
    print("| critic | implementation | matmul | seeds | steps/s per seed | seed-steps/s | speed-up | peak GPU MiB |")
    print("|---|---|---|---|---|---|---|---|")
    precisions = args.precision if device.type == "cuda" else ["ieee"]  # the CPU is always full fp32
    for norm in args.norms:
        cfg = cql.CQLConfig(hidden=hidden, batch_size=batch, critic={"norm": norm})
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        plain = PlainCQL(cfg, data, device)
        with matmul_precision(precisions[0]):
            base = steps_per_second(plain.step, device, warmup=5, iters=iters)
        mem = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "-"
        print(f"| {norm} | plain PyTorch (CORL-style) | {precisions[0]} | 1 | {base:.0f} | {base:.0f} | 1.0x "
              f"| {mem} |", flush=True)
        del plain
        modes = [("seemrl stacked", False)] + ([("seemrl stacked + CUDA graph", True)] if device.type == "cuda" else [])
        for (label, graph), precision, s in itertools.product(modes, precisions, seeds_list):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            seeds = list(range(s))
            run_cfg = cql.CQLConfig(**{**cfg.__dict__, "cuda_graph": graph, "matmul_precision": precision})
            nets = cql.build_nets(run_cfg, seeds, OBS, ACT)
            trainer = cql.CQLTrainer(run_cfg, seeds, data, nets, device)
            # the graphed step captures its graphs in the first call (part of the warm-up);
            # its timed steps include drawing the random-number windows on the CPU
            rate = steps_per_second(trainer.step, device, warmup=5, iters=iters * (4 if graph else 1))
            mem = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "-"
            print(f"| {norm} | {label} | {precision} | {s} | {rate:.0f} | {rate * s:.0f} | {rate * s / base:.1f}x "
                  f"| {mem} |", flush=True)
            del trainer, nets


if __name__ == "__main__":
    main()
