"""What an algorithm file extends: its settings, critics, trainer, checkpoints and train().

`RunSettings` / `OfflineConfig` are the settings every algorithm shares (one name and one doc
each); `twin_critics` builds the critics from the `critic` spec; `CriticTrainer` is the engine's
`StackedTrainer` configured from a config; `save_offline_checkpoint` / `load_offline_checkpoint`,
`run_identity_of` and `train_offline` are the rest of an offline algorithm. An algorithm's own
file holds its config, networks and update step (`docs/engine.md`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn as nn

from seemrl.config import migrate
from seemrl.data.preparation import REWARD_TRANSFORMS
from seemrl.training.devices import MATMUL_PRECISIONS
from seemrl.training.loop import Checkpoint, LoopSettings, TrainResult, read_checkpoint, train_loop, write_checkpoint
from seemrl.training.nets import (CRITIC_SPEC_DEFAULTS, JoinedStacks, StackedMLP, critic_from_config,
                                  enable_fused_pointwise, per_seed_norm, seed_generators)
from seemrl.training.resume import ResumeDir
from seemrl.training.trainer import StackedTrainer

CRITIC_DROPOUT_REASON = "critic dropout draws its masks from CPU generators inside the step"  # (V counts too)


# ------------------------------------------------------------------ settings
def check_at_least_one(cfg, names: Sequence[str]) -> None:
    """Every field in `names` (step counts, sizes) is >= 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def check_one_of(cfg, name: str, allowed) -> None:
    if getattr(cfg, name) not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(cfg, name)!r}")


def check_positive(cfg, names: Sequence[str]) -> None:
    """Every field in `names` (learning rates, ...) is > 0 where it is set (None: not set)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def check_critic_spec(critic: dict) -> None:
    """Keys of `nets.CRITIC_SPEC_DEFAULTS` and `weight_decay` (>= 0) only."""
    unknown = sorted(set(critic) - set(CRITIC_SPEC_DEFAULTS) - {"weight_decay"})
    if unknown:
        raise ValueError(f"critic: unknown normalisation key(s) {unknown}; allowed: "
                         f"{sorted([*CRITIC_SPEC_DEFAULTS, 'weight_decay'])}")
    if not critic.get("weight_decay", 0.0) >= 0:
        raise ValueError(f"critic.weight_decay must be >= 0, got {critic['weight_decay']}")


def check_optimizer(optimizer: str) -> None:
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")


@dataclass
class RunSettings:
    """What every training run has: its length, what it logs, checkpoints and evaluates, and how
    its step executes. An algorithm's config extends it (redeclaring a field changes its default)."""

    steps: int = 1_000_000  # gradient steps
    checkpoint_every: int = 10_000  # steps between checkpoints (step 0 and the last included)
    log_every: int = 1000  # steps between logged training metrics
    eval_every: int = 0  # steps between policy evaluations in the environment (and at the end); 0 = none
    eval_from: int = 0  # no evaluation before this step but the last one (Table 1 averages only the last 10)
    eval_episodes: int = 10  # episodes per seed and evaluation
    eval_seed: int = 0  # episode k of seed s resets with a seed derived from (eval_seed, s, k)
    cuda_graph: bool = True  # on CUDA, replay the update step as a captured CUDA graph (ignored on CPU)
    matmul_precision: str = "tf32"  # float32 matmuls on CUDA: "tf32" (tensor cores) or "ieee"; CPU: always ieee
    compile_update: bool = False  # torch.compile the update step (then graph it): fused kernels, equal to eager to rounding only

    # a former setting name -> the fields that replace it: a config naming it is rejected, naming
    # them; a checkpoint saved with it loads (`seemrl.config.migrate`)
    RENAMED: ClassVar[dict[str, tuple[str, ...]]] = {}
    # settings added after runs existed, with the value those runs had: at that value they stay out
    # of the run identity, so those runs and their resume states keep theirs (`run_identity_of`)
    LATER_SETTINGS: ClassVar[dict[str, object]] = {"compile_update": False, "eval_from": 0}

    def __post_init__(self):
        check_at_least_one(self, ("steps", "checkpoint_every", "log_every"))
        check_one_of(self, "matmul_precision", MATMUL_PRECISIONS)
        if self.eval_every < 0 or self.eval_episodes < 1 or self.eval_from < 0:
            raise ValueError(f"need eval_every >= 0, eval_episodes >= 1 and eval_from >= 0, got {self.eval_every}, "
                             f"{self.eval_episodes} and {self.eval_from}")


