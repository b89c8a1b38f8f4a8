"""benchmarks/jax_peer.py's JAX programs compute the updates of the plain PyTorch references
(`PlainTD3BC`, `PlainIQL`) from the same weights on the same minibatches: the peer is the same
algorithm, not a cheaper one. Skipped where JAX is not importable (the jobs' environment, CI)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_default_matmul_precision", "float32")
import jax.numpy as jnp  # noqa: E402

from seemrl.algos import iql, td3  # noqa: E402
from seemrl.training.draws import OfflineData  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
OBS, ACT, HIDDEN, B = 17, 6, (16, 16), 256


def _load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(1000, OBS)).astype(np.float32)
    return OfflineData.from_arrays(obs, rng.uniform(-1, 1, (1000, ACT)), rng.normal(size=1000), obs + 0.01,
                                   rng.random(1000) < 0.05, np.zeros(OBS), np.ones(OBS), "cpu")


def _mlp_params(seq):
    """nn.Sequential(Linear, [LayerNorm], ReLU, ..., Linear) as jax_peer's list of layers."""
    layers = []
    for m in seq:
        if isinstance(m, torch.nn.Linear):
            layers.append({"w": jnp.asarray(m.weight.detach().T.numpy()), "b": jnp.asarray(m.bias.detach().numpy())})
        elif isinstance(m, torch.nn.LayerNorm):
            layers[-1].update(g=jnp.asarray(m.weight.detach().numpy()), beta=jnp.asarray(m.bias.detach().numpy()))
    return layers


def _twin(q1, q2):
    return jax.tree.map(lambda a, b: jnp.stack([a, b]), _mlp_params(q1), _mlp_params(q2))


def _adam(p):
    """A fresh Adam state of jax_peer's form for the parameters p."""
    return {"m": jax.tree.map(jnp.zeros_like, p), "v": jax.tree.map(jnp.zeros_like, p), "t": jnp.zeros((), jnp.int32)}


def _batch(d, idx):
    return {"obs": jnp.asarray(d.obs[idx].numpy()), "action": jnp.asarray(d.action[idx].numpy()),
            "reward": jnp.asarray(d.reward[idx].numpy().reshape(-1)), "next_obs": jnp.asarray(d.next_obs[idx].numpy()),
            "not_done": jnp.asarray(d.not_done[idx].numpy().reshape(-1))}


def _close(jax_tree, torch_tree):
    for a, b in zip(jax.tree.leaves(jax_tree), jax.tree.leaves(torch_tree), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("norm", ["none", "layernorm"])
def test_td3bc_program_equals_plain_pytorch(norm):
    peer, bench = _load("jax_peer"), _load("train_throughput")
    torch.manual_seed(0)
    data = _data()
    cfg = td3.TD3Config(hidden=HIDDEN, tau=0.005, bc_weight=1.0, policy_noise=0.0, critic={"norm": norm})
    plain = bench.PlainTD3BC(cfg, data, "cpu")
    prog = peer.td3bc_program(HIDDEN, norm == "layernorm", B, 2, policy_noise=0.0)
    actor, critic = _mlp_params(plain.actor), _twin(plain.q1, plain.q2)
    st = {"actor": actor, "critic": critic, "actor_t": actor, "critic_t": critic, "opt_a": _adam(actor),
          "opt_c": _adam(critic), "key": jax.random.PRNGKey(0)}
    g = torch.Generator().manual_seed(1)
    idx1, idx2 = (torch.randint(len(data), (B,), generator=g) for _ in range(2))
    eps = jnp.zeros((B, ACT))
    plain.step(idx1)  # the critic alone
    plain.step(idx2)  # the critic, then the actor and the targets (policy delay 2)
    st = prog.critic_step(st, _batch(data, idx1), eps)
    st = prog.critic_step(st, _batch(data, idx2), eps)
    st = prog.actor_step(st, _batch(data, idx2))
    _close(st["actor"], _mlp_params(plain.actor))
    _close(st["critic"], _twin(plain.q1, plain.q2))
    actor_t, q1_t, q2_t = plain.targets
    _close(st["actor_t"], _mlp_params(actor_t))
    _close(st["critic_t"], _twin(q1_t, q2_t))


@pytest.mark.parametrize("norm", ["none", "layernorm"])
def test_iql_program_equals_plain_pytorch(norm):
    peer, bench = _load("jax_peer"), _load("iql_throughput")
    torch.manual_seed(0)
    data = _data()
    cfg = iql.IQLConfig(hidden=HIDDEN, steps=10, critic={"norm": norm})
    plain = bench.PlainIQL(cfg, data, "cpu")
    prog = peer.iql_program(HIDDEN, norm == "layernorm", B, 1, total_steps=cfg.steps)
    actor = {"mean": _mlp_params(plain.actor), "log_std": jnp.asarray(plain.log_std.detach().numpy())}
    critic, value = _twin(plain.q1, plain.q2), _mlp_params(plain.vf)
    st = {"actor": actor, "critic": critic, "critic_t": critic, "value": value, "opt_a": _adam(actor),
          "opt_c": _adam(critic), "opt_v": _adam(value), "step": jnp.zeros((), jnp.int32)}
    g = torch.Generator().manual_seed(1)
    for _ in range(3):  # three updates: the actor's cosine learning rate moves
        idx = torch.randint(len(data), (B,), generator=g)
        plain.step(idx)
        st = prog.update_on(st, _batch(data, idx))
    _close(st["actor"]["mean"], _mlp_params(plain.actor))
    np.testing.assert_allclose(np.asarray(st["actor"]["log_std"]), plain.log_std.detach().numpy(), rtol=2e-4, atol=2e-6)
    _close(st["value"], _mlp_params(plain.vf))
    _close(st["critic"], _twin(plain.q1, plain.q2))
    _close(st["critic_t"], _twin(plain.q1_t, plain.q2_t))
