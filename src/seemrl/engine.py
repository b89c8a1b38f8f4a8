"""The training engine every offline algorithm runs on: S seeds in one process, one update step.

An algorithm (TD3, IQL, CQL, Diffusion-QL, ...) subclasses `StackedTrainer` and writes its update
step once, as plain PyTorch on stacked networks (`seemrl.nets.StackedMLP`, inputs [S, B, ...]).
The engine supplies the rest:

- Random draws. Every random number the step uses (minibatch indices, noise, diffusion times,
  ...) is declared as a `Draw` and drawn from per-seed CPU generators, one generator per seed and
  purpose, so seed s draws the same numbers whether it trains alone or among other seeds.
- CUDA graphs. On a GPU the draws of up to 1000 steps are made ahead (`Window`), copied to the
  device once, and each step reads its row at a device-side counter, so the whole step can be
  captured once per kind of step (`StackedTrainer.step_kind`) and replayed. The optimisers are the
  fused capturable Adam in both graphed and eager CUDA runs, which compute bitwise the same.
- Divergence. A loss given to `record_nonfinite` is checked on the device at every step; the
  first step where a seed's value is NaN or inf is kept per seed without a host sync.
- Resumable state. `state_dict()` holds every network, target network, optimiser, generator and
  counter; a run continued from it computes what an uninterrupted run computes (bitwise on CPU).
- The training loop (`train_loop`): logging of per-seed metrics, progress with steps/s and ETA,
  evaluation, checkpoints and resume states (`seemrl.resume.ResumeDir`).
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from seemrl.devices import matmul_precision
from seemrl.io import atomic_path
from seemrl.nets import enable_fused_pointwise, seed_generators
from seemrl.resume import ResumeDir, checkpoint_name, checkpoint_paths

if TYPE_CHECKING:
    from seemrl.tracking import Monitor

DRAW_KINDS = ("randint", "normal", "uniform")


# ------------------------------------------------------------------ data
@dataclass
class OfflineData:
    """Training transitions as tensors on the training device; states normalised."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    not_done: torch.Tensor  # 0 at true terminals: no bootstrap there; timeouts do bootstrap

    @classmethod
    def from_arrays(cls, obs, action, reward, next_obs, terminal, mean, std, device) -> "OfflineData":
        f = lambda x: torch.as_tensor(np.array(x, np.float32), device=device)  # a writable copy
        mean_t, std_t = f(mean), f(std)
        return cls(
            obs=(f(obs) - mean_t) / std_t,
            action=f(action),
            reward=f(reward).reshape(-1, 1),
            next_obs=(f(next_obs) - mean_t) / std_t,
            not_done=1.0 - f(terminal).reshape(-1, 1),
        )

    def __len__(self) -> int:
        return self.obs.shape[0]


# ------------------------------------------------------------------ random draws
@dataclass(frozen=True)
class Draw:
    """One random input of the update step, drawn per seed and step from its own generators.

    kind "randint" draws integers in [0, high) (int64), "normal" standard normals, "uniform"
    U[0, 1) floats; `shape` is one seed's draw for one step; `stream` names the purpose (see
    `seemrl.nets.seed_generators`) and must differ between draws of one algorithm.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    stream: int
    high: int | None = None

    def __post_init__(self):
        if self.kind not in DRAW_KINDS:
            raise ValueError(f"draw {self.name!r}: kind must be one of {DRAW_KINDS}, got {self.kind!r}")
        if (self.kind == "randint") != (self.high is not None):
            raise ValueError(f"draw {self.name!r}: 'high' is given with kind 'randint' and only then")

    @property
    def dtype(self) -> torch.dtype:
        return torch.int64 if self.kind == "randint" else torch.float32

    def sample(self, g: torch.Generator, steps: int | None = None) -> torch.Tensor:
        """One step's draw, or `steps` consecutive steps' draws stacked, from generator g."""
        shape = self.shape if steps is None else (steps, *self.shape)
        if self.kind == "randint":
            return torch.randint(self.high, shape, generator=g, device=g.device)
        if self.kind == "normal":
            return torch.randn(shape, generator=g, device=g.device)
        return torch.rand(shape, generator=g, device=g.device)

    def batches_exactly(self) -> bool:
        """Whether one draw of W steps equals W successive draws. PyTorch's CPU normal sampler
        fills blocks of 16 once a draw has 16 or more numbers, so normals batch exactly only when
        one step's draw is a multiple of 16; every kind is also checked on scratch generators."""
        if self.kind == "normal" and math.prod(self.shape) % 16:
            return False
        for steps in (2, 17, 64):
            g, h = torch.Generator().manual_seed(12345), torch.Generator().manual_seed(12345)
            together = self.sample(g, steps)
            apart = torch.stack([self.sample(h) for _ in range(steps)])
            if not (torch.equal(together, apart) and torch.equal(g.get_state(), h.get_state())):
                return False
        return True