@dataclass
class OfflineConfig(RunSettings):
    """The settings every offline algorithm shares; its own follow."""

    batch_size: int = 256  # transitions per seed per step
    gamma: float = 0.99  # discount
    tau: float = 0.005  # EMA rate of the target networks; 1.0 = the target is the current network
    hidden: tuple[int, ...] = (256, 256)  # hidden widths of actor and critics
    critic: dict = field(default_factory=dict)  # critic normalisation: nets.CRITIC_SPEC_DEFAULTS keys + weight_decay
    normalize_states: bool = True  # standardise states with the dataset mean/std
    reward_transform: str = "none"  # data.preparation.REWARD_TRANSFORMS, applied before training

    RENAMED: ClassVar[dict[str, tuple[str, ...]]] = {"reward_mode": ("reward_transform",)}
    # settings that may differ between cells trained in one stack (a sweep's cells: `train_together:
    # [algorithms]`); each member then uses its own cell's value (`CriticTrainer.setting`)
    MEMBER_SETTINGS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        self.hidden, self.critic = tuple(self.hidden), dict(self.critic)  # given as list / mapping
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be one or more positive widths, got {self.hidden}")
        check_critic_spec(self.critic)
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        check_at_least_one(self, ("batch_size",))
        check_one_of(self, "reward_transform", tuple(REWARD_TRANSFORMS))
        super().__post_init__()


# ------------------------------------------------------------------ networks
def critic_spec(critic: dict) -> dict:
    """The normalisation spec of a `critic` config (for `critic_from_config`): weight decay is an
    optimiser setting, not part of it."""
    return {k: v for k, v in critic.items() if k != "weight_decay"}


def critic_weight_decay(critic: dict):
    """The critics' (coupled L2) weight decay of a `critic` config; 0 when not given."""
    return critic.get("weight_decay", 0.0)


def critic_net(spec: dict, seeds: Sequence[int], stream: int, dropout_stream: int, in_dim: int,
               hidden: Sequence[int], **kw) -> StackedMLP:
    """One stacked network with one output from a normalisation spec, initialised from `stream`;
    with dropout, its masks come from generators of `dropout_stream`."""
    dropout = spec.get("dropout", 0.0) > 0
    return critic_from_config(seed_generators(seeds, stream), in_dim, 1, hidden, spec,
                              dropout_generators=seed_generators(seeds, dropout_stream) if dropout else None, **kw)


def twin_critics(critic: dict, seeds: Sequence[int], in_dim: int, hidden: Sequence[int],
                 streams: Sequence[tuple[int, int]], **kw) -> tuple[StackedMLP, StackedMLP]:
    """Q1 and Q2 from a `critic` config; `streams` gives (init stream, dropout stream) of each."""
    spec = critic_spec(critic)
    q1, q2 = (critic_net(spec, seeds, stream, dropout_stream, in_dim, hidden, **kw)
              for stream, dropout_stream in streams)
    return q1, q2


def critic_params(nets) -> list[torch.Tensor]:
    """The parameters of both critics, q1's first."""
    return [*nets.q1.parameters(), *nets.q2.parameters()]


def critic_grad_norm(nets) -> torch.Tensor:
    """Per-seed norm of the critics' gradients (what their optimiser is about to apply)."""
    # a None gradient: a parameter the loss does not use (the bias before a BatchNorm)
    return per_seed_norm([p.grad for p in critic_params(nets) if p.grad is not None])


