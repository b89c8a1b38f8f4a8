import pytest
import torch
import torch.nn as nn

from seemrl.training.nets import StackedMLP, per_seed_norm, seed_generators, seed_slice


def test_each_seed_matches_a_plain_mlp():
    """Seed s of a stack computes what an nn.Sequential with its weights computes."""
    net = StackedMLP(seed_generators([0, 1, 2], 0), 4, 2, hidden=(8, 8), norm="layernorm")
    x = torch.randn(3, 5, 4)
    out = net(x)
    for s in range(3):
        plain = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 8), nn.LayerNorm(8),
                              nn.ReLU(), nn.Linear(8, 2))
        with torch.no_grad():
            for lin, w, b in zip([plain[0], plain[3], plain[6]], net.weights, net.biases):
                lin.weight.copy_(w[s].T)
                lin.bias.copy_(b[s, 0])
        torch.testing.assert_close(out[s], plain(x[s]))


def test_seed_initialisation_does_not_depend_on_its_neighbours():
    a = StackedMLP(seed_generators([5, 9], 1), 3, 1)
    b = StackedMLP(seed_generators([9], 1), 3, 1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa[1], pb[0])
    assert not torch.equal(a.weights[0][0], a.weights[0][1])


def test_layer_norm_placement_and_validation():
    net = StackedMLP(seed_generators([0], 0), 3, 1, hidden=(4, 4, 4), norm="layernorm", norm_layers=(2,))
    assert list(net.ln_weights.keys()) == ["2"]
    with pytest.raises(ValueError, match=r"norm_layers indices \[3\]"):
        StackedMLP(seed_generators([0], 0), 3, 1, hidden=(4, 4, 4), norm="layernorm", norm_layers=(3,))
    with pytest.raises(ValueError, match="unknown activation"):
        StackedMLP(seed_generators([0], 0), 3, 1, activation="gelu6")


def test_seed_slice_and_norm():
    net = StackedMLP(seed_generators([0, 1], 0), 3, 1, hidden=(4,))
    params = dict(net.named_parameters())
    one = seed_slice(params, 1)
    assert all(v.shape[0] == 1 for v in one.values())
    expected = torch.sqrt(sum(v[1].pow(2).sum() for v in params.values()))
    torch.testing.assert_close(per_seed_norm(list(params.values()))[1], expected)


def test_fused_layer_norm_is_off_on_cpu_and_matches_the_plain_ops():
    from seemrl.training.nets import (
        _layer_norm_act,
        enable_fused_pointwise,
        seed_generators,
    )

    net = StackedMLP(seed_generators([0, 1], 0), 5, 1, (8, 8), norm="layernorm")
    assert enable_fused_pointwise([net], "cpu") is False and net.fused_pointwise is False
    x = torch.randn(2, 4, 5)
    h = torch.baddbmm(net.biases[0], x, net.weights[0])
    ref = torch.relu(net._layer_norm(0, h))
    torch.testing.assert_close(_layer_norm_act(h, net.ln_weights["0"], net.ln_biases["0"], "relu"), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("affine, activation", [(True, "relu"), (False, "mish")])
def test_fused_layer_norm_matches_the_plain_ops_on_cuda(affine, activation):
    from seemrl.training.nets import enable_fused_pointwise, seed_generators

    def make():
        return StackedMLP(seed_generators([0, 1, 2], 0), 7, 1, (64, 64), norm="layernorm", norm_affine=affine,
                          activation=activation).cuda()
    plain, fused = make(), make()
    assert enable_fused_pointwise([fused], "cuda") and fused.fused_pointwise
    x = torch.randn(3, 256, 7, device="cuda")
    out_p, out_f = plain(x), fused(x)
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-5)
    out_p.square().sum().backward()
    out_f.square().sum().backward()
    for p, q in zip(plain.parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5)


def test_compiled_falls_back_to_plain_ops_and_puts_back_what_a_failed_piece_changed(monkeypatch):
    """Where the compiled function fails part-way (here: after switching a flag), the plain one
    runs instead, with a warning, once `on_fallback` has put the flag back; and from then on."""
    import warnings

    from seemrl.training import nets as nets_mod

    w = torch.nn.Parameter(torch.ones(2))
    calls = []

    def fn(x):
        calls.append("plain")
        return (x * w).sum()

    def broken(x):  # a compiled piece ran, then a later one failed
        w.requires_grad_(False)
        raise RuntimeError("no compiler")

    monkeypatch.setattr(torch, "compile", lambda f, **kw: broken)
    c = nets_mod.Compiled(fn, "test function", on_fallback=lambda: w.requires_grad_(True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = c(torch.ones(2))
    assert out.requires_grad and calls == ["plain"] and w.requires_grad
    assert any("compiled test function unavailable (RuntimeError: no compiler)" in str(m.message) for m in caught)
    c(torch.ones(2))
    assert calls == ["plain", "plain"]  # the compiled function is not tried again


def test_joined_stacks_share_memory_and_gradients():
    """`JoinedStacks`: one forward of the joined stack is each stack's forward; the stacks' tensors
    are views of the joined ones (a step on the joined parameters is a step on theirs), and
    `share_grads` hands each stack its part of the gradients. Stacks of different shapes are refused."""
    from seemrl.training.nets import JoinedStacks

    a = StackedMLP(seed_generators([0, 1], 1), 5, 1, (8, 8), norm="batchnorm")
    b = StackedMLP(seed_generators([0, 1], 2), 5, 1, (8, 8), norm="batchnorm")
    x = torch.randn(2, 6, 5)
    want = torch.cat([a(x), b(x)])
    twin = JoinedStacks(a, b)
    assert torch.equal(twin(x.repeat(2, 1, 1)), want)
    with torch.no_grad():
        twin.joined.weights[1][3] += 1.0  # member 3 = b's second member
    assert torch.equal(b.weights[1][1], twin.joined.weights[1][3])
    assert torch.equal(a.bn_running_mean_0, twin.joined.bn_running_mean_0[:2])  # buffers too
    twin.zero_grad()
    twin(x.repeat(2, 1, 1)).sum().backward()
    twin.share_grads()
    assert b.weights[0].grad.data_ptr() == twin.joined.weights[0].grad[2:].data_ptr()
    assert a.biases[0].grad is None  # BatchNorm's unused bias: no gradient, then or now
    with pytest.raises(ValueError, match="one architecture"):
        JoinedStacks(a, StackedMLP(seed_generators([0, 1], 3), 5, 1, (8, 4)))
