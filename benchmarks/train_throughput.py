"""Benchmark: seed-steps per second of TD3+BC, seemrl's stacked-seed trainer vs plain PyTorch.

Measured side by side in one run on one device:
  plain    the usual single-seed PyTorch implementation (nn.Sequential critic and actor, Adam,
           polyak targets), one seed at a time: the baseline everybody starts from
  seemrl   seemrl.algos.td3.TD3Trainer with S seeds stacked in one process, eager
           (cuda_graph=False) and, on a GPU, with the step replayed as a CUDA graph
for critics without and with LayerNorm, and prints steps/s per seed, seed-steps/s summed over
seeds, the speed-up over plain and the peak GPU memory.

    python benchmarks/train_throughput.py                # GPU if present: S = 1, 10, 40
    python benchmarks/train_throughput.py --tiny         # CPU smoke run (CI keeps it working)
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from seemrl.algos import td3

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
from common import compare, mlp, offline_data, offline_stacked, parser, polyak, print_title, setup

from seemrl.training.draws import OfflineData

OBS, ACT = 17, 6  # HalfCheetah / Walker2d sizes


# ------------------------------------------------------------------ the plain baseline
class PlainTD3BC:
    """Single-seed TD3+BC as commonly written (CORL-style)."""

    def __init__(self, cfg: td3.TD3Config, data: OfflineData, device):
        ln = cfg.critic.get("norm") == "layernorm"
        self.cfg, self.data, self.it = cfg, data, 0
        self.actor = mlp(OBS, ACT, cfg.hidden).to(device)
        self.q1, self.q2 = (mlp(OBS + ACT, 1, cfg.hidden, ln).to(device) for _ in range(2))
        self.targets = [copy.deepcopy(m) for m in (self.actor, self.q1, self.q2)]
        self.aopt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.copt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=cfg.critic_lr)

    def step(self, idx=None):
        c, d = self.cfg, self.data
        self.it += 1
        if idx is None:
            idx = torch.randint(len(d), (c.batch_size,), device=d.obs.device)
        s, a, r, s2, nd = d.obs[idx], d.action[idx], d.reward[idx], d.next_obs[idx], d.not_done[idx]
        actor_t, q1_t, q2_t = self.targets
        with torch.no_grad():
            noise = (torch.randn_like(a) * c.policy_noise).clamp(-c.noise_clip, c.noise_clip)
            a2 = (torch.tanh(actor_t(s2)) + noise).clamp(-1, 1)
            x2 = torch.cat([s2, a2], 1)
            target = r + c.gamma * nd * torch.min(q1_t(x2), q2_t(x2))
        x = torch.cat([s, a], 1)
        loss = F.mse_loss(self.q1(x), target) + F.mse_loss(self.q2(x), target)
        self.copt.zero_grad(set_to_none=True)
        loss.backward()
        self.copt.step()
        if self.it % c.policy_delay == 0:
            pi = torch.tanh(self.actor(s))
            q = self.q1(torch.cat([s, pi], 1))
            aloss = -(c.alpha / q.abs().mean().detach()) * q.mean() + c.bc_weight * F.mse_loss(pi, a)
            self.aopt.zero_grad(set_to_none=True)
            aloss.backward()
            self.aopt.step()
            polyak(zip((self.actor, self.q1, self.q2), self.targets), c.tau)


# ------------------------------------------------------------------ the table
def main():
    args = parser(__doc__).parse_args()
    device, seed_counts, iters = setup(args, iters=300, tiny_iters=20)
    hidden = (32, 32) if args.tiny else (256, 256)
    data = offline_data(10_000 if args.tiny else 1_000_000, OBS, ACT, device)
    print_title(device, f"TD3+BC, hidden {hidden}, batch 256, {iters} timed steps after warm-up")
    compare(device, args.norms, args.precision, seed_counts, iters=iters, warmup=10,
            config=lambda norm: td3.TD3Config(hidden=hidden, tau=0.005, bc_weight=1.0, critic={"norm": norm}),
            plain=lambda cfg: PlainTD3BC(cfg, data, device).step,
            stacked=offline_stacked(td3.TD3Trainer, td3.build_nets, data, device, OBS, ACT))


if __name__ == "__main__":
    main()