def critic_param_norms(nets) -> dict[str, torch.Tensor]:
    """The logged per-seed norm of the critics' parameters."""
    return {"critic_param_norm": per_seed_norm(critic_params(nets))}


def obs_stats(obs_dim: int, obs_mean=None, obs_std=None) -> tuple[torch.Tensor, torch.Tensor]:
    """State mean and std as float32 tensors; 0 and 1 when not given."""
    mean = torch.zeros(obs_dim) if obs_mean is None else torch.as_tensor(obs_mean, dtype=torch.float32)
    std = torch.ones(obs_dim) if obs_std is None else torch.as_tensor(obs_std, dtype=torch.float32)
    return mean, std


class OfflineNets:
    """Mixin of an offline algorithm's networks dataclass: states are standardised with its fields
    `obs_mean` / `obs_std`; `MODULES` names its networks (those a checkpoint holds)."""

    MODULES: ClassVar[tuple[str, ...]] = ()
    # the networks `policy` reads: an evaluation that plays while training goes on acts with a
    # copy of these (`policy_snapshot`); () = no copy, the policy plays in the training loop
    POLICY_MODULES: ClassVar[tuple[str, ...]] = ("actor",)
    # whether evaluation acts from a CPU copy (`host_policy`: a small MLP), or on the nets' device
    # (Diffusion-QL's sampler: thousands of network rows per state)
    POLICY_ON_HOST: ClassVar[bool] = True

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def policy_copy(self, device):
        """These nets with copies of the policy's networks and the state statistics on `device`
        (the others shared), so the policy acts there; the copies share no storage with the originals."""
        import copy

        moved = {name: copy.deepcopy(getattr(self, name)).to(device) for name in self.POLICY_MODULES}
        return dataclasses.replace(self, **moved, obs_mean=self.obs_mean.to(device, copy=True),
                                   obs_std=self.obs_std.to(device, copy=True))

    def policy_snapshot(self):
        """The policy at this step, in a copy that training does not change (an evaluation that
        plays while training goes on): on the host where the policy acts there, else on the
        nets' device."""
        return self.policy_copy("cpu" if self.POLICY_ON_HOST else self.obs_mean.device)

    def eval_rng_states(self) -> list[torch.Tensor]:
        """States of the generators the policy draws from (none: a deterministic policy)."""
        return []

    def set_eval_rng_states(self, states: Sequence[torch.Tensor]) -> None:
        """Restore what `eval_rng_states` returned."""

    def adopt_members(self, stack, members: slice) -> None:
        """For cells trained together, after their networks came from members `members` of the
        stack's nets `stack` (`seemrl.train.load_members`): take whatever else of those members the
        policy reads. Nothing for a policy of its networks alone."""

    def host_policy(self):
        """What evaluation acts with. The environments step on the host, one batch of actions per
        step: a policy on the GPU costs a round trip per step, and on a GPU shared by several jobs
        each round trip waits behind the others' work (about 10 s per HalfCheetah evaluation of
        25 episodes in the evidence run), so a deterministic policy acts from a CPU copy."""
        if not self.POLICY_ON_HOST or self.obs_mean.device.type == "cpu":
            return self
        return self.policy_copy("cpu")

    def to(self, device):
        for name in (*self.MODULES, "obs_mean", "obs_std"):
            setattr(self, name, getattr(self, name).to(device))
        return self


# ------------------------------------------------------------------ the trainer
def member_settings(cfg, settings: dict[str, Sequence[float]] | None, members: int, device) -> dict[str, torch.Tensor]:
    """Settings whose value differs between the members of a stack (cells of a sweep trained
    together): name -> one float32 value per member [S] on `device`. A member's arithmetic with its
    value is then the arithmetic of its cell alone with the config's (a Python float meets a
    float32 tensor as float32). Refuses, by name, a setting the algorithm keeps one for the stack
    (not in its Config's MEMBER_SETTINGS) and a list of the wrong length."""
    allowed = getattr(type(cfg), "MEMBER_SETTINGS", ())
    out = {}
    for name, values in (settings or {}).items():
        if name not in allowed:
            raise ValueError(f"setting {name!r} of {type(cfg).__name__} cannot differ between the cells of one "
                             f"stack (those that can: {', '.join(allowed) or 'none'})")
        if len(values) != members:
            raise ValueError(f"setting {name!r}: {len(values)} values for a stack of {members} members")
        out[name] = torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)
    return out


