"""Networks whose parameters are stacked over independent seeds.

A `StackedMLP` holds S independent MLPs (weights [S, in, out], inputs [S, B, in]); nothing is
shared across seeds (norm statistics, affine parameters and dropout masks are per seed), so the
S networks train as S separate runs would. The critic normalisations of the paper's
comparisons (LayerNorm on chosen layers, with or without affine, BatchNorm, dropout,
WeightNorm, OFN) are built from one spec (`critic_from_config`). `docs/engine.md` and
`docs/seed_independence.md` say how exactly a seed among others is the seed alone.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import math
import numbers
import os
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from seemrl.training.devices import INDUCTOR_MAX_AUTOTUNE_ENV

ACTIVATIONS = {"relu": F.relu, "mish": F.mish, "tanh": torch.tanh}
NORMS = ("none", "layernorm", "batchnorm")
NORM_EPS = 1e-5  # LayerNorm and BatchNorm eps, as nn.LayerNorm / nn.BatchNorm1d
BN_MOMENTUM = 0.1  # running = (1 - momentum) * running + momentum * batch, as nn.BatchNorm1d
OFN_EPS = 1e-6  # OFN divides by max(||x||, OFN_EPS)


_PLAIN_AFFINE = contextvars.ContextVar("seemrl_plain_affine", default=False)


@contextlib.contextmanager
def plain_affine():
    """Inside, `stacked_affine` is the plain fused product `baddbmm(b, x, W)` on every device: for
    code that analyses one seed and needs a weight's use in the form z = x W (the SEEM analysis'
    structured NTK); agreement across stacks is a training concern. Also a decorator."""
    token = _PLAIN_AFFINE.set(True)
    try:
        yield
    finally:
        _PLAIN_AFFINE.reset(token)


def stacked_affine(bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """bias + x @ weight over stacked seeds ([S, 1, out] + [S, B, in] @ [S, in, out]), with each
    seed's rows bit for bit the same whether the stack holds it alone or among others.

    On the CPU a stack of one seed runs as a plain matrix product and a stack of several as a
    batched one; the two round differently when the output is 1 wide (a matrix-vector product)
    or, with the bias fused, when the input is. Those products get a zero second column, or the
    bias added apart. On CUDA the fused product runs as it is (`docs/seed_independence.md`)."""
    if x.is_cuda or _PLAIN_AFFINE.get():
        return torch.baddbmm(bias, x, weight)
    if weight.shape[-1] == 1:
        return torch.baddbmm(bias, x, F.pad(weight, (0, 1)))[..., :1]
    if weight.shape[-2] == 1:
        return torch.bmm(x, weight) + bias
    return torch.baddbmm(bias, x, weight)


class StackedMLP(nn.Module):
    """S independent MLPs: Linear -> [norm] -> activation -> [dropout] per hidden layer, then
    [OFN] -> Linear (optionally weight-normalised) for the output.

    Arguments:
        generators: one generator per seed, for the linear layers' initial weights.
        hidden: widths of the hidden layers (indexed 0, 1, ... below).
        norm_affine: learnable per-seed affine (weight 1, bias 0 at init) after the norm.
        norm: "none", "layernorm" or "batchnorm", placed between the linear layer and the
            activation (paper App. E).
        norm_layers: hidden layers that get `norm`; None = all hidden layers.
        dropout: probability p in [0, 1) of zeroing a hidden activation (after the activation,
            survivors scaled by 1 / (1 - p)), on every hidden layer, in train mode only.
        dropout_generators: one generator per seed for the dropout masks, so that seed s draws
            the same masks whether it runs alone or among others. Each forward in train mode
            draws, per seed, `torch.rand((B, sum(hidden)), generator=g, device=g.device)`, keeps
            the units with u >= p, and splits the columns over the hidden layers in order. The
            cost is S small RNG calls per forward plus, when the generators live on another
            device than the input (e.g. CPU generators, GPU net), one copy of a bool mask
            [S, B, sum(hidden)] to the input's device. None = one draw from the global RNG:
            faster, but seed s's masks then depend on the other seeds (not batch-invariant).
            Checkpoint them with `dropout_rng_states` / `set_dropout_rng_states`; they are not
            in the state_dict. `copy.deepcopy` copies them, so a deep-copied target network
            replays the online network's mask sequence from the point of the copy.
        weight_norm_output: the output layer uses w = g * v / ||v|| (norm over the input dim,
            per seed and output unit); v is stored in `weights[-1]`, g in `wn_gain` [S, 1, out],
            initialised to ||v|| so the initial function is unchanged.
        ofn: Output Feature Normalisation: the penultimate features (after the last hidden
            layer's activation and dropout) are divided by max(||x||, OFN_EPS) over the feature
            dimension before the output layer.

    Train / eval contract: `forward` follows `self.training` and nothing else; the caller decides
    the mode of every call. In train mode BatchNorm normalises with the statistics of the batch
    it is given (per seed, biased variance) and updates its running mean / variance (unbiased
    variance, momentum 0.1) on *every* forward call, and dropout draws fresh masks (advancing
    the dropout generators) on every call. In eval mode BatchNorm uses the running statistics
    and changes nothing, and dropout is the identity. In TD3 the critic is also evaluated on the
    target batch (s', pi(s')) and on policy actions (s, pi(s)); whether those calls run in train
    mode (contributing to BN statistics, drawing dropout masks) or in eval mode is the caller's
    choice, e.g. `net.eval()` around them and `net.train()` back. BatchNorm in train mode needs
    at least 2 samples per seed. For `torch.func.functional_call` with one seed's parameters
    (`seed_slice`), slice the BN buffers too (`named_buffers()`) and use eval mode.
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        *,
        activation: str = "relu",
        norm: str = "none",
        norm_layers: Sequence[int] | None = None,
        norm_affine: bool = True,
        dropout: float = 0.0,
        dropout_generators: Sequence[torch.Generator] | None = None,
        weight_norm_output: bool = False,
        ofn: bool = False,
    ):
        super().__init__()
        generators = list(generators)
        hidden = tuple(hidden)
        if not generators:
            raise ValueError("need at least one generator (one per seed)")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        if any(not _is_int(h) or h < 1 for h in (in_dim, out_dim, *hidden)):
            raise ValueError(f"layer widths must be positive integers, got in={in_dim}, hidden={hidden}, out={out_dim}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose from {list(NORMS)}")
        if norm == "none":
            if norm_layers:
                raise ValueError(f"norm_layers {list(norm_layers)} given but norm is 'none'")
            norm_layers = ()
        elif norm_layers is None:
            norm_layers = tuple(range(len(hidden)))
        norm_layers = tuple(norm_layers)
        _check_indices("norm_layers", norm_layers, len(hidden))
        norm_layers = tuple(int(i) for i in norm_layers)
        affine = bool(norm_affine)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        if dropout_generators is not None:
            dropout_generators = list(dropout_generators)
            if len(dropout_generators) != len(generators):
                raise ValueError(f"need one dropout generator per seed: got {len(dropout_generators)} "
                                 f"for {len(generators)} seeds")
            if not all(isinstance(g, torch.Generator) for g in dropout_generators):
                raise ValueError("dropout_generators must be torch.Generator objects")
        if ofn and not hidden:
            raise ValueError("ofn normalises the penultimate features, so it needs at least one hidden layer")

        self.n_seeds = len(generators)
        self.dims = [in_dim, *hidden, out_dim]
        self.activation = activation
        self.norm = norm
        self.norm_layers = tuple(sorted(set(norm_layers)))
        self.norm_affine = affine
        self.dropout = float(dropout)
        self.dropout_generators = dropout_generators
        self.weight_norm_output = bool(weight_norm_output)
        self.ofn = bool(ofn)

        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(self.dims[:-1], self.dims[1:]):
            bound = 1.0 / math.sqrt(d_in)
            w = torch.stack([_uniform((d_out, d_in), bound, g).T for g in generators])
            b = torch.stack([_uniform((1, d_out), bound, g) for g in generators])
            self.weights.append(nn.Parameter(w.contiguous()))
            self.biases.append(nn.Parameter(b))
        # A bias right before BatchNorm is removed by the batch mean: its gradient is zero up to
        # rounding, which Adam would turn into +-lr steps of noise (and seeds trained in a batch
        # would then drift from the same seeds alone). Such biases are zero and left out of the
        # forward pass (their gradient is None), as `nn.Linear(bias=False)` before BatchNorm.
        self.unused_biases = tuple(k for k in self.norm_layers if norm == "batchnorm")
        with torch.no_grad():
            for k in self.unused_biases:
                self.biases[k].zero_()
        # LayerNorm affine keeps its original names (ln_weights.N / ln_biases.N), so old
        # checkpoints load unchanged; BatchNorm gets its own names.
        self.ln_weights = nn.ParameterDict()
        self.ln_biases = nn.ParameterDict()
        self.bn_weights = nn.ParameterDict()
        self.bn_biases = nn.ParameterDict()
        if norm != "none" and affine:
            w_dict, b_dict = (self.ln_weights, self.ln_biases) if norm == "layernorm" else (self.bn_weights, self.bn_biases)
            for i in self.norm_layers:
                w_dict[str(i)] = nn.Parameter(torch.ones(self.n_seeds, 1, hidden[i]))
                b_dict[str(i)] = nn.Parameter(torch.zeros(self.n_seeds, 1, hidden[i]))
        if norm == "batchnorm":
            for i in self.norm_layers:
                self.register_buffer(f"bn_running_mean_{i}", torch.zeros(self.n_seeds, 1, hidden[i]))
                self.register_buffer(f"bn_running_var_{i}", torch.ones(self.n_seeds, 1, hidden[i]))
        if self.weight_norm_output:
            self.wn_gain = nn.Parameter(self.weights[-1].detach().norm(dim=1, keepdim=True).clone())
        # LayerNorm + affine + activation as one compiled kernel on CUDA (`fused_layer_norm_act`);
        # trainers switch it on (`enable_fused_pointwise`), everything else (the SEEM analysis's
        # functional transforms included) runs the plain ops
        self.fused_pointwise = False

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.weights) == 1:  # no hidden layer: the output layer alone
            return stacked_affine(self.biases[-1], x, self.output_weight())
        if self.training and self.dropout > 0 and self.dropout_generators is not None \
                and x.shape[0] != len(self.dropout_generators):
            raise ValueError(f"input has {x.shape[0]} seeds but there are {len(self.dropout_generators)} dropout generators")
        return self.forward_from(self.linear(0, x), 0)

    def linear(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Hidden layer k's linear map of x (no bias before BatchNorm: `unused_biases`)."""
        if k in self.unused_biases:
            return torch.bmm(x, self.weights[k])
        if torch.compiler.is_compiling():  # the bias joins the next pointwise kernel (activation, norm)
            return torch.bmm(x, self.weights[k]) + self.biases[k]
        return stacked_affine(self.biases[k], x, self.weights[k])

    def forward_from(self, h: torch.Tensor, layer: int = 0) -> torch.Tensor:
        """The rest of the forward pass from hidden layer `layer`'s linear output h [S, B, width]
        (so a caller can build that output its own way, e.g. from parts computed once)."""
        act = ACTIVATIONS[self.activation]
        n = len(self.weights)
        masks = self._dropout_masks(h) if self.training and self.dropout > 0 else None
        x = h
        for k in range(layer, n - 1):
            if k > layer:
                x = self.linear(k, x)
            if k in self.norm_layers and self.norm == "layernorm" and self.fused_pointwise and x.is_cuda:
                affine = (self.ln_weights[str(k)], self.ln_biases[str(k)]) if self.norm_affine else (None, None)
                x = fused_layer_norm_act(x, *affine, self.activation)
            else:
                if k in self.norm_layers:
                    x = self._layer_norm(k, x) if self.norm == "layernorm" else self._batch_norm(k, x)
                x = act(x)
            if masks is not None:
                x = x * masks[k]
        if self.ofn:
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(OFN_EPS)
        return stacked_affine(self.biases[-1], x, self.output_weight())

    def output_weight(self) -> torch.Tensor:
        """The output layer's effective weight [S, in, out] (after WeightNorm, if any)."""
        v = self.weights[-1]
        if not self.weight_norm_output:
            return v
        return self.wn_gain * (v / v.norm(dim=1, keepdim=True))

    def _layer_norm(self, k: int, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, x.shape[-1:], eps=NORM_EPS)
        if self.norm_affine:
            x = x * self.ln_weights[str(k)] + self.ln_biases[str(k)]
        return x

    def _batch_norm(self, k: int, x: torch.Tensor) -> torch.Tensor:
        running_mean = getattr(self, f"bn_running_mean_{k}")
        running_var = getattr(self, f"bn_running_var_{k}")
        if self.training:
            batch = x.shape[1]
            if batch < 2:
                raise ValueError(f"BatchNorm in train mode needs more than 1 sample per seed, got {batch}")
            if x.shape[0] != running_mean.shape[0]:
                raise ValueError(f"input has {x.shape[0]} seeds but the BatchNorm statistics have {running_mean.shape[0]}")
            mean = x.mean(1, keepdim=True)
            var = x.var(1, keepdim=True, unbiased=False)
            with torch.no_grad():
                running_mean.mul_(1 - BN_MOMENTUM).add_(BN_MOMENTUM * mean.detach())
                running_var.mul_(1 - BN_MOMENTUM).add_(BN_MOMENTUM * batch / (batch - 1) * var.detach())
        else:
            mean, var = running_mean, running_var
        x = (x - mean) * torch.rsqrt(var + NORM_EPS)
        if self.norm_affine:
            x = x * self.bn_weights[str(k)] + self.bn_biases[str(k)]
        return x

    def _dropout_masks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per hidden layer, keep-masks scaled by 1 / (1 - p), [S, B, width] (recipe: class doc)."""
        n_seeds, batch = x.shape[0], x.shape[1]
        widths = self.dims[1:-1]
        total = sum(widths)
        if self.dropout_generators is None:
            keep = torch.rand((n_seeds, batch, total), device=x.device) >= self.dropout
        else:
            if n_seeds != len(self.dropout_generators):
                raise ValueError(f"input has {n_seeds} seeds but there are {len(self.dropout_generators)} dropout generators")
            keep = torch.stack([torch.rand((batch, total), generator=g, device=g.device) >= self.dropout
                                for g in self.dropout_generators]).to(x.device)
        scaled = keep.to(x.dtype) * (1.0 / (1.0 - self.dropout))
        return list(scaled.split(widths, dim=-1))

    # ------------------------------------------------------------------ dropout RNG checkpointing
    def dropout_rng_states(self) -> list[torch.Tensor] | None:
        """States of the per-seed dropout generators (for checkpoints); None without generators."""
        if self.dropout_generators is None:
            return None
        return [g.get_state() for g in self.dropout_generators]

    def set_dropout_rng_states(self, states: Sequence[torch.Tensor]) -> None:
        """Restore the states returned by `dropout_rng_states`."""
        if self.dropout_generators is None:
            raise ValueError("this network has no dropout generators")
        states = list(states)
        if len(states) != len(self.dropout_generators):
            raise ValueError(f"got {len(states)} dropout generator states for {len(self.dropout_generators)} seeds")
        for g, s in zip(self.dropout_generators, states):
            g.set_state(s)

    def extra_repr(self) -> str:
        parts = [f"seeds={self.n_seeds}", f"dims={self.dims}", f"activation={self.activation}"]
        if self.norm != "none":
            parts.append(f"norm={self.norm}{list(self.norm_layers)}, affine={self.norm_affine}")
        if self.dropout:
            parts.append(f"dropout={self.dropout}")
        if self.weight_norm_output:
            parts.append("weight_norm_output=True")
        if self.ofn:
            parts.append("ofn=True")
        return ", ".join(parts)


# ------------------------------------------------------------------ fused LayerNorm + activation
FUSED_POINTWISE_ENV = "SEEMRL_FUSED_POINTWISE"  # "0" switches the compiled kernels off
INDUCTOR_DETERMINISTIC_ENV = "SEEMRL_INDUCTOR_DETERMINISTIC"  # "0": reductions tuned by timing (may differ run to run)


class JoinedStacks:
    """Stacks of the same architecture (the twin critics Q1 and Q2) held as one stack of all their
    members, sharing memory: `joined`'s parameters and buffers are the stacks' concatenated on the
    member axis, and each stack's become views of them. One forward pass of `joined` is every
    stack's forward with one batched matmul per layer (one kernel where there were one per stack,
    forward and backward). Its gradients land on `joined`'s parameters; `share_grads` hands each
    stack its part as views, so an optimiser of the stacks' own parameters steps them as before,
    and whatever reads the stacks (checkpoints, SEEM, evaluation) sees them unchanged.

    Join once the stacks are on their device (`.to` would copy them apart). Before each backward
    through `joined`, clear its gradients (`zero_grad`): the stacks' optimiser clears only views.
    """

    def __init__(self, *stacks: StackedMLP):
        first = stacks[0]
        if len(stacks) < 2 or any(type(s) is not StackedMLP or s.dims != first.dims or s.extra_repr() != first.extra_repr()
                                  for s in stacks):
            raise ValueError("can only join two or more StackedMLPs of one architecture")
        self.stacks, self.sizes = stacks, [s.n_seeds for s in stacks]
        joined = copy.deepcopy(first)
        self.params = []  # (joined parameter, the stacks' parameters it holds)
        for name, _ in first.named_parameters():
            parts = [s.get_parameter(name) for s in stacks]
            whole = nn.Parameter(torch.cat([p.detach() for p in parts]), requires_grad=parts[0].requires_grad)
            owner, _, leaf = name.rpartition(".")
            joined.get_submodule(owner)._parameters[leaf] = whole
            for p, view in zip(parts, whole.detach().split(self.sizes)):
                p.data = view
            self.params.append((whole, parts))
        for name, _ in first.named_buffers():
            parts = [s.get_buffer(name) for s in stacks]
            whole = torch.cat(parts)
            owner, _, leaf = name.rpartition(".")
            joined.get_submodule(owner)._buffers[leaf] = whole
            for b, view in zip(parts, whole.split(self.sizes)):
                b.data = view
        joined.n_seeds = sum(self.sizes)
        joined.dropout_generators = (None if first.dropout_generators is None
                                     else [g for s in stacks for g in s.dropout_generators])
        self.joined = joined

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Every stack's output on its own input: x [sum of members, B, in] -> [sum of members, B, out]."""
        return self.joined(x)

    def train(self, mode: bool = True) -> None:
        self.joined.train(mode)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.joined.zero_grad(set_to_none=set_to_none)

    def share_grads(self) -> None:
        """Each stack's parameters get their part of the joined gradients (views; None stays None)."""
        for whole, parts in self.params:
            grads = [None] * len(parts) if whole.grad is None else whole.grad.split(self.sizes)
            for p, g in zip(parts, grads):
                p.grad = g


