"""The stacked trainer every algorithm's update step runs on, and its optimisers.

An algorithm subclasses `StackedTrainer` and writes its update step once, as plain PyTorch on
stacked networks ([S, B, ...]). The trainer draws the step's random inputs (`draws`), runs the
step eagerly or as a captured CUDA graph per kind of step, records the first non-finite loss of
each seed without a host sync, and holds everything a resumed run needs (`state_dict`).
`docs/engine.md` explains the design.
"""
from __future__ import annotations

import math
import threading
from typing import Callable, Hashable, Sequence

import torch
import torch.nn as nn

from seemrl.training.devices import matmul_precision
from seemrl.training.draws import Draw, OfflineData, Window
from seemrl.training.nets import Compiled, enable_fused_pointwise, seed_generators


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


def clip_grad_norm_per_seed(params: Sequence[torch.Tensor], max_norm: float | torch.Tensor) -> torch.Tensor:
    """Scale each seed's gradients (stacked params [S, ...]) so their joint L2 norm is at most
    `max_norm` (one, or one per seed [S]), seed by seed, on the device (no host sync). Returns the
    norms before clipping [S]."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads))
    # max_norm / norm as Python computes a float over a tensor (reciprocal, then the product), so
    # that a per-seed max_norm computes it alike
    scale = ((norms + 1e-6).reciprocal() * max_norm).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.reshape(-1, *([1] * (g.dim() - 1))))
    return norms



# ------------------------------------------------------------------ CUDA graphs
# One capture at a time in a process: runs trained in threads of one process share a GPU
# (and torch.compile, which may run during a warm-up, is not thread-safe).
CAPTURE_LOCK = threading.RLock()


def warm_up(fn: Callable[[], object], device: torch.device, times: int = 2) -> None:
    """Run `fn` on a side stream before capturing it (allocations, lazy initialisation)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with CAPTURE_LOCK, torch.cuda.stream(side):
        for _ in range(times):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)


def capture_graph(fn: Callable[[], object]) -> torch.cuda.CUDAGraph:
    """A CUDA graph of `fn` (captured, not run). Other threads may use the GPU meanwhile."""
    graph = torch.cuda.CUDAGraph()
    with CAPTURE_LOCK, torch.cuda.graph(graph, capture_error_mode="thread_local"):
        fn()
    return graph


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
                 checkpoint_every: int, cuda_graph: bool, compile_update: bool = False):
        self.seeds, self.data = list(seeds), data
        self.device = torch.device(device)
        self.S = len(self.seeds)
        if getattr(data, "members", None) is not None and len(data.members) != self.S:
            raise ValueError(f"the data's stacked tables serve {len(data.members)} members, the trainer has {self.S} seeds")
        self.steps, self.checkpoint_every, self.cuda_graph = steps, checkpoint_every, cuda_graph
        self.compile_update = compile_update
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
        if self.compile_update:
            if self.device.type != "cuda":
                self._tensor_learning_rates()
            # the whole step through torch.compile (graph breaks at backward() and zero_grad()):
            # its pointwise work fused into few kernels, then captured like the eager step; the
            # warm-up before capture compiles every kind of step. Equal to eager to rounding only.
            self._update = Compiled(self._update, "the update step", on_fallback=self.compile_fallback())
            self.mode += ", update compiled"

    def _tensor_learning_rates(self) -> None:
        """Learning rates held in float64 CPU tensors: torch.compile bakes a Python-number rate
        into the compiled optimiser step, so a schedule (`set_lr`) would recompile it at every
        step (and fall back to the plain step after 64). Eager Adam and SGD read such a tensor
        as the same number, bit for bit
        (`tests/test_iql.py::test_tensor_learning_rates_step_bitwise_as_numbers`)."""
        for o in self.optimizers.values():
            for group in o.param_groups:
                if not isinstance(group["lr"], torch.Tensor):
                    group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float64)

    def compile_fallback(self) -> Callable[[], None] | None:
        """What puts the state back if the compiled step fails part-way (`Compiled`'s on_fallback)."""
        return None

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
        return {d.name: torch.stack([d.sample(g, member=s) for s, g in enumerate(self.generators[d.name])]).to(self.device)
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
        with CAPTURE_LOCK:
            self._capture_locked()

    def _capture_locked(self) -> None:
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
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
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


