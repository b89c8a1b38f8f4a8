"""Critic normalisation options of StackedMLP: each seed equals a plain single-seed PyTorch net,
seeds stay independent, and checkpoints round-trip."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from seemrl.training.nets import ACTIVATIONS, CRITIC_SPEC_DEFAULTS, StackedMLP, critic_from_config, seed_generators

IN, OUT, HIDDEN, B = 5, 2, (6, 7, 4), 9


def make(seeds=(0, 1, 2), spec=None, drop_stream=11, **kw):
    spec = dict(spec or {})
    gens = seed_generators(seeds, 3)
    dgens = seed_generators(seeds, drop_stream) if spec.get("dropout", 0) > 0 else None
    return critic_from_config(gens, IN, OUT, kw.pop("hidden", HIDDEN), spec, dropout_generators=dgens, **kw)


def perturb(net: StackedMLP, seed: int = 123) -> StackedMLP:
    """Move the norm affine parameters, WN gains and BN running stats away from their identity
    init, so that forgetting to apply one of them shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("ln_", "bn_", "wn_")):
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
        for name, b in net.named_buffers():
            if "running_var" in name:
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif "running_mean" in name:
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
    return net


def reference(net: StackedMLP, s: int) -> dict:
    """Seed s as plain modules: Linear, LayerNorm / BatchNorm1d, weight_norm, with its weights."""
    n = len(net.weights)
    linears, norms = [], {}
    for k in range(n):
        lin = nn.Linear(net.dims[k], net.dims[k + 1])
        with torch.no_grad():
            lin.weight.copy_(net.weights[k][s].T)
            lin.bias.copy_(net.biases[k][s, 0])
        if k == n - 1 and net.weight_norm_output:
            lin = weight_norm(lin, name="weight", dim=0)
            with torch.no_grad():
                lin.parametrizations.weight.original0.copy_(net.wn_gain[s].T)  # g: [out, 1]
        linears.append(lin)
    for k in net.norm_layers:
        h = net.dims[k + 1]
        if net.norm == "layernorm":
            m = nn.LayerNorm(h, elementwise_affine=net.norm_affine)
            if net.norm_affine:
                with torch.no_grad():
                    m.weight.copy_(net.ln_weights[str(k)][s, 0])
                    m.bias.copy_(net.ln_biases[str(k)][s, 0])
        else:
            m = nn.BatchNorm1d(h, affine=net.norm_affine)
            with torch.no_grad():
                if net.norm_affine:
                    m.weight.copy_(net.bn_weights[str(k)][s, 0])
                    m.bias.copy_(net.bn_biases[str(k)][s, 0])
                m.running_mean.copy_(getattr(net, f"bn_running_mean_{k}")[s, 0])
                m.running_var.copy_(getattr(net, f"bn_running_var_{k}")[s, 0])
        norms[k] = m
    return {"linears": linears, "norms": norms}


def ref_forward(net: StackedMLP, ref: dict, x: torch.Tensor, train: bool, masks=None) -> torch.Tensor:
    lins = ref["linears"]
    for m in [*lins, *ref["norms"].values()]:
        m.train(train)
    for k, lin in enumerate(lins[:-1]):
        x = lin(x)
        if k in ref["norms"]:
            x = ref["norms"][k](x)
        x = ACTIVATIONS[net.activation](x)
        if masks is not None:
            x = x * masks[k] / (1 - net.dropout)
    if net.ofn:
        x = F.normalize(x, dim=-1, eps=1e-6)  # x / max(||x||, eps): all-zero ReLU features stay 0
    return lins[-1](x)