class CriticTrainer(StackedTrainer):
    """A `StackedTrainer` configured from `cfg` (steps, checkpoint_every, cuda_graph,
    matmul_precision, critic) with networks `nets` that hold twin critics q1 and q2.

    Critics with dropout draw their masks from CPU generators inside the forward pass: such a
    step runs eagerly, and the generators (`dropout_modules()`) are part of the resumable state.
    """

    def __init__(self, cfg, seeds: Sequence[int], data, nets, device, *, steps: int | None = None,
                 checkpoint_every: int | None = None, settings: dict[str, Sequence[float]] | None = None):
        self.cfg, self.nets = cfg, nets.to(device)
        self.matmul_precision = cfg.matmul_precision
        super().__init__(seeds, data, device, steps=cfg.steps if steps is None else steps,
                         checkpoint_every=cfg.checkpoint_every if checkpoint_every is None else checkpoint_every,
                         cuda_graph=cfg.cuda_graph, compile_update=cfg.compile_update)
        self.settings = member_settings(cfg, settings, len(seeds), self.device)

    def setting(self, name: str, ndim: int = 1):
        """A setting's value: the config's, or one per member ([S], then [S, 1, ...] to `ndim`
        dimensions) where cells of different values of it share the stack (`member_settings`)."""
        value = self.settings.get(name)
        return getattr(self.cfg, name) if value is None else value.reshape(-1, *([1] * (ndim - 1)))

    def dropout_modules(self) -> tuple[nn.Module, ...]:
        """The networks that may draw dropout masks inside the step (the critics' spec's)."""
        return self.nets.q1, self.nets.q2

    @property
    def graphable(self) -> bool:
        return not any(m.dropout > 0 for m in self.dropout_modules())

    def not_graphable_reason(self) -> str:
        return CRITIC_DROPOUT_REASON

    twin: JoinedStacks | None = None  # q1 and q2 as one stack of 2S members, where the algorithm joins them

    def _critic_mode(self, train: bool) -> None:
        self.nets.q1.train(train)
        self.nets.q2.train(train)
        if self.twin is not None:
            self.twin.train(train)

    def join_critics(self) -> None:
        """Hold q1 and q2 (and their targets, if any) as one stack of 2S members (`JoinedStacks`),
        so that the update can run both critics in one forward pass (`twin_forward`). Call once
        the networks and targets exist, on the training device."""
        self.twin = JoinedStacks(self.nets.q1, self.nets.q2)
        self.twin_target = JoinedStacks(self.targets["q1"], self.targets["q2"]) if self.targets else self.twin
        enable_fused_pointwise([self.twin.joined, self.twin_target.joined], self.device)

    def twin_forward(self, x: torch.Tensor, target: bool = False) -> torch.Tensor:
        """Q1 and Q2 (or their targets) of x [S, B, in] in one forward pass: [2, S, B, 1]."""
        q = (self.twin_target if target else self.twin)(x.repeat(2, 1, 1))
        return q.view(2, self.S, *q.shape[1:])

    def critic_td_loss(self, x: torch.Tensor, target: torch.Tensor, twin_q: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q1(x) [S, B, 1], the per-seed loss [S]: the mean squared errors of Q1 and Q2 against
        `target` [S, B, 1], summed; Q1's alone without `twin_q`). Both critics in one forward pass
        where they are joined."""
        if self.twin is not None:
            q = self.twin_forward(x)
            se = ((q - target) ** 2).mean((2, 3))
            return q[0], se[0] + se[1]
        q1 = self.nets.q1(x)
        loss = ((q1 - target) ** 2).mean((1, 2))
        if twin_q:
            loss = loss + ((self.nets.q2(x) - target) ** 2).mean((1, 2))
        return q1, loss

    def critic_grads(self, critic_loss: torch.Tensor, set_to_none: bool) -> None:
        """The critics' gradients of the sum of the per-seed losses (so per-seed gradients), in
        q1's and q2's parameters (views of the joined ones' where the critics are joined)."""
        self.optimizers["critic"].zero_grad(set_to_none=set_to_none)
        self.backward(critic_loss.sum(), set_to_none)

    def backward(self, loss: torch.Tensor, set_to_none: bool) -> None:
        """`loss.backward()`, the critics' gradients landing in q1's and q2's parameters (as views of
        the joined ones' where the critics are joined, whose gradients are cleared first); the
        caller clears the optimisers' gradients."""
        if self.twin is not None:
            self.twin.zero_grad(set_to_none=set_to_none)
        loss.backward()
        if self.twin is not None:  # the critics' optimiser steps q1's and q2's parameters
            self.twin.share_grads()

    def critic_backward(self, critic_loss: torch.Tensor, q1: torch.Tensor, set_to_none: bool) -> dict:
        """After the critic-loss forward: the critics back in eval mode, their gradients from the
        sum of the per-seed losses (so per-seed gradients), a non-finite loss recorded; returns
        the logged critic loss and mean Q of q1 [S, B, 1]. The caller clips and steps."""
        self._critic_mode(train=False)
        self.critic_grads(critic_loss, set_to_none)
        self.record_nonfinite(critic_loss)
        return {"critic_loss": critic_loss.detach(), "q_mean": q1.detach().mean((1, 2))}

    def extra_state(self) -> dict:
        return {"dropout_gens": [m.dropout_rng_states() for m in self.dropout_modules()]}

    def load_extra_state(self, state: dict) -> None:
        for net, states in zip(self.dropout_modules(), state["dropout_gens"]):
            if states is not None:
                net.set_dropout_rng_states(states)


# ------------------------------------------------------------------ checkpoints
def save_offline_checkpoint(path: Path, fmt: str, nets: OfflineNets, cfg, seeds: list[int], step: int,
                            diverged_step: list[int | None], *, obs_dim: int, act_dim: int) -> None:
    """A checkpoint of every network in `nets.MODULES`, the dimensions and the state statistics."""
    write_checkpoint(path, fmt, step=step, seeds=seeds, config=cfg, diverged_step=diverged_step,
                     modules={name: getattr(nets, name) for name in nets.MODULES}, obs_dim=obs_dim, act_dim=act_dim,
                     obs_mean=nets.obs_mean, obs_std=nets.obs_std)


def load_nets(path: str | Path, fmt: str, config_cls: type, build_nets: Callable, modules: Sequence[str],
              stats: Sequence[str] = ("obs_mean", "obs_std")) -> tuple[dict, Any, Any]:
    """A checkpoint's payload, its config and its networks: `build_nets(cfg, seeds, obs_dim,
    act_dim, *payload[stats])` loaded with the saved weights of `modules`."""
    payload = read_checkpoint(path, fmt)
    cfg = config_cls(**migrate(config_cls, payload["config"]))  # saved before a rename: still loads
    nets = build_nets(cfg, payload["seeds"], payload["obs_dim"], payload["act_dim"], *(payload[k] for k in stats))
    for name in modules:
        getattr(nets, name).load_state_dict(payload[name])
    return payload, cfg, nets


def load_offline_checkpoint(path: str | Path, fmt: str, config_cls: type, build_nets: Callable,
                            modules: Sequence[str]) -> Checkpoint:
    """A checkpoint written by `save_offline_checkpoint`, its networks rebuilt by `build_nets`."""
    payload, cfg, nets = load_nets(path, fmt, config_cls, build_nets, modules)
    return Checkpoint(payload["step"], payload["seeds"], cfg, nets, payload["diverged_step"])


# ------------------------------------------------------------------ runs
def run_identity_of(cfg, seeds: Sequence[int], *, tag: dict | None = None, **fields) -> dict:
    """What makes two runs the same run, as plain JSON values (tuples become lists): `tag`
    first, then the config (without `cuda_graph`: how the step executes, not which run this
    is; a setting of `LATER_SETTINGS` only away from the value runs had before it existed, such
    as `compile_update` only when on, so those runs and resume states keep their identity), the
    seeds and `fields`."""
    config = dataclasses.asdict(cfg)
    config.pop("cuda_graph")
    for name, before in getattr(cfg, "LATER_SETTINGS", {}).items():
        if name in config and config[name] == before:
            config.pop(name)
    return json.loads(json.dumps({**(tag or {}), "config": config, "seeds": list(seeds), **fields}))


def loop_settings(cfg) -> LoopSettings:
    return LoopSettings(cfg.steps, cfg.log_every, cfg.checkpoint_every, cfg.eval_every, eval_from=cfg.eval_from)


def train_offline(trainer: StackedTrainer, save_checkpoint: Callable, checkpoint_dir: Path,
                  metric_keys: Sequence[str], param_norms: Callable[[Any], dict[str, torch.Tensor]],
                  log: Callable[[str], None], evaluate: Callable | None, resume: ResumeDir | None,
                  monitor=None) -> TrainResult:
    """Train an offline trainer (with `cfg`, `seeds`, `nets`) for `cfg.steps` steps with
    `seemrl.training.loop.train_loop`; the checkpoints, written by save_checkpoint(path, nets, cfg,
    seeds, step, diverged_step), end up in `checkpoint_dir`. Logged steps add `metric_keys` of
    the step's output and `param_norms(nets)`.

    evaluate(nets) -> one result per seed (`seemrl.training.evaluation.evaluate_policies` with the
    environment bound) is called every `cfg.eval_every` steps and after the last step. For
    `resume` and `monitor` see `seemrl.training.loop.train_loop`.
    """
    cfg, seeds = trainer.cfg, trainer.seeds

    def save(path: Path, step: int, diverged: list) -> None:
        save_checkpoint(path, trainer.nets, cfg, seeds, step, diverged)

    return train_loop(trainer, loop_settings(cfg), checkpoint_dir, save, metric_keys,
                      lambda: param_norms(trainer.nets), log=log,
                      evaluate=None if evaluate is None else NetsEvaluation(evaluate, trainer.nets), resume=resume,
                      monitor=monitor)


class NetsEvaluation:
    """The training loop's evaluate(trainer) over an evaluate(nets) of one run's networks. When
    evaluate(nets) can also play a copy of the policy (`snapshot(nets)` / `run(copy)`, e.g.
    `seemrl.train.PolicyEvaluation`) and asks to `overlap`, the loop plays it in the background
    (`seemrl.training.loop.train_loop`); `state`/`restore` carry a copy through a resume state."""

    def __init__(self, evaluate: Callable, nets):
        self.evaluate = evaluate
        # a policy without a copy of its own (no POLICY_MODULES) plays in the loop
        self.overlap = bool(getattr(evaluate, "overlap", False)) and bool(nets.POLICY_MODULES)

    @staticmethod
    def _start(trainer) -> None:
        start = getattr(trainer, "start_evaluation", None)  # e.g. Diffusion-QL's noise for this step
        if start is not None:
            start()

    def __call__(self, trainer):
        self._start(trainer)
        return self.evaluate(trainer.nets)

    def snapshot(self, trainer):
        self._start(trainer)
        return self.evaluate.snapshot(trainer.nets)

    def run(self, copy):
        return self.evaluate.run(copy)

    def state(self, copy) -> dict:
        return self.evaluate.state(copy)

    def restore(self, trainer, state: dict):
        return self.evaluate.restore(trainer.nets, state)
