"""Networks whose parameters are stacked over independent seeds.

A `StackedMLP` holds S independent MLPs: layer k has weight [S, in, out] and bias [S, 1, out],
and maps inputs [S, B, in] to [S, B, out] with batched matmuls. Nothing is shared across the
seed dimension (LayerNorm normalises each sample's features, with per-seed affine parameters),
so the S networks train exactly as S separate runs would, at the cost of one.

Each seed's parameters are initialised from that seed's own generator, with PyTorch's default
`nn.Linear` scheme (uniform +-1/sqrt(fan_in)), so seed s initialises identically whether it is
trained alone or among others.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"relu": F.relu, "mish": F.mish, "tanh": torch.tanh}


class StackedMLP(nn.Module):
    """S independent MLPs; `layer_norm` lists the hidden layers (0-based) that get LayerNorm.

    LayerNorm sits between the linear layer and the activation, as in the SEEM paper (App. E).
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        layer_norm: Sequence[int] = (),
        ln_affine: bool = True,
        activation: str = "relu",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        bad = [i for i in layer_norm if not 0 <= i < len(hidden)]
        if bad:
            raise ValueError(f"layer_norm indices {bad} outside the {len(hidden)} hidden layers")
        self.n_seeds = len(generators)
        self.dims = [in_dim, *hidden, out_dim]
        self.layer_norm = tuple(sorted(set(layer_norm)))
        self.ln_affine = ln_affine
        self.activation = activation
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(self.dims[:-1], self.dims[1:]):
            bound = 1.0 / math.sqrt(d_in)
            w = torch.stack([_uniform((d_out, d_in), bound, g).T for g in generators])
            b = torch.stack([_uniform((1, d_out), bound, g) for g in generators])
            self.weights.append(nn.Parameter(w.contiguous()))
            self.biases.append(nn.Parameter(b))
        self.ln_weights = nn.ParameterDict()
        self.ln_biases = nn.ParameterDict()
        if ln_affine:
            for i in self.layer_norm:
                self.ln_weights[str(i)] = nn.Parameter(torch.ones(self.n_seeds, 1, hidden[i]))
                self.ln_biases[str(i)] = nn.Parameter(torch.zeros(self.n_seeds, 1, hidden[i]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = ACTIVATIONS[self.activation]
        n = len(self.weights)
        for k in range(n):
            x = torch.baddbmm(self.biases[k], x, self.weights[k])
            if k < n - 1:
                if k in self.layer_norm:
                    x = F.layer_norm(x, x.shape[-1:], eps=1e-5)
                    if self.ln_affine:
                        x = x * self.ln_weights[str(k)] + self.ln_biases[str(k)]
                x = act(x)
        return x


def _uniform(shape: tuple[int, ...], bound: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g).mul_(2 * bound).sub_(bound)


def seed_slice(params: dict[str, torch.Tensor], seed_index: int) -> dict[str, torch.Tensor]:
    """Parameters of one seed, keeping a seed dimension of 1 (for `functional_call`)."""
    return {k: v[seed_index : seed_index + 1] for k, v in params.items()}


def seed_generators(seeds: Sequence[int], stream: int) -> list[torch.Generator]:
    """One CPU generator per seed for a named purpose (`stream`), independent across purposes."""
    return [torch.Generator().manual_seed(int(s) * 1_000_003 + stream) for s in seeds]


def per_seed_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm over all entries of stacked tensors [S, ...], one value per seed."""
    return torch.sqrt(sum(t.detach().flatten(1).pow(2).sum(1) for t in tensors))