SPECS = {
    "none": {},
    "ln_index_list": {"norm": "layernorm", "norm_layers": [0, 2]},
    "ln_no_affine": {"norm": "layernorm", "affine": False},
    "bn": {"norm": "batchnorm", "norm_layers": [1, 2]},
    "bn_no_affine": {"norm": "batchnorm", "affine": False},
    "weight_norm_output": {"weight_norm_output": True},
    "ofn": {"ofn": True},
    "all_but_dropout": {"norm": "batchnorm", "weight_norm_output": True, "ofn": True},
}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(SPECS))
def test_each_seed_matches_plain_pytorch(name, train):
    net = perturb(make(spec=SPECS[name]))
    net.train(train)
    refs = [reference(net, s) for s in range(3)]
    x = torch.randn(3, B, IN)
    out = net(x)
    for s in range(3):
        torch.testing.assert_close(out[s], ref_forward(net, refs[s], x[s], train))
        for k, m in refs[s]["norms"].items():  # BN running stats updated as nn.BatchNorm1d does (train only)
            if isinstance(m, nn.BatchNorm1d):
                torch.testing.assert_close(getattr(net, f"bn_running_mean_{k}")[s, 0], m.running_mean)
                torch.testing.assert_close(getattr(net, f"bn_running_var_{k}")[s, 0], m.running_var)


def test_batchnorm_train_vs_eval_and_running_update():
    net = make(spec={"norm": "batchnorm", "norm_layers": [0]})
    x = torch.randn(3, B, IN) * 3 + 1
    before = net.bn_running_mean_0.clone()
    net.eval()
    y_eval = net(x)
    assert torch.equal(net.bn_running_mean_0, before)  # eval changes nothing
    net.train()
    y_train = net(x)
    assert not torch.allclose(y_train, y_eval)
    assert not torch.equal(net.bn_running_mean_0, before)
    with pytest.raises(ValueError, match="more than 1 sample"):
        net(torch.randn(3, 1, IN))


def _draw_masks(dgens, batch, widths, p):
    """The documented recipe: per seed one rand((B, sum(hidden))), keep u >= p, split by layer."""
    keep = torch.stack([torch.rand((batch, sum(widths)), generator=g) >= p for g in dgens])
    return [m.float() for m in keep.split(list(widths), dim=-1)]


@pytest.mark.parametrize("activation", ["relu", "mish"])  # mish: dropout must follow the activation
def test_dropout_matches_plain_pytorch_with_the_same_mask(activation):
    p = 0.3
    net = make(spec={"dropout": p, "norm": "layernorm"}, activation=activation)
    x = torch.randn(3, B, IN)
    replay = [copy.deepcopy(g) for g in net.dropout_generators]
    out = net.train()(x)
    masks = _draw_masks(replay, B, HIDDEN, p)
    assert 0 < float(torch.cat([m.flatten() for m in masks]).mean()) < 1
    for s in range(3):
        ref = reference(net, s)
        torch.testing.assert_close(out[s], ref_forward(net, ref, x[s], True, [m[s] for m in masks]))
    # eval: no dropout and the generators do not move
    state = net.dropout_rng_states()
    out_eval = net.eval()(x)
    assert all(torch.equal(a, b) for a, b in zip(state, net.dropout_rng_states()))
    for s in range(3):
        torch.testing.assert_close(out_eval[s], ref_forward(net, reference(net, s), x[s], False))
    # fresh masks at each train-mode call
    net.train()
    assert not torch.equal(net(x), net(x))


def test_dropout_rng_state_round_trip():
    net = make(spec={"dropout": 0.5})
    x = torch.randn(3, B, IN)
    states = net.dropout_rng_states()
    y1 = net(x)
    net.set_dropout_rng_states(states)
    assert torch.equal(net(x), y1)
    other = make(spec={"dropout": 0.5}, drop_stream=99)
    other.load_state_dict(net.state_dict())
    other.set_dropout_rng_states(states)
    assert torch.equal(other(x), y1)
    with pytest.raises(ValueError, match="states"):
        net.set_dropout_rng_states(states[:2])
    assert make(spec={}).dropout_rng_states() is None


def test_weight_norm_starts_as_the_plain_output_layer():
    plain, wn = make(), make(spec={"weight_norm_output": True})
    x = torch.randn(3, B, IN)
    torch.testing.assert_close(wn(x), plain(x))
    torch.testing.assert_close(wn.wn_gain, wn.weights[-1].norm(dim=1, keepdim=True))
    assert wn.wn_gain.shape == (3, 1, OUT)
    with torch.no_grad():  # rescaling v leaves the function unchanged: only g sets the norm
        wn.weights[-1].mul_(5.0)
    torch.testing.assert_close(wn(x), plain(x))


