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

import argparse
import copy
import itertools
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seemrl.algos import td3
from seemrl.devices import matmul_precision

OBS, ACT = 17, 6  # HalfCheetah / Walker2d sizes


# ------------------------------------------------------------------ the plain baseline
def _mlp(i, o, hidden, ln):
    layers, d = [], i
    for h in hidden:
        layers += [nn.Linear(d, h)] + ([nn.LayerNorm(h)] if ln else []) + [nn.ReLU()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, o))


class PlainTD3BC:
    """Single-seed TD3+BC as commonly written (CORL-style)."""

    def __init__(self, cfg: td3.TD3Config, data: td3.OfflineData, device):
        ln = cfg.critic.get("norm") == "layernorm"
        self.cfg, self.data, self.it = cfg, data, 0
        self.actor = _mlp(OBS, ACT, cfg.hidden, False).to(device)
        self.q1, self.q2 = (_mlp(OBS + ACT, 1, cfg.hidden, ln).to(device) for _ in range(2))
        self.targets = [copy.deepcopy(m) for m in (self.actor, self.q1, self.q2)]
        self.aopt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.copt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=cfg.lr)

    def step(self):
        c, d = self.cfg, self.data
        self.it += 1
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
            with torch.no_grad():
                for net, tgt in zip((self.actor, self.q1, self.q2), self.targets):
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


def make_data(n, device) -> td3.OfflineData:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    return td3.OfflineData.from_arrays(
        obs, rng.uniform(-1, 1, (n, ACT)), rng.normal(size=n), obs + 0.01, rng.random(n) < 0.01,
        np.zeros(OBS), np.ones(OBS), device)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small sizes on CPU (smoke run)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--precision", nargs="+", default=["tf32", "ieee"], choices=["tf32", "ieee"],
                   help="CUDA float32 matmul precisions of the seemrl rows (the plain baseline runs "
                        "in the first one)")
    p.add_argument("--norms", nargs="+", default=["none", "layernorm"], choices=["none", "layernorm"])
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    seeds_list = args.seeds or ([1, 2] if args.tiny else [1, 10, 40])
    iters = args.iters or (20 if args.tiny else 300)
    hidden = (32, 32) if args.tiny else (256, 256)
    data = make_data(10_000 if args.tiny else 1_000_000, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; TD3+BC, hidden {hidden}, batch 256, "
          f"{iters} timed steps after warm-up")
    print("| critic | implementation | matmul | seeds | steps/s per seed | seed-steps/s | speed-up | peak GPU MiB |")
    print("|---|---|---|---|---|---|---|---|")
    precisions = args.precision if device.type == "cuda" else ["ieee"]  # the CPU is always full fp32
    for norm in args.norms:
        cfg = td3.TD3Config(hidden=hidden, tau=0.005, bc_weight=1.0, critic={"norm": norm})
        plain = PlainTD3BC(cfg, data, device)
        with matmul_precision(precisions[0]):
            base = steps_per_second(plain.step, device, warmup=10, iters=iters)
        print(f"| {norm} | plain PyTorch | {precisions[0]} | 1 | {base:.0f} | {base:.0f} | 1.0x | - |")
        modes = [("seemrl stacked", False)] + ([("seemrl stacked + CUDA graph", True)] if device.type == "cuda" else [])
        for (label, graph), precision, s in itertools.product(modes, precisions, seeds_list):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            seeds = list(range(s))
            run_cfg = td3.TD3Config(**{**cfg.__dict__, "cuda_graph": graph, "matmul_precision": precision})
            nets = td3.build_nets(run_cfg, seeds, OBS, ACT)
            trainer = td3.TD3Trainer(run_cfg, seeds, data, nets, device)
            # the graphed step captures its graphs in the first call (part of the warm-up);
            # its timed steps include drawing the batch windows on the CPU
            rate = steps_per_second(trainer.step, device, warmup=10, iters=iters * (4 if graph else 1))
            mem = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "-"
            print(f"| {norm} | {label} | {precision} | {s} | {rate:.0f} | {rate * s:.0f} | {rate * s / base:.1f}x "
                  f"| {mem} |", flush=True)
            del trainer, nets


if __name__ == "__main__":
    main()
