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

import argparse
import copy
import itertools
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seemrl.algos import iql
from seemrl.devices import matmul_precision

OBS, ACT = 17, 6  # HalfCheetah / Walker2d sizes


# ------------------------------------------------------------------ the plain baseline
def _mlp(i, o, hidden, ln):
    layers, d = [], i
    for h in hidden:
        layers += [nn.Linear(d, h)] + ([nn.LayerNorm(h)] if ln else []) + [nn.ReLU()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, o))


class PlainIQL:
    """Single-seed IQL as commonly written (CORL-style PyTorch), in the original's update order."""

    def __init__(self, cfg: iql.IQLConfig, data: iql.OfflineData, device, obs_dim=OBS, act_dim=ACT):
        ln = cfg.critic.get("norm") == "layernorm"
        self.cfg, self.data = cfg, data
        self.actor = _mlp(obs_dim, act_dim, cfg.hidden, False).to(device)
        self.log_std = nn.Parameter(torch.zeros(act_dim, device=device))
        self.q1, self.q2 = (_mlp(obs_dim + act_dim, 1, cfg.hidden, ln).to(device) for _ in range(2))
        self.vf = _mlp(obs_dim, 1, cfg.hidden, ln and cfg.value_norm_like_critic).to(device)
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
        with torch.no_grad():
            for net, tgt in ((self.q1, self.q1_t), (self.q2, self.q2_t)):
                for p, tp in zip(net.parameters(), tgt.parameters()):
                    tp.lerp_(p, c.tau)
        return {"critic_loss": q_loss.detach(), "value_loss": v_loss.detach(), "actor_loss": a_loss.detach()}


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


def make_data(n, device) -> iql.OfflineData:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    return iql.OfflineData.from_arrays(
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
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 with --tiny)")
    args = p.parse_args()
    if args.threads or args.tiny:
        torch.set_num_threads(args.threads or 1)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    seeds_list = args.seeds or ([1, 2] if args.tiny else [1, 10, 40])
    iters = args.iters or (20 if args.tiny else 300)
    hidden = (32, 32) if args.tiny else (256, 256)
    data = make_data(10_000 if args.tiny else 1_000_000, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; IQL (Gaussian actor, cosine actor lr), hidden {hidden}, "
          f"batch 256, {iters} timed steps after warm-up")
    print("| critic | implementation | matmul | seeds | steps/s per seed | seed-steps/s | speed-up | peak GPU MiB |")
    print("|---|---|---|---|---|---|---|---|")
    precisions = args.precision if device.type == "cuda" else ["ieee"]  # the CPU is always full fp32
    for norm in args.norms:
        cfg = iql.IQLConfig(hidden=hidden, steps=1_000_000, critic={"norm": norm})
        plain = PlainIQL(cfg, data, device)
        with matmul_precision(precisions[0]):
            base = steps_per_second(plain.step, device, warmup=10, iters=iters)
        print(f"| {norm} | plain PyTorch | {precisions[0]} | 1 | {base:.0f} | {base:.0f} | 1.0x | - |")
        modes = [("seemrl stacked", False)] + ([("seemrl stacked + CUDA graph", True)] if device.type == "cuda" else [])
        for (label, graph), precision, s in itertools.product(modes, precisions, seeds_list):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            seeds = list(range(s))
            run_cfg = iql.IQLConfig(**{**cfg.__dict__, "cuda_graph": graph, "matmul_precision": precision})
            nets = iql.build_nets(run_cfg, seeds, OBS, ACT)
            trainer = iql.IQLTrainer(run_cfg, seeds, data, nets, device)
            # the graphed step captures its graph in the first call (part of the warm-up);
            # its timed steps include drawing the batch windows on the CPU
            rate = steps_per_second(trainer.step, device, warmup=10, iters=iters * (4 if graph else 1))
            mem = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "-"
            ok = all(math.isfinite(float(v)) for v in trainer.step()["critic_loss"])
            print(f"| {norm} | {label} | {precision} | {s} | {rate:.0f} | {rate * s:.0f} | {rate * s / base:.1f}x "
                  f"| {mem} |" + ("" if ok else " (non-finite loss)"), flush=True)
            del trainer, nets


if __name__ == "__main__":
    main()