def test_ofn_output_is_invariant_to_the_feature_scale():
    """The output layer sees x / ||x||: scaling the last hidden layer's weights and bias by c > 0
    scales the (ReLU) features by c and leaves the output unchanged; without OFN it does not."""
    x = torch.randn(3, B, IN)
    for ofn in (True, False):
        net = make(spec={"ofn": ofn})
        y = net(x)
        with torch.no_grad():
            net.weights[-2].mul_(7.0)
            net.biases[-2].mul_(7.0)
        assert torch.allclose(net(x), y) == ofn


SPEC_INDEP = [
    {"norm": "layernorm"},
    {"norm": "batchnorm", "dropout": 0.2, "weight_norm_output": True, "ofn": True},
    {"norm": "batchnorm", "affine": False, "norm_layers": [1]},
]


def _run(net, x):
    net.train()
    net.zero_grad()
    y = net(x)
    y.sum().backward()  # as in training: a sum of per-seed losses
    grads = {n: p.grad[0].clone() for n, p in net.named_parameters() if p.grad is not None}
    bufs = {n: b[0].clone() for n, b in net.named_buffers()}
    return y[0].detach(), grads, bufs


@pytest.mark.parametrize("spec", SPEC_INDEP, ids=["ln", "bn_drop_wn_ofn", "bn_no_affine"])
def test_seed_zero_ignores_seed_one(spec):
    x = torch.randn(2, B, IN)
    base = _run(make((0, 1), spec), x)

    x_other = x.clone()
    x_other[1] = torch.randn(B, IN) * 10 + 3
    x_nan = x.clone()
    x_nan[1, 2, 0] = float("nan")
    changed = make((0, 1), spec)
    with torch.no_grad():
        for n, p in changed.named_parameters():
            p[1].mul_(-3.0).add_(0.7)
        for n, b in changed.named_buffers():
            b[1].add_(2.0)
    for net, xx in [(make((0, 1), spec), x_other), (make((0, 1), spec), x_nan), (changed, x)]:
        y0, g0, b0 = _run(net, xx)
        assert torch.isfinite(y0).all()
        torch.testing.assert_close(y0, base[0], rtol=0, atol=0)
        for n in base[1]:
            assert torch.isfinite(g0[n]).all(), n
            torch.testing.assert_close(g0[n], base[1][n], rtol=0, atol=0, msg=n)
        for n in base[2]:
            torch.testing.assert_close(b0[n], base[2][n], rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("name,spec", [*SPECS.items(), ("dropout_bn", {"dropout": 0.4, "norm": "batchnorm"})])
def test_seed_alone_equals_seed_in_a_stack(name, spec):
    pair, alone = make((3, 7), spec), make((7,), spec)
    for (na, pa), (nb, pb) in zip(pair.state_dict().items(), alone.state_dict().items()):
        assert na == nb
        assert torch.equal(pa[1], pb[0]), na
    x = torch.randn(2, B, IN)
    for _ in range(2):  # two train steps: BN statistics and dropout masks evolve identically
        ya, yb = pair.train()(x), alone.train()(x[1:])
        assert torch.equal(ya[1], yb[0])
    for (na, pa), (_, pb) in zip(pair.state_dict().items(), alone.state_dict().items()):
        assert torch.equal(pa[1], pb[0]), na
    if pair.dropout_generators is not None:
        assert torch.equal(pair.dropout_rng_states()[1], alone.dropout_rng_states()[0])
    assert torch.equal(pair.eval()(x)[1], alone.eval()(x[1:])[0])


def test_state_dict_round_trip_with_batchnorm_buffers():
    spec = {"norm": "batchnorm", "weight_norm_output": True}
    net = make(spec=spec)
    x = torch.randn(3, B, IN)
    net.train()(x)
    sd = net.state_dict()
    assert {"bn_running_mean_0", "bn_running_var_2", "bn_weights.1", "wn_gain"} <= set(sd)
    fresh = critic_from_config(seed_generators([5, 6, 8], 0), IN, OUT, HIDDEN, spec)
    assert not torch.equal(fresh.bn_running_mean_0, sd["bn_running_mean_0"])
    fresh.load_state_dict(sd)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert torch.equal(fresh.eval()(x), net.eval()(x))


def test_old_layer_norm_state_dict_still_loads():
    """Keys as the pre-options StackedMLP wrote them for layer_norm=(0, 1)."""
    g = torch.Generator().manual_seed(0)
    old = {}
    dims = [IN, 6, 7, OUT]
    for k, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        old[f"weights.{k}"] = torch.randn(2, a, b, generator=g)
        old[f"biases.{k}"] = torch.randn(2, 1, b, generator=g)
    for k in (0, 1):
        old[f"ln_weights.{k}"] = torch.randn(2, 1, dims[k + 1], generator=g)
        old[f"ln_biases.{k}"] = torch.randn(2, 1, dims[k + 1], generator=g)
    for net in (StackedMLP(seed_generators([0, 1], 0), IN, OUT, (6, 7), norm="layernorm"),
                critic_from_config(seed_generators([0, 1], 0), IN, OUT, (6, 7), {"norm": "layernorm"})):
        net.load_state_dict(old)  # strict
        assert set(net.state_dict()) == set(old)
        assert torch.equal(net.ln_weights["1"], old["ln_weights.1"])


def test_layer_norm_arguments_and_critic_spec_agree():
    b = StackedMLP(seed_generators([0, 1], 0), IN, OUT, HIDDEN, norm="layernorm", norm_layers=[0, 2],
                   norm_affine=False)
    c = critic_from_config(seed_generators([0, 1], 0), IN, OUT, HIDDEN,
                           {"norm": "layernorm", "norm_layers": [0, 2], "affine": False})
    x = torch.randn(2, B, IN)
    assert b.norm == c.norm == "layernorm" and b.norm_layers == c.norm_layers == (0, 2)
    assert not b.norm_affine and len(b.ln_weights) == 0
    assert torch.equal(b(x), c(x))


def test_critic_from_config_defaults_and_full_spec():
    spec = {"norm": "layernorm", "norm_layers": [0, 1], "affine": True, "dropout": 0.0,
            "weight_norm_output": False, "ofn": False}
    assert set(spec) == set(CRITIC_SPEC_DEFAULTS)
    net = critic_from_config(seed_generators([0], 0), IN, OUT, HIDDEN, spec)
    assert (net.norm, net.norm_layers, net.norm_affine) == ("layernorm", (0, 1), True)
    plain = critic_from_config(seed_generators([0], 0), IN, OUT, HIDDEN, {})
    assert plain.norm == "none" and not plain.ofn and not plain.weight_norm_output and plain.dropout == 0
    assert critic_from_config(seed_generators([0], 0), IN, OUT, HIDDEN, None).norm == "none"


@pytest.mark.parametrize("kwargs,spec,match", [
    ({}, {"norm": "groupnorm"}, "unknown norm 'groupnorm'"),
    ({}, {"norm": "layernorm", "norm_layers": [3]}, r"norm_layers indices \[3\] outside"),
    ({}, {"norm": "batchnorm", "norm_layers": [-1]}, r"norm_layers indices \[-1\]"),
    ({}, {"norm": "none", "norm_layers": [0]}, "norm is 'none'"),
    ({}, {"dropout": 1.0}, r"dropout must be a probability in \[0, 1\)"),
    ({}, {"dropout": -0.1}, "dropout must be"),
    ({"hidden": ()}, {"ofn": True}, "at least one hidden layer"),
    ({}, {"layernorm": True}, r"unknown critic normalisation key\(s\) \['layernorm'\]"),
    ({}, {"affine": "yes"}, "'affine' must be true or false"),
    ({}, {"norm_layers": "0,1", "norm": "layernorm"}, "norm_layers"),
])
def test_config_validation(kwargs, spec, match):
    with pytest.raises(ValueError, match=match):
        make((0,), spec, **kwargs)


def test_constructor_validation():
    gens = seed_generators([0, 1], 0)
    with pytest.raises(ValueError, match="one dropout generator per seed"):
        StackedMLP(gens, IN, OUT, HIDDEN, dropout=0.1, dropout_generators=seed_generators([0], 1))
    with pytest.raises(ValueError, match="at least one generator"):
        StackedMLP([], IN, OUT, HIDDEN)
    net = StackedMLP(gens, IN, OUT, HIDDEN, dropout=0.1, dropout_generators=seed_generators([0, 1], 1))
    with pytest.raises(ValueError, match="dropout generators"):
        net(torch.randn(1, B, IN))