def inductor_options() -> dict[str, Any]:
    """torch.compile options for every compiled piece of seemrl: Inductor's deterministic mode.
    By default Inductor picks among several Triton configurations of a reduction (a LayerNorm,
    a sum over the batch) by timing them on the GPU, and the configurations sum in different
    orders: under load from other processes the pick, and so the run's bits, can change (the
    likely cause of the evidence rerun's different HalfCheetah recipe, 2026-12-06). The deterministic
    mode picks by a fixed rule instead. Empty where torch has no such mode (before 2.10) or where
    SEEMRL_INDUCTOR_DETERMINISTIC=0 asks for timing-based picks."""
    import torch._inductor.config as inductor_config

    trial = {"max_autotune": True} if os.environ.get(INDUCTOR_MAX_AUTOTUNE_ENV) == "1" else {}
    if os.environ.get(INDUCTOR_DETERMINISTIC_ENV, "1") == "0" or not hasattr(inductor_config, "deterministic"):
        return trial
    return {"deterministic": True, **trial}


class Compiled:
    """`fn` compiled by torch.compile (static shapes) on first call; where compilation or the
    compiled code fails (no Triton, no compiler), `fn` itself from then on, with a warning.
    A function that compiles in pieces may have run some of them before one fails:
    `on_fallback()` (optional) puts back what they changed outside their results (flags such
    as requires_grad) before `fn` runs."""

    def __init__(self, fn: Callable, what: str, fullgraph: bool = False, on_fallback: Callable | None = None):
        self.fn, self.what, self.fullgraph, self.on_fallback = fn, what, fullgraph, on_fallback
        self._compiled: Callable | None | bool = None  # None: not yet; False: failed

    def __call__(self, *args, **kwargs):
        if self._compiled is None:
            import torch._dynamo

            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            self._compiled = torch.compile(self.fn, dynamic=False, fullgraph=self.fullgraph,
                                           options=inductor_options() or None)
        if self._compiled is False:
            return self.fn(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as exc:  # same math, unfused
            warnings.warn(f"compiled {self.what} unavailable ({type(exc).__name__}: {exc}); using plain ops")
            self._compiled = False
            if self.on_fallback is not None:
                self.on_fallback()
            return self.fn(*args, **kwargs)


def _layer_norm_act(x, weight, bias, activation: str):
    x = F.layer_norm(x, x.shape[-1:], eps=NORM_EPS)
    if weight is not None:
        x = x * weight + bias
    return ACTIVATIONS[activation](x)


_LAYER_NORM_ACT = Compiled(_layer_norm_act, "LayerNorm", fullgraph=True)


def fused_layer_norm_act(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         activation: str) -> torch.Tensor:
    """LayerNorm (per-seed affine optional) then the activation, compiled by torch.compile into
    one fused kernel forward and backward. The step on a GPU is a chain of small kernels; this
    chain is the largest part of a LayerNorm critic's, and fusing it made the graphed TD3+BC step
    at 40 seeds 1.4x faster on an H200. Falls back to the plain ops (with a warning) where
    compilation is not available; inside a region being compiled it is the plain ops, which
    that compilation fuses."""
    if torch.compiler.is_compiling():
        return _layer_norm_act(x, weight, bias, activation)
    return _LAYER_NORM_ACT(x, weight, bias, activation)


def enable_fused_pointwise(modules, device) -> bool:
    """Switch the fused LayerNorm kernels on for every StackedMLP in `modules` when training on
    CUDA (unless SEEMRL_FUSED_POINTWISE=0); returns whether they are on."""
    on = torch.device(device).type == "cuda" and os.environ.get(FUSED_POINTWISE_ENV, "1") != "0"
    for module in modules:
        for m in module.modules():
            if isinstance(m, StackedMLP):
                m.fused_pointwise = on and m.norm == "layernorm"
    return on


CRITIC_SPEC_DEFAULTS: dict[str, Any] = {
    "norm": "none",  # "none" | "layernorm" | "batchnorm"
    "norm_layers": None,  # hidden layers with the norm; None = all
    "affine": True,  # learnable affine after the norm
    "dropout": 0.0,  # dropout probability on hidden activations
    "weight_norm_output": False,  # WeightNorm on the output layer
    "ofn": False,  # Output Feature Normalisation of the penultimate features
}


def critic_from_config(
    generators: Sequence[torch.Generator],
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int],
    spec: Mapping[str, Any] | None,
    activation: str = "relu",
    dropout_generators: Sequence[torch.Generator] | None = None,
) -> StackedMLP:
    """A critic whose normalisation is described by one config dict (keys: CRITIC_SPEC_DEFAULTS,
    all optional), e.g. {"norm": "layernorm", "norm_layers": [0, 1], "affine": true}.
    """
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(CRITIC_SPEC_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown critic normalisation key(s) {unknown}; allowed: {sorted(CRITIC_SPEC_DEFAULTS)}")
    s = {**CRITIC_SPEC_DEFAULTS, **spec}
    for key in ("affine", "weight_norm_output", "ofn"):
        if not isinstance(s[key], bool):
            raise ValueError(f"critic spec {key!r} must be true or false, got {s[key]!r}")
    if not isinstance(s["norm"], str):
        raise ValueError(f"critic spec 'norm' must be a string, got {s['norm']!r}")
    layers = s["norm_layers"]
    if layers is not None:
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
            raise ValueError(f"critic spec 'norm_layers' must be a list of hidden-layer indices or null, got {layers!r}")
        layers = tuple(layers)
    return StackedMLP(generators, in_dim, out_dim, hidden, activation=activation, norm=s["norm"],
                      norm_layers=layers, norm_affine=s["affine"], dropout=s["dropout"],
                      dropout_generators=dropout_generators, weight_norm_output=s["weight_norm_output"],
                      ofn=s["ofn"])


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_indices(name: str, indices: Sequence, n_hidden: int) -> None:
    not_int = [i for i in indices if not _is_int(i)]
    if not_int:
        raise ValueError(f"{name} indices must be integers, got {not_int}")
    bad = [i for i in indices if not 0 <= i < n_hidden]
    if bad:
        raise ValueError(f"{name} indices {bad} outside the {n_hidden} hidden layers")


def _uniform(shape: tuple[int, ...], bound: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g).mul_(2 * bound).sub_(bound)


def seed_slice(params: dict[str, torch.Tensor], seed_index: int) -> dict[str, torch.Tensor]:
    """Parameters (or buffers) of one seed, keeping a seed dimension of 1 (for `functional_call`)."""
    return {k: v[seed_index : seed_index + 1] for k, v in params.items()}


def seed_generators(seeds: Sequence[int], stream: int, device="cpu") -> list[torch.Generator]:
    """One generator per seed for a named purpose (`stream`), independent across purposes, on
    `device` (a CUDA generator draws different numbers from a CPU one with the same seed)."""
    return [torch.Generator(device=device).manual_seed(int(s) * 1_000_003 + stream) for s in seeds]


def per_seed_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm over all entries of stacked tensors [S, ...], one value per seed."""
    return torch.sqrt(sum(t.detach().flatten(1).pow(2).sum(1) for t in tensors))
