import numpy as np
import pytest
import torch

from seemrl.generate.behaviour_sac import SACAgent, SACConfig, evaluate, train_sac_run


def train_sac(env_id, cfg, seed, log):
    return train_sac_run(env_id, cfg, seed, log=log).agent

ENV = "Hopper-v5"
# a few hundred steps, updates from step 100, small nets: exercises every code path in seconds
TINY = SACConfig(total_steps=300, learning_starts=100, batch_size=32, hidden=(32, 32),
                 eval_episodes=1, log_every=100)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    lines = []
    return train_sac(ENV, TINY, seed=0, log=lines.append), lines


@pytest.fixture
def agent(trained):
    return trained[0]


def params(agent: SACAgent) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in agent.actor.parameters()]


def test_trains_and_logs(trained):
    a, lines = trained
    assert any("step 300" in line and "steps/s" in line for line in lines)
    assert any("eval return" in line for line in lines)
    assert np.isfinite(a.info["eval_return_mean"])
    assert a.obs_dim == 11 and a.act_dim == 3


def test_same_seed_same_parameters_different_seed_differs(agent):
    again = train_sac(ENV, TINY, seed=0, log=lambda s: None)
    for p, q in zip(params(agent), params(again)):
        np.testing.assert_array_equal(p, q)
    assert again.info["eval_returns"] == agent.info["eval_returns"]
    other = train_sac(ENV, TINY, seed=1, log=lambda s: None)
    assert not all(np.array_equal(p, q) for p, q in zip(params(agent), params(other)))


def test_training_does_not_touch_global_torch_rng(agent):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_sac(ENV, SACConfig(total_steps=120, learning_starts=100, batch_size=16, hidden=(8,),
                             eval_episodes=0), seed=0, log=lambda s: None)
    assert torch.equal(torch.rand(3), expected)


def test_actions_in_bounds_and_shapes(agent):
    obs = np.random.default_rng(0).normal(size=(64, 11))
    for deterministic in (True, False):
        actions = agent.act(obs, deterministic)
        assert actions.shape == (64, 3) and actions.dtype == np.float32
        assert np.all(np.abs(actions) <= 1.0)
    assert agent.act(obs[0], True).shape == (3,)
    # stochastic actions vary, deterministic ones do not
    assert not np.array_equal(agent.act(obs, False), agent.act(obs, False))
    np.testing.assert_array_equal(agent.act(obs, True), agent.act(obs, True))


def test_save_load_round_trip_gives_identical_actions(agent, tmp_path):
    path = tmp_path / "ckpt" / "sac.pt"
    agent.save(path)
    assert not list(path.parent.glob(".*tmp*"))
    loaded = SACAgent.load(path)
    assert loaded.cfg == agent.cfg and loaded.info == agent.info
    assert (loaded.obs_dim, loaded.act_dim) == (11, 3)
    obs = np.random.default_rng(1).normal(size=(16, 11))
    np.testing.assert_array_equal(loaded.act(obs, True), agent.act(obs, True))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    np.testing.assert_array_equal(loaded.act(obs, False, generator=g1),
                                  agent.act(obs, False, generator=g2))
    assert evaluate(ENV, loaded, 1, seed=3) == evaluate(ENV, agent, 1, seed=3)


def test_load_rejects_foreign_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, path)
    with pytest.raises(ValueError, match="other.pt"):
        SACAgent.load(path)
