"""What an update step reads: the training data on the device and its random inputs.

Every random number a step uses (minibatch indices, noise, diffusion times, ...) is declared as a
`Draw` and drawn from per-seed CPU generators, one per seed and purpose, so seed s draws the same
numbers whether it trains alone or among other seeds. On a GPU the draws of up to 1000 steps are
made ahead (`Window`) and copied to the device once, so a captured CUDA graph can read its row.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from seemrl.training.trainer import StackedTrainer

DRAW_KINDS = ("randint", "normal", "uniform")

@dataclass
class OfflineData:
    """Training transitions as tensors on the training device; states normalised."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    not_done: torch.Tensor  # 0 at true terminals: no bootstrap there; timeouts do bootstrap
    policy_cdf: torch.Tensor | None = None  # OPER-R: cumulative sampling probabilities of the actor batch
    # several tables stacked (`stack`): per member of the trainer's stack, (first row, rows) of its table
    members: tuple[tuple[int, int], ...] | None = None
    # ... and, with OPER-R, per table: (its policy_cdf or None, its first member, the member after its last,
    # its first row)
    policy_parts: tuple[tuple[torch.Tensor | None, int, int, int], ...] | None = None

    @property
    def has_policy_probabilities(self) -> bool:
        """Whether the table (every stacked table) carries OPER-R's sampling probabilities."""
        return self.policy_cdf is not None or self.policy_parts is not None

    def policy_rows(self, u: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
        """OPER-R's actor batch [S, B]: rows drawn with the sampling probabilities from uniforms u
        [S, B] (`weighted_indices`); stacked tables: each member from its own table's probabilities,
        as if it trained on that table alone, and the members of a table without any (a cell
        without OPER-R) take their rows of `uniform`, e.g. the critic's batch."""
        if self.policy_parts is None:
            return weighted_indices(self.policy_cdf, u)
        return torch.cat([uniform[lo:hi] if cdf is None else weighted_indices(cdf, u[lo:hi]) + first
                          for cdf, lo, hi, first in self.policy_parts])

    @classmethod
    def from_prepared(cls, p, device) -> "OfflineData":
        """The tensors of a `seemrl.data.preparation.Prepared` table on `device`."""
        data = cls.from_arrays(p.obs, p.action, p.reward, p.next_obs, p.terminal, p.obs_mean, p.obs_std, device)
        if p.policy_probabilities is not None:
            data.policy_cdf = sampling_cdf(p.policy_probabilities, device)
        return data

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

    @classmethod
    def stack(cls, tables: Sequence[OfflineData], members: Sequence[int]) -> OfflineData:
        """Several tables in one, for cells trained together: table k's rows follow table k-1's
        and serve the next members[k] members of the trainer's stack (`index_draw`)."""
        if len(tables) != len(members) or not tables:
            raise ValueError(f"need one member count per table: {len(tables)} tables, {len(members)} counts")
        if any(t.members is not None for t in tables):
            raise ValueError("stacked tables do not stack again")
        weighted = {t.policy_cdf is not None for t in tables}
        rows, parts, first = [], [], 0
        for t, m in zip(tables, members):
            parts.append((t.policy_cdf, len(rows), len(rows) + m, first))
            rows += [(first, len(t))] * m
            first += len(t)
        cat = lambda name: torch.cat([getattr(t, name) for t in tables])
        return cls(obs=cat("obs"), action=cat("action"), reward=cat("reward"), next_obs=cat("next_obs"),
                   not_done=cat("not_done"), members=tuple(rows), policy_parts=tuple(parts) if True in weighted else None)

    def index_draw(self, name: str, batch: int, stream: int) -> Draw:
        """The draw of `batch` row indices per member: uniform over the whole table, or over the
        member's own table when tables are stacked (as if it trained on that table alone)."""
        if self.members is None:
            return Draw(name, "randint", (batch,), stream, high=len(self))
        return Draw(name, "randint", (batch,), stream, high=tuple(n for _, n in self.members),
                    offset=tuple(first for first, _ in self.members))



# ------------------------------------------------------------------ random draws
@dataclass(frozen=True)
class Draw:
    """One random input of the update step, drawn per seed and step from its own generators.

    kind "randint" draws integers in [0, high) (int64), "normal" standard normals, "uniform"
    U[0, 1) floats; `shape` is one seed's draw for one step; `stream` names the purpose (see
    `seemrl.training.nets.seed_generators`) and must differ between draws of one algorithm.
    A randint draw may have one `high` per member of the stack, and an `offset` per member added
    to its numbers (rows of stacked tables: `OfflineData.index_draw`).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    stream: int
    high: int | tuple[int, ...] | None = None
    offset: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.kind not in DRAW_KINDS:
            raise ValueError(f"draw {self.name!r}: kind must be one of {DRAW_KINDS}, got {self.kind!r}")
        if (self.kind == "randint") != (self.high is not None):
            raise ValueError(f"draw {self.name!r}: 'high' is given with kind 'randint' and only then")
        if self.offset is not None and not (isinstance(self.high, tuple) and len(self.offset) == len(self.high)):
            raise ValueError(f"draw {self.name!r}: 'offset' needs one 'high' per member, as many as offsets")

    @property
    def dtype(self) -> torch.dtype:
        return torch.int64 if self.kind == "randint" else torch.float32

    def sample(self, g: torch.Generator, steps: int | None = None, member: int = 0) -> torch.Tensor:
        """One step's draw, or `steps` consecutive steps' draws stacked, from generator g (that
        of the stack's member `member`)."""
        shape = self.shape if steps is None else (steps, *self.shape)
        if self.kind == "randint":
            high = self.high[member] if isinstance(self.high, tuple) else self.high
            x = torch.randint(high, shape, generator=g, device=g.device)
            return x if self.offset is None else x + self.offset[member]
        if self.kind == "normal":
            return torch.randn(shape, generator=g, device=g.device)
        return torch.rand(shape, generator=g, device=g.device)

    def batches_exactly(self) -> bool:
        """Whether one draw of W steps equals W successive draws. PyTorch's CPU normal sampler
        fills blocks of 16 once a draw has 16 or more numbers, so normals batch exactly only when
        one step's draw is a multiple of 16; every kind is also checked on scratch generators."""
        if self.kind == "normal" and math.prod(self.shape) % 16:
            return False
        members = range(len(self.high)) if isinstance(self.high, tuple) else (0,)
        for steps, member in itertools.product((2, 17, 64), members):
            g, h = torch.Generator().manual_seed(12345), torch.Generator().manual_seed(12345)
            together = self.sample(g, steps, member)
            apart = torch.stack([self.sample(h, member=member) for _ in range(steps)])
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
                x = d.sample(g, w, s) if self.batched[d.name] else torch.stack([d.sample(g, member=s) for _ in range(w)])
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



def sampling_cdf(probabilities: np.ndarray, device) -> torch.Tensor:
    """Cumulative probabilities (float64, last entry 1) for `weighted_indices`."""
    cdf = torch.as_tensor(np.cumsum(np.asarray(probabilities, np.float64)), device=device)
    return cdf / cdf[-1]


def weighted_indices(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Indices drawn with the probabilities behind `cdf` from uniform draws u in [0, 1) (e.g. a
    "uniform" `Draw`): inverse-CDF sampling on the device, so it runs inside a CUDA graph."""
    idx = torch.searchsorted(cdf, u.to(cdf.dtype), right=True)
    return idx.clamp_max(cdf.shape[0] - 1)