class Window:
    """The draws of up to `rows` consecutive steps, drawn ahead into device buffers.

    Each step reads the row at a device-side counter and advances it (`take`), so a captured
    CUDA graph stays static. Every (draw, seed) is drawn from that seed's own generator, which
    lives on the training device: on a GPU a window costs S launches per draw however many steps
    it holds, and no random number is made on the host. With CPU generators the W rows are drawn
    in one call where that equals W step-by-step draws (`Draw.batches_exactly`), else step by
    step, so a CPU run does not depend on whether it uses windows. The window's size never depends
    on the number of seeds, so seed s draws the same numbers alone or among others.
    """

    def __init__(self, trainer: "StackedTrainer", rows: int):
        self.t = trainer
        self.rows = rows
        on_cpu = trainer.device.type == "cpu"
        # on a GPU every window is drawn whole: runs there are reproducible per window schedule,
        # which depends on the config only
        self.batched = {d.name: d.batches_exactly() if on_cpu else True for d in trainer.draws}
        self.dev = {d.name: torch.zeros((rows, trainer.S, *d.shape), dtype=d.dtype, device=trainer.device)
                    for d in trainer.draws}  # zero-filled: rows never drawn still index the data safely
        self.ptr = torch.zeros(1, dtype=torch.int64, device=trainer.device)  # next row, on the device
        self.size = self.used = 0  # rows drawn into the window, rows consumed (host-side count)
        self.snapshot: dict[str, list[torch.Tensor]] | None = None  # generator states at the window's start

    @staticmethod
    def bytes_per_seed_step(draws: Sequence[Draw]) -> int:
        return sum(math.prod(d.shape) * (8 if d.kind == "randint" else 4) for d in draws)

    def refill(self, w: int) -> None:
        t = self.t
        self.snapshot = {name: [g.get_state() for g in gens] for name, gens in t.generators.items()}
        for d in t.draws:
            for s, g in enumerate(t.generators[d.name]):
                x = d.sample(g, w) if self.batched[d.name] else torch.stack([d.sample(g) for _ in range(w)])
                self.dev[d.name][:w, s].copy_(x)
        self.ptr.zero_()
        self.size, self.used = w, 0

    def take(self) -> dict[str, torch.Tensor]:
        """This step's draws, [S, *shape] each; advances the device counter."""
        out = {name: buf.index_select(0, self.ptr)[0] for name, buf in self.dev.items()}
        self.ptr.add_(1)
        return out

    def resume_state(self) -> dict | None:
        """Where a resumed run must pick up inside this window: the generators' states at its
        start, its size and the rows consumed (None when it is used up)."""
        if self.used == self.size or self.snapshot is None:
            return None
        return {"snapshot": self.snapshot, "size": self.size, "used": self.used}

    def restore(self, state: dict) -> None:
        """Redraw the window described by `resume_state()` and skip its consumed rows."""
        for name, gens in self.t.generators.items():
            for g, g_state in zip(gens, state["snapshot"][name]):
                g.set_state(g_state)
        self.refill(state["size"])
        self.used = state["used"]
        self.ptr.fill_(self.used)

    def discard(self) -> None:
        """Forget the rows drawn ahead (the generators were set from outside)."""
        self.size = self.used = 0
        self.snapshot = None


