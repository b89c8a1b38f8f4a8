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

import copy
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from seemrl.algos import cql

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
from common import compare, mlp, offline_data, offline_stacked, parser, polyak, print_title, setup

from seemrl.training.draws import OfflineData

OBS, ACT = 17, 6  # HalfCheetah / Walker2d sizes


# ------------------------------------------------------------------ the plain baseline
class PlainActor(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.net = mlp(OBS, 2 * ACT, hidden)
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
        self.net = mlp(OBS + ACT, 1, hidden, ln)

    def forward(self, obs, actions):
        if actions.dim() == 3:
            b, n = actions.shape[:2]
            obs = obs.unsqueeze(1).repeat_interleave(n, dim=1).reshape(-1, OBS)
            return self.net(torch.cat([obs, actions.reshape(-1, ACT)], -1)).reshape(b, n)
        return self.net(torch.cat([obs, actions], -1)).squeeze(-1)


class PlainCQL:
    """Single-seed CQL as commonly written (CORL's ContinuousCQL, non-Lagrange)."""

    def __init__(self, cfg: cql.CQLConfig, data: OfflineData, device):
        ln = cfg.critic.get("norm") == "layernorm"
        self.cfg, self.data = cfg, data
        self.actor = PlainActor(cfg.hidden).to(device)
        self.q1, self.q2 = (PlainQ(cfg.hidden, ln).to(device) for _ in range(2))
        self.t1, self.t2 = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.log_alpha = nn.Parameter(torch.zeros((), device=device))
        self.aopt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.q1opt = torch.optim.Adam(self.q1.parameters(), lr=cfg.critic_lr)
        self.q2opt = torch.optim.Adam(self.q2.parameters(), lr=cfg.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.actor_lr)

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
        polyak(((self.q1, self.t1), (self.q2, self.t2)), c.tau)


# ------------------------------------------------------------------ the table
def main():
    args = parser(__doc__, precisions=["tf32"]).parse_args()
    device, seed_counts, iters = setup(args, iters=200, tiny_iters=20)
    hidden = (32, 32) if args.tiny else (256, 256)
    batch = 32 if args.tiny else 256
    data = offline_data(10_000 if args.tiny else 1_000_000, OBS, ACT, device)
    print_title(device, f"CQL(H), hidden {hidden}, batch {batch}, 10 CQL actions per proposal, "
                        f"{iters} timed steps after warm-up")
    compare(device, args.norms, args.precision, seed_counts, iters=iters, warmup=5,
            plain_label="plain PyTorch (CORL-style)", plain_memory=True,
            config=lambda norm: cql.CQLConfig(hidden=hidden, batch_size=batch, critic={"norm": norm}),
            plain=lambda cfg: PlainCQL(cfg, data, device).step,
            stacked=offline_stacked(cql.CQLTrainer, cql.build_nets, data, device, OBS, ACT))


if __name__ == "__main__":
    main()
