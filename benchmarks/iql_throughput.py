"""Benchmark: seed-steps per second of IQL, seemrl's stacked-seed trainer vs plain PyTorch.

Measured side by side in one run on one device:
  plain    the usual single-seed PyTorch IQL (CORL style: nn.Sequential actor, twin critics and
           value network, torch.optim.Adam, cosine actor learning rate, polyak targets), one seed
           at a time, in the original IQL's order (V step, actor step, Q step, target EMA)
  seemrl   seemrl.algos.iql.IQLTrainer with S seeds stacked in one process, eager
           (cuda_graph=False) and, on a GPU, with the step replayed as a CUDA graph
for critics (and V) without and with LayerNorm, and prints steps/s per seed, seed-steps/s summed
over seeds, the speed-up over plain and the peak GPU memory.

    python benchmarks/iql_throughput.py                # GPU if present: S = 1, 10, 40
    python benchmarks/iql_throughput.py --tiny         # CPU smoke run (tests keep it working)

`PlainIQL` is also the reference the tests compare the stacked trainer with (same weights, same
minibatches: same parameters after several steps).
"""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from seemrl.algos import iql

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
from common import compare, mlp, offline_data, offline_stacked, parser, polyak, print_title, setup

from seemrl.training.draws import OfflineData

OBS, ACT = 17, 6  # HalfCheetah / Walker2d sizes


# ------------------------------------------------------------------ the plain baseline
class PlainIQL:
    """Single-seed IQL as commonly written (CORL-style PyTorch), in the original's update order."""

    def __init__(self, cfg: iql.IQLConfig, data: OfflineData, device, obs_dim=OBS, act_dim=ACT):
        ln = cfg.critic.get("norm") == "layernorm"
        self.cfg, self.data = cfg, data
        self.actor = mlp(obs_dim, act_dim, cfg.hidden).to(device)
        self.log_std = nn.Parameter(torch.zeros(act_dim, device=device))
        self.q1, self.q2 = (mlp(obs_dim + act_dim, 1, cfg.hidden, ln).to(device) for _ in range(2))
        self.vf = mlp(obs_dim, 1, cfg.hidden, ln and cfg.value_norm_like_critic).to(device)
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        actor_params = [*self.actor.parameters()] + ([self.log_std] if cfg.actor_type == "gaussian" else [])
        self.aopt = torch.optim.Adam(actor_params, lr=cfg.actor_lr)
        self.qopt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=cfg.critic_lr)
        self.vopt = torch.optim.Adam(self.vf.parameters(), lr=cfg.value_lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.aopt, cfg.steps)

    def load_seed(self, nets: iql.IQLNets, i: int) -> "PlainIQL":
        """Copy seed i's weights from stacked networks (plain MLPs only)."""
        with torch.no_grad():
            for seq, st in ((self.actor, nets.actor.net), (self.q1, nets.q1), (self.q2, nets.q2), (self.vf, nets.value)):
                linears = [m for m in seq if isinstance(m, nn.Linear)]
                for lin, w, b in zip(linears, st.weights, st.biases, strict=True):
                    lin.weight.copy_(w[i].T)
                    lin.bias.copy_(b[i, 0])
            if nets.actor.log_std is not None:
                self.log_std.copy_(nets.actor.log_std[i, 0])
            self.q1_t.load_state_dict(self.q1.state_dict())
            self.q2_t.load_state_dict(self.q2.state_dict())
        return self

    def step(self, idx=None):
        c, d = self.cfg, self.data
        if idx is None:
            idx = torch.randint(len(d), (c.batch_size,), device=d.obs.device)
        s, a, r, s2, nd = d.obs[idx], d.action[idx], d.reward[idx], d.next_obs[idx], d.not_done[idx]
        x = torch.cat([s, a], 1)
        with torch.no_grad():
            q_t = torch.min(self.q1_t(x), self.q2_t(x))
        # value: expectile regression
        u = q_t - self.vf(s)
        v_loss = torch.mean(torch.abs(c.expectile - (u < 0).float()) * u ** 2)
        self.vopt.zero_grad(set_to_none=True)
        v_loss.backward()
        self.vopt.step()
        # actor: advantage-weighted regression with the new V
        with torch.no_grad():
            exp_adv = torch.exp(c.beta * (q_t - self.vf(s))).clamp(max=c.exp_adv_max)
        mean = torch.tanh(self.actor(s))
        if c.actor_type == "gaussian":
            std = self.log_std.clamp(c.log_std_min, c.log_std_max).exp()
            bc = -torch.distributions.Normal(mean, std).log_prob(a).sum(-1, keepdim=True)
        else:
            bc = ((mean - a) ** 2).sum(-1, keepdim=True)
        a_loss = torch.mean(exp_adv * bc)
        self.aopt.zero_grad(set_to_none=True)
        a_loss.backward()
        self.aopt.step()
        self.sched.step()
        # critics: regression on r + gamma * V(s')
        with torch.no_grad():
            target = r + c.gamma * nd * self.vf(s2)
        q_loss = F.mse_loss(self.q1(x), target) + F.mse_loss(self.q2(x), target)
        self.qopt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.qopt.step()
        polyak(((self.q1, self.q1_t), (self.q2, self.q2_t)), c.tau)
        return {"critic_loss": q_loss.detach(), "value_loss": v_loss.detach(), "actor_loss": a_loss.detach()}


# ------------------------------------------------------------------ the table
def finite_note(trainer: iql.IQLTrainer) -> str:
    ok = all(math.isfinite(float(v)) for v in trainer.step()["critic_loss"])
    return "" if ok else " (non-finite loss)"


def main():
    args = parser(__doc__).parse_args()
    device, seed_counts, iters = setup(args, iters=300, tiny_iters=20)
    hidden = (32, 32) if args.tiny else (256, 256)
    data = offline_data(10_000 if args.tiny else 1_000_000, OBS, ACT, device)
    print_title(device, f"IQL (Gaussian actor, cosine actor lr), hidden {hidden}, batch 256, "
                        f"{iters} timed steps after warm-up")
    compare(device, args.norms, args.precision, seed_counts, iters=iters, warmup=10,
            config=lambda norm: iql.IQLConfig(hidden=hidden, steps=1_000_000, critic={"norm": norm}),
            plain=lambda cfg: PlainIQL(cfg, data, device).step,
            stacked=offline_stacked(iql.IQLTrainer, iql.build_nets, data, device, OBS, ACT),
            check=finite_note)


if __name__ == "__main__":
    main()