# ------------------------------------------------------------------ rewards and sampling weights
REWARD_TRANSFORMS = {
    "none": lambda r: r,
    "x10": lambda r: r * 10.0,  # the SEEM authors' AntMaze setting (sparse 0/10)
    "minus1": lambda r: r - 1.0,  # IQL / CQL on AntMaze
    "diffql": lambda r: (r - 0.5) * 4.0,  # original Diffusion-QL on AntMaze
}


def transform_reward(reward: np.ndarray, name: str) -> np.ndarray:
    """One of REWARD_TRANSFORMS applied to the rewards (before training; terminals unchanged)."""
    if name not in REWARD_TRANSFORMS:
        raise ValueError(f"unknown reward transform {name!r}; choose from {sorted(REWARD_TRANSFORMS)}")
    return REWARD_TRANSFORMS[name](np.asarray(reward, np.float32)).astype(np.float32)


def episode_returns(reward: np.ndarray, episode_id: np.ndarray) -> np.ndarray:
    """Per transition, the summed reward of the rows of its episode present in the table (an X%
    subset holds part of each episode: its returns are those of the rows it kept)."""
    _, inverse = np.unique(np.asarray(episode_id), return_inverse=True)
    totals = np.bincount(inverse, weights=np.asarray(reward, np.float64))
    return totals[inverse]


def return_priorities(returns: np.ndarray) -> np.ndarray:
    """OPER-R sampling probabilities: proportional to min-max normalised episode return (base 0),
    uniform when every return is the same. Sums to 1."""
    r = np.asarray(returns, np.float64)
    span = r.max() - r.min()
    w = np.ones_like(r) if span <= 0 else (r - r.min()) / span
    return w / w.sum()


def sampling_cdf(probabilities: np.ndarray, device) -> torch.Tensor:
    """Cumulative probabilities (float64, last entry 1) for `weighted_indices`."""
    cdf = torch.as_tensor(np.cumsum(np.asarray(probabilities, np.float64)), device=device)
    return cdf / cdf[-1]


