"""Benchmark: SAC update throughput in seed-steps per second, seemrl's stacked seeds vs plain PyTorch.

Only the update is timed (no environment): each implementation samples minibatches from 1M
synthetic Hopper-sized transitions (obs 11, act 3) held on the device. Measured side by side in
one run on one device:
  plain    the usual single-seed PyTorch SAC update (nn.Sequential actor and twin critics,
           torch.optim.Adam, EMA target critics, automatic temperature), one seed at a time
  seemrl   seemrl.algos.online_sac.SACTrainer (on seemrl.training) with S seeds stacked in one
           process (one replay buffer of 1M transitions per seed), eager (cuda_graph=False) and,
           on a GPU, with the update replayed as a CUDA graph
for critics without and with LayerNorm (the paper's Fig. 11 variant), and prints update steps/s,
seed-steps/s summed over seeds, the speed-up over plain and the peak GPU memory.

    python benchmarks/sac_throughput.py                # GPU if present: S = 1, 10, 40
    python benchmarks/sac_throughput.py --tiny         # CPU smoke run (the tests keep it working)
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from seemrl.algos import online_sac as osac

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
from common import compare, mlp, parser, polyak, print_title, setup  # noqa: E402

OBS, ACT = 11, 3  # Hopper sizes


# ------------------------------------------------------------------ the plain baseline
class PlainSAC:
    """Single-seed SAC as commonly written (CleanRL / SpinningUp style), data on the device."""

    def __init__(self, cfg: osac.OnlineSACConfig, data: torch.Tensor, device):
        ln = cfg.critic.get("norm") == "layernorm"
        self.cfg, self.data = cfg, data  # data [n, obs | act | reward | next_obs | not_done]
        self.actor = mlp(OBS, 2 * ACT, cfg.hidden).to(device)
        self.q1, self.q2 = (mlp(OBS + ACT, 1, cfg.hidden, ln).to(device) for _ in range(2))
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.log_alpha = torch.zeros(1, device=device, requires_grad=True)
        self.target_entropy = -float(ACT)
        self.aopt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.copt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=cfg.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)

    def sample(self, obs):
        mean, log_std = self.actor(obs).chunk(2, -1)
        log_std = osac.LOG_STD_MIN + 0.5 * (osac.LOG_STD_MAX - osac.LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        dist = torch.distributions.Normal(mean, log_std.exp())
        x = dist.rsample()
        a = torch.tanh(x)
        logp = dist.log_prob(x).sum(-1, keepdim=True) - torch.log(1 - a.pow(2) + 1e-6).sum(-1, keepdim=True)
        return a, logp

    def step(self):
        c, d = self.cfg, self.data
        idx = torch.randint(d.shape[0], (c.batch_size,), device=d.device)
        s, a, r, s2, nd = d[idx].split([OBS, ACT, 1, OBS, 1], dim=-1)
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            a2, logp2 = self.sample(s2)
            x2 = torch.cat([s2, a2], 1)
            target = r + c.gamma * nd * (torch.min(self.q1_t(x2), self.q2_t(x2)) - alpha * logp2)
        x = torch.cat([s, a], 1)
        loss = F.mse_loss(self.q1(x), target) + F.mse_loss(self.q2(x), target)
        self.copt.zero_grad(set_to_none=True)
        loss.backward()
        self.copt.step()
        pi, logp = self.sample(s)
        xp = torch.cat([s, pi], 1)
        for p in (*self.q1.parameters(), *self.q2.parameters()):
            p.requires_grad_(False)
        aloss = (alpha * logp - torch.min(self.q1(xp), self.q2(xp))).mean()
        self.aopt.zero_grad(set_to_none=True)
        aloss.backward()
        self.aopt.step()
        for p in (*self.q1.parameters(), *self.q2.parameters()):
            p.requires_grad_(True)
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        polyak(((self.q1, self.q1_t), (self.q2, self.q2_t)), c.tau)


# ------------------------------------------------------------------ data, the stacked trainer and the table
def fill_synthetic(data: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Hopper-like rows in place: normal states and rewards, actions in [-1, 1], 1% terminals."""
    data.normal_(generator=generator)
    data[..., OBS:OBS + ACT].clamp_(-1, 1)
    data[..., -1] = (data[..., -1] > -2.33).float()  # P(N(0,1) > -2.33) ~ 0.99


def plain(cfg: osac.OnlineSACConfig, n: int, device) -> PlainSAC:
    data = torch.empty(n, 2 * OBS + ACT + 2, device=device)
    fill_synthetic(data)
    return PlainSAC(cfg, data, device)


def stacked(cfg: osac.OnlineSACConfig, n: int, device, graph: bool, seeds: list[int]) -> osac.SACTrainer:
    """The trainer with one replay buffer of n synthetic transitions per seed. Its timed steps include
    drawing each seed's batch and noise (ahead, in the engine's windows, when graphed) and copying them."""
    run_cfg = osac.OnlineSACConfig(**{**cfg.__dict__, "cuda_graph": graph})
    replay = osac.ReplayBuffers(len(seeds), n, OBS, ACT, device)
    fill_synthetic(replay.data)
    replay.size, replay.pos = n, 0
    replay.size_t.fill_(n)
    return osac.SACTrainer(run_cfg, seeds, osac.build_nets(run_cfg, seeds, OBS, ACT), replay, device)


def assert_finite(trainer: osac.SACTrainer) -> str:
    q = trainer.step()["q_mean"]
    assert torch.isfinite(q).all(), "the benchmark's SAC diverged"
    return ""


def main():
    p = parser(__doc__, precisions=None)
    p.add_argument("--transitions", type=int, default=None, help="replay transitions per seed")
    args = p.parse_args()
    device, seed_counts, iters = setup(args, iters=300, tiny_iters=5)
    hidden = (32, 32) if args.tiny else (256, 256)
    batch = 32 if args.tiny else 256
    n = args.transitions or (10_000 if args.tiny else 1_000_000)
    print_title(device, f"SAC update (EMA targets, auto temperature), obs {OBS}, act {ACT}, hidden {hidden}, "
                        f"batch {batch}, {n} transitions per seed, {iters} timed steps after warm-up", matmul=False)
    compare(device, args.norms, None, seed_counts, iters=iters, warmup=3 if args.tiny else 10,
            config=lambda norm: osac.OnlineSACConfig(hidden=hidden, batch_size=batch, tau=0.005, critic={"norm": norm}),
            plain=lambda cfg: plain(cfg, n, device).step,
            stacked=lambda cfg, graph, precision, seeds: stacked(cfg, n, device, graph, seeds),
            check=assert_finite)


if __name__ == "__main__":
    main()