def weighted_indices(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Indices drawn with the probabilities behind `cdf` from uniform draws u in [0, 1) (e.g. a
    "uniform" `Draw`): inverse-CDF sampling on the device, so it runs inside a CUDA graph."""
    idx = torch.searchsorted(cdf, u.to(cdf.dtype), right=True)
    return idx.clamp_max(cdf.shape[0] - 1)


# ------------------------------------------------------------------ optimisers
def make_optimizer(kind: str, params, lr: float, device: torch.device, weight_decay: float = 0.0):
    """Adam or SGD; on CUDA Adam is the fused capturable kernel (graphed and eager runs then
    compute bitwise the same, measured on an H200) with its learning rate in a device tensor, so
    a schedule (`set_lr`) reaches a captured graph. Weight decay is the coupled L2 penalty."""
    opt = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[kind]
    if device.type == "cuda" and kind == "adam":
        return opt(params, lr=torch.tensor(float(lr), device=device), weight_decay=weight_decay,
                   capturable=True, fused=True)
    return opt(params, lr=lr, weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every group (in place for a tensor learning rate)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine decay from `base` at step 0 to 0 at `total` (PyTorch's CosineAnnealingLR, eta_min 0)."""
    return 0.5 * base * (1.0 + math.cos(math.pi * min(step, total) / total))


def clip_grad_norm_per_seed(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale each seed's gradients (stacked params [S, ...]) so their joint L2 norm is at most
    `max_norm`, seed by seed, on the device (no host sync). Returns the norms before clipping [S]."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads))
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.reshape(-1, *([1] * (g.dim() - 1))))
    return norms


# ------------------------------------------------------------------ the trainer
class StackedTrainer:
    """One update step for all seeds (`step()`); subclasses define the algorithm.

    A subclass sets, before calling `StackedTrainer.__init__`: nothing; after it, it builds its
    networks and optimisers and registers them with `self.networks`, `self.targets` (dicts of
    modules) and `self.optimizers` (dict). It implements
      draws            (property) the `Draw`s of one step
      step_kind(it)    the kind of step number it + 1 (e.g. with or without an actor update);
                       `step_kinds()` lists them all, for capture
      _update(draws, kind, grad_norm, set_to_none) -> dict of per-seed tensors [S]
    and may override `graphable` (False when the step draws random numbers itself) and
    `extra_state` / `load_extra_state`.
    """

    WINDOW_BYTES_PER_SEED = 4 * 2**20  # memory per seed for pre-drawn inputs (at most 1000 steps)
    matmul_precision = "ieee"  # subclasses take theirs from the config

    def __init__(self, seeds: Sequence[int], data: OfflineData, device, *, steps: int,
                 checkpoint_every: int, cuda_graph: bool):
        self.seeds, self.data = list(seeds), data
        self.device = torch.device(device)
        self.S = len(self.seeds)
        self.steps, self.checkpoint_every, self.cuda_graph = steps, checkpoint_every, cuda_graph
        self.networks: dict[str, nn.Module] = {}
        self.targets: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        # on the training device: a GPU draws each seed's numbers itself (see `Window`)
        self.generators = {d.name: seed_generators(self.seeds, d.stream, self.device) for d in self.draws}
        self.it = 0
        # Divergence is detected on the device at every step (a few tiny kernels, no host sync):
        # the first step whose recorded loss is not finite, per seed (-1 = none yet).
        self.nonfinite_step = torch.full((self.S,), -1, dtype=torch.int64, device=self.device)
        self._step_count = torch.zeros((), dtype=torch.int64, device=self.device)  # = it, on the device
        self.window: Window | None = None
        self._pending_window: dict | None = None  # a window to re-enter (load_state_dict)
        self._graphs: dict | None = None
        self._opt_flags: dict[str, dict] = {}

    # -------------------------------------------------------------- to be defined by the algorithm
    @property
    def draws(self) -> list[Draw]:
        raise NotImplementedError

    def step_kinds(self) -> list[Hashable]:
        return [None]

    def step_kind(self, it: int) -> Hashable:
        return None

    def _update(self, draws: dict[str, torch.Tensor], kind: Hashable, grad_norm: bool,
                set_to_none: bool) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def graphable(self) -> bool:
        return True

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # -------------------------------------------------------------- set-up helpers
    def finish_setup(self) -> None:
        """Call at the end of the subclass constructor, once networks and optimisers exist."""
        fused = enable_fused_pointwise([*self.networks.values(), *self.targets.values()], self.device)
        self.graphed = self.cuda_graph and self.device.type == "cuda" and self.graphable
        # on a GPU every step reads windows, graphed or not, so both compute the same; on the CPU
        # windows are optional (tests: the window draws what stepping draws)
        self.use_window = self.device.type == "cuda"
        self._opt_flags = {name: {k: o.param_groups[0][k] for k in ("capturable", "fused", "foreach")
                                  if k in o.param_groups[0]} for name, o in self.optimizers.items()}
        self.fused_pointwise = fused
        if self.device.type != "cuda":
            self.mode = "eager (CPU)"
        elif self.graphed:
            self.mode = "CUDA graph"
        elif not self.cuda_graph:
            self.mode = "eager (cuda_graph=False)"
        else:
            self.mode = f"eager ({self.not_graphable_reason()})"
        if fused and any(getattr(m, "fused_pointwise", False) for n in self.networks.values() for m in n.modules()):
            self.mode += ", LayerNorm + activation compiled into one kernel"

    def not_graphable_reason(self) -> str:
        return "this configuration draws random numbers inside the step"

    def record_nonfinite(self, loss: torch.Tensor) -> None:
        """Count a step and keep, per seed, the first step at which `loss` [S] was not finite."""
        with torch.no_grad():
            self._step_count.add_(1)
            newly = ~torch.isfinite(loss.detach()) & (self.nonfinite_step < 0)
            self.nonfinite_step.copy_(torch.where(newly, self._step_count, self.nonfinite_step))

    def first_nonfinite_steps(self) -> list[int | None]:
        """Per seed, the first step whose recorded loss was NaN or inf (None if none yet)."""
        return [None if v < 0 else int(v) for v in self.nonfinite_step.tolist()]

    def update_targets(self, tau: float) -> None:
        """Targets (parameters and buffers) move towards the online networks of the same name."""
        with torch.no_grad():
            src = [t for name in self.targets for t in (*self.networks[name].parameters(), *self.networks[name].buffers())]
            tgt = [t for m in self.targets.values() for t in (*m.parameters(), *m.buffers())]
            torch._foreach_lerp_(tgt, src, tau)

    # -------------------------------------------------------------- the step
    def step(self, grad_norm: bool = False) -> dict[str, torch.Tensor]:
        """One update of every seed; per-seed metrics. `grad_norm` asks for gradient norms too
        (only on logged steps: they are a dozen more kernels in a launch-bound step)."""
        with matmul_precision(self.matmul_precision):
            return self._step(grad_norm)

    def _step(self, grad_norm: bool) -> dict[str, torch.Tensor]:
        kind = self.step_kind(self.it)
        if self.graphed:
            self._ensure_window()
            if self._graphs is None:
                self._capture()
            graph, keys, out = self._graphs[kind, grad_norm]
            graph.replay()
            values = out.clone()  # the static output is overwritten by the next replay
        elif self.use_window:
            self._ensure_window()
            out = self._update(self.window.take(), kind, grad_norm, set_to_none=True)
        else:
            out = self._update(self.sample_draws(), kind, grad_norm, set_to_none=True)
        if self.use_window:
            self.window.used += 1
        self.it += 1
        if self.graphed:
            return dict(zip(keys, values.unbind(0)))
        return out

    def sample_draws(self) -> dict[str, torch.Tensor]:
        """One step's draws, step by step from the per-seed generators, [S, *shape] on the device."""
        return {d.name: torch.stack([d.sample(g) for g in self.generators[d.name]]).to(self.device)
                for d in self.draws}

    def _window_rows(self) -> int:
        # per seed, not per run: a seed's windows (and so its draws on a GPU) are the same alone
        # or among other seeds
        return int(max(1, min(1000, self.WINDOW_BYTES_PER_SEED // max(1, Window.bytes_per_seed_step(self.draws)))))

    def _next_window_size(self) -> int:
        # windows end at checkpoint steps (and the last step), so the generator states saved with
        # a checkpoint are those of the steps taken, without redrawing
        ce, done = self.checkpoint_every, self.it
        w = min(self.window.rows, ce - done % ce)
        if done < self.steps:
            w = min(w, self.steps - done)
        return w

    def _ensure_window(self) -> None:
        if self.window is None:
            self.window = Window(self, self._window_rows())
        if self._pending_window is not None:  # a resumed run re-enters its window mid-way
            self.window.restore(self._pending_window)
            self._pending_window = None
        if self.window.used == self.window.size:
            self.window.refill(self._next_window_size())

    # -------------------------------------------------------------- CUDA graphs
    def _state_tensors(self) -> list[torch.Tensor]:
        mods = [*self.networks.values(), *self.targets.values()]
        return [t for m in mods for t in (*m.parameters(), *m.buffers())]

    def _opt_state_tensors(self) -> list[torch.Tensor]:
        return [v for o in self.optimizers.values() for st in o.state.values()
                for v in st.values() if isinstance(v, torch.Tensor)]

    def _capture(self) -> None:
        """Capture one graph per (kind of step, gradient norm or not); the warm-up before it
        changes nothing."""
        w = self.window
        kinds = [(kind, gn) for kind in self.step_kinds() for gn in (False, True)]
        counters = (w.ptr, self.nonfinite_step, self._step_count)
        saved = [t.detach().clone() for t in (*self._state_tensors(), *counters)]
        opt_before = {id(t): t.detach().clone() for t in self._opt_state_tensors()}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up: allocates gradients and optimiser states
            for kind in kinds:
                for _ in range(3):
                    w.ptr.zero_()
                    self._update(w.take(), *kind, set_to_none=False)
        torch.cuda.current_stream(self.device).wait_stream(side)

        def restore():
            with torch.no_grad():
                for t, v in zip((*self._state_tensors(), *counters), saved):
                    t.copy_(v)
                for t in self._opt_state_tensors():  # states created by the warm-up start fresh
                    t.copy_(opt_before[id(t)]) if id(t) in opt_before else t.zero_()

        restore()
        graphs = {}
        for kind in kinds:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._update(w.take(), *kind, set_to_none=False)
                keys = list(out)
                static = torch.stack([out[k] for k in keys])
            graphs[kind] = (graph, keys, static)
        restore()  # capturing runs nothing; the counters alone are put back to be sure
        torch.cuda.synchronize(self.device)
        self._graphs = graphs

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything `step()` depends on: with it a run continues exactly where it stopped."""
        gen_states = {name: [g.get_state() for g in gens] for name, gens in self.generators.items()}
        window = self._pending_window
        if window is None and self.use_window and self.window is not None:
            window = self.window.resume_state()
        return {
            "networks": {name: m.state_dict() for name, m in self.networks.items()},
            "targets": {name: m.state_dict() for name, m in self.targets.items()},
            "optimizers": {name: o.state_dict() for name, o in self.optimizers.items()},
            "generators": gen_states,
            "window": window,  # None, or the window the generators' states are in the middle of
            "extra": self.extra_state(),
            "it": self.it,
            "nonfinite_step": self.nonfinite_step.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        for kind in ("networks", "targets"):
            for name, module in getattr(self, kind).items():
                module.load_state_dict(state[kind][name])
        for name, o in self.optimizers.items():
            flags = self._opt_flags[name]
            lr_tensors = [grp["lr"] for grp in o.param_groups]
            o.load_state_dict(state["optimizers"][name])
            for grp, lr in zip(o.param_groups, lr_tensors):
                grp.update(flags)  # a state saved by an eager (or graphed) run keeps this run's kind
                if isinstance(lr, torch.Tensor):  # the device tensor stays, with the saved value
                    lr.fill_(float(grp["lr"]))
                    grp["lr"] = lr
            on_device = flags.get("capturable", False) or flags.get("fused", False)
            for p, st in o.state.items():
                if isinstance(st.get("step"), torch.Tensor):
                    st["step"] = st["step"].to(p.device if on_device else "cpu", torch.float32)
        for name, gens in self.generators.items():
            for g, g_state in zip(gens, state["generators"][name]):
                g.set_state(g_state)
        if state.get("window") is not None and not self.use_window:
            raise ValueError("this state was saved in the middle of a window of pre-drawn inputs; "
                             "continue it with windows (use_window=True)")
        self.load_extra_state(state["extra"])
        self.it = state["it"]
        with torch.no_grad():
            self._step_count.fill_(self.it)
            self.nonfinite_step.copy_(state["nonfinite_step"])
        if self.window is not None:
            self.window.discard()
        self._pending_window = state.get("window")
        self._graphs = None  # the optimisers' states are new tensors: capture again


# ------------------------------------------------------------------ checkpoints
@dataclass
class Checkpoint:
    """A loaded checkpoint. `nets` has at least `q1` (a StackedMLP over [state, action]),
    `normalize(obs)` and `policy(obs_normalised) -> actions in [-1, 1]`: what the SEEM analysis
    and the evaluation use, whatever the algorithm."""

    step: int
    seeds: list[int]
    config: Any
    nets: Any
    diverged_step: list[int | None]


def write_checkpoint(path: Path, fmt: str, *, step: int, seeds: Sequence[int], config,
                     diverged_step: Sequence[int | None], modules: dict[str, nn.Module], **extra) -> None:
    """Atomically write a checkpoint: format tag, step, seeds, config (a dataclass), divergence
    record, the state dicts of `modules` under their names, and `extra` values (tensors on CPU)."""
    payload = {"format": fmt, "step": step, "seeds": list(seeds), "config": dataclasses.asdict(config),
               "diverged_step": list(diverged_step),
               **{name: {k: v.cpu() for k, v in m.state_dict().items()} for name, m in modules.items()},
               **{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in extra.items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | Path, fmt: str | None = None) -> dict:
    """The payload of a checkpoint, checked to carry format `fmt` (any seemrl format if None);
    an unreadable, truncated or foreign file raises ValueError naming it."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: say which one
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    found = payload.get("format") if isinstance(payload, dict) else None
    if fmt is None and not (isinstance(found, str) and found.startswith("seemrl.")) or fmt is not None and found != fmt:
        raise ValueError(f"{path} is not a {fmt or 'seemrl'} checkpoint (format {found!r})")
    return payload


# ------------------------------------------------------------------ results
# Rows of the evaluations table: one per (evaluation step, seed).
EVALUATION_COLUMNS = {"step": "int64", "seed": "int64", "return_mean": "float64", "return_std": "float64",
                      "normalized_score": "float64", "nonfinite_actions": "bool"}


def evaluations_frame(rows: list[dict]) -> pd.DataFrame:
    """The evaluation rows as a table with fixed dtypes (a score of None becomes NaN)."""
    return pd.DataFrame(rows, columns=list(EVALUATION_COLUMNS)).astype(EVALUATION_COLUMNS)


@dataclass
class TrainResult:
    metrics: pd.DataFrame
    diverged_step: list[int | None]
    steps_per_second: float | None  # over the steps this process ran; None if it ran none
    wall_seconds: float
    evaluations: pd.DataFrame = field(default_factory=lambda: evaluations_frame([]))
    resumed_from_step: int | None = None
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------ the training loop
@dataclass
class LoopSettings:
    steps: int
    log_every: int
    checkpoint_every: int
    eval_every: int = 0


def train_loop(trainer: StackedTrainer, loop: LoopSettings, checkpoint_dir: Path,
               save_checkpoint: Callable[[Path, int, list], None],
               metric_keys: Sequence[str], param_norms: Callable[[], dict[str, torch.Tensor]],
               log: Callable[[str], None] = print, evaluate: Callable | None = None,
               resume: ResumeDir | None = None, monitor: Monitor | None = None) -> TrainResult:
    """Train all seeds for `loop.steps` steps; the checkpoints end up in `checkpoint_dir`.

    Logged steps add one row per seed with `metric_keys` from the step's output (a key a step
    does not return, e.g. the actor loss between delayed actor updates, keeps its latest value)
    and `param_norms()`. save_checkpoint(path, step, diverged_step) writes one checkpoint.
    evaluate(trainer) -> one result per seed is called every `loop.eval_every` steps and after the
    last step. Without `resume`, checkpoints are written straight into `checkpoint_dir` (the
    caller makes that atomic). With it, they go to the resume directory, each followed by a
    resume state; training continues from a matching state found there; and at the end
    `checkpoint_dir` is replaced, atomically, by a directory of every checkpoint. A `monitor`
    (`seemrl.tracking.Monitor`) gets every logged row, evaluation and progress report.
    """
    if loop.eval_every and evaluate is None:
        raise ValueError("eval_every > 0 needs an evaluate function")
    seeds = trainer.seeds
    log(f"update step: {trainer.mode}")
    work_dir = checkpoint_dir if resume is None else resume.checkpoint_dir
    state = resume.load(log) if resume is not None else None
    if state is None:
        start_step = 0
        diverged: list[int | None] = [None] * len(seeds)
        rows: list[dict] = []
        eval_rows: list[dict] = []
        last = {k: torch.full((len(seeds),), math.nan) for k in metric_keys}  # latest value per key
        save_checkpoint(work_dir / checkpoint_name(0), 0, diverged)
    else:
        trainer.load_state_dict(state["trainer"])
        start_step, diverged = state["step"], state["diverged_step"]
        rows, eval_rows, last = state["metrics"], state["evaluations"], state["last_metrics"]
        resume.drop_checkpoints_after(start_step)
        log(f"resuming from step {start_step} ({resume.state_path})")

    start = last_report = time.perf_counter()
    for step in range(start_step + 1, loop.steps + 1):
        logged = step % loop.log_every == 0 or step == loop.steps
        out = trainer.step(grad_norm=logged)
        for k in metric_keys:
            if k in out:
                last[k] = out[k]
        if logged:
            values = {k: v.detach().cpu() for k, v in {**last, **param_norms()}.items()}
            _record_divergence(trainer, diverged, log)
            for i, seed in enumerate(seeds):
                rows.append({"step": step, "seed": seed, **{k: float(v[i]) for k, v in values.items()}})
            if monitor is not None:
                monitor.metrics(step, rows[-len(seeds):])
            now = time.perf_counter()
            if now - last_report > 10 or step == loop.steps:
                rate = (step - start_step) / (now - start)
                q = f"  Q mean per seed {[round(float(v), 2) for v in values['q_mean']]}" if "q_mean" in values else ""
                log(f"step {step}/{loop.steps}  {rate:.0f} steps/s ({rate * len(seeds):.0f} seed-steps/s)"
                    f"  ETA {(loop.steps - step) / rate:.0f}s{q}")
                if monitor is not None:
                    monitor.progress(step, rate)
                last_report = now
        if loop.eval_every and (step % loop.eval_every == 0 or step == loop.steps):
            new_rows = _evaluation_rows(step, evaluate(trainer), log)
            eval_rows += new_rows
            if monitor is not None:
                monitor.evaluations(step, new_rows)
        if step % loop.checkpoint_every == 0 or step == loop.steps:
            _record_divergence(trainer, diverged, log)
            save_checkpoint(work_dir / checkpoint_name(step), step, diverged)
            if resume is not None:  # after the checkpoint: a state never refers to a missing one
                resume.save({"step": step, "trainer": trainer.state_dict(), "diverged_step": diverged,
                             "metrics": rows, "evaluations": eval_rows,
                             "last_metrics": {k: v.detach().cpu() for k, v in last.items()}})
    wall = time.perf_counter() - start
    if resume is not None:
        with atomic_path(checkpoint_dir, is_dir=True) as tmp:
            for path in checkpoint_paths(resume.checkpoint_dir):
                shutil.copyfile(path, tmp / path.name)
    ran = loop.steps - start_step
    return TrainResult(pd.DataFrame(rows), diverged, ran / wall if ran else None, wall,
                       evaluations=evaluations_frame(eval_rows),
                       resumed_from_step=None if state is None else start_step)


def _record_divergence(trainer: StackedTrainer, diverged: list[int | None], log: Callable[[str], None]) -> None:
    """Copy the trainer's per-step divergence record into `diverged` (in place), logging news."""
    for i, (seed, first) in enumerate(zip(trainer.seeds, trainer.first_nonfinite_steps())):
        if first is not None and diverged[i] is None:
            diverged[i] = first
            log(f"seed {seed}: non-finite loss at step {first}; recorded, training goes on")


def _evaluation_rows(step: int, results: list, log: Callable[[str], None]) -> list[dict]:
    rows = [{"step": step, "seed": r.seed, "return_mean": r.return_mean, "return_std": r.return_std,
             "normalized_score": r.normalized_score, "nonfinite_actions": r.nonfinite_actions}
            for r in results]
    flagged = [r.seed for r in results if r.nonfinite_actions]
    log(f"evaluation at step {step}: mean return per seed {[round(r.return_mean, 1) for r in results]}"
        + (f"; non-finite actions (replaced by 0) from seeds {flagged}" if flagged else ""))
    return rows
