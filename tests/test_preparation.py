"""Data preparation (`seemrl.data.preparation.prepare`): every algorithm's rewards, actions,
state statistics and OPER-R probabilities, decided in one place from the resolved config."""
import dataclasses

import algo_checks as checks
import numpy as np
import pytest
import torch

from seemrl.algos import cql, diffql, iql, td3
from seemrl.data.preparation import prepare, state_normalizer
from seemrl.data.transitions import Transitions


def _table(n=600, seed=0, sparse=False):
    a = checks.arrays(n=n, seed=seed)
    if sparse:
        a["reward"] = (np.random.default_rng(seed).random(n) < 0.1).astype(np.float32)
    return Transitions(**a, timeout=np.zeros(n, bool), episode_id=np.arange(n) // 40, step=np.arange(n) % 40,
                       meta={"name": "t", "env_id": "x", "source": "test"})


def _prepare(t, cfg):
    return prepare(t, dataclasses.asdict(cfg))


def test_iql_locomotion_rewards_scale_by_the_episode_returns_of_the_rows_present():
    t = _table()
    data, p = checks.prepared(t, iql.IQLConfig())
    returns = np.array([t.reward[t.episode_id == e].astype(np.float64).sum() for e in np.unique(t.episode_id)])
    scale = 1000.0 / (returns.max() - returns.min())
    assert p.info["reward_transform"] == "iql_locomotion" and p.info["reward_scale"] == pytest.approx(scale)
    assert p.info["return_min"] == pytest.approx(returns.min()) and p.info["return_max"] == pytest.approx(returns.max())
    np.testing.assert_allclose(data.reward.flatten().numpy(), t.reward * scale, rtol=1e-6)
    sub = t.take(np.random.default_rng(1).choice(len(t), 60, replace=False))  # an X% subset: the rows kept
    kept = np.array([sub.reward[sub.episode_id == e].astype(np.float64).sum() for e in np.unique(sub.episode_id)])
    assert _prepare(sub, iql.IQLConfig()).info["reward_scale"] == pytest.approx(1000.0 / (kept.max() - kept.min()))
    # states standardised, next states with the same statistics, terminals stop the bootstrap
    np.testing.assert_allclose(p.obs_mean, t.obs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.next_obs.numpy(), (t.next_obs - p.obs_mean) / p.obs_std, rtol=1e-5, atol=1e-5)
    assert data.not_done.flatten().tolist() == (1.0 - t.terminal).tolist()
    flat = t.take(np.arange(len(t)))
    flat.reward[:] = 1.0
    flat.episode_id[:] = np.arange(len(t)) % 2  # every episode returns 300
    with pytest.raises(ValueError, match="iql_locomotion"):
        _prepare(flat, iql.IQLConfig())


@pytest.mark.parametrize("name", ["minus1", "none", "x10", "diffql"])
@pytest.mark.parametrize("algo", [td3, iql, cql, diffql])
def test_every_algorithm_takes_every_per_reward_transform(algo, name):
    t = _table()
    data, p = checks.prepared(t, algo.Config(reward_transform=name, normalize_states=False))
    want = {"minus1": t.reward - 1, "none": t.reward, "x10": t.reward * 10, "diffql": (t.reward - 0.5) * 4}[name]
    np.testing.assert_allclose(data.reward.flatten().numpy(), want, rtol=1e-6)
    assert p.info == {"reward_transform": name, "oper_r": False} and p.obs_mean.tolist() == [0.0] * 5
    torch.testing.assert_close(data.obs, torch.as_tensor(t.obs))


def test_states_are_standardised_with_the_statistics_given_to_the_networks():
    t = _table()
    data, p = checks.prepared(t, cql.CQLConfig(reward_transform="minus1"))
    mean, std = state_normalizer(t.obs, True)
    assert np.array_equal(p.obs_mean, mean) and np.array_equal(p.obs_std, std)
    torch.testing.assert_close(data.obs, torch.as_tensor((t.obs - mean) / std))


def test_diffql_clips_actions_and_keeps_the_sparse_rewards_scale():
    t = _table(sparse=True)
    t.action[0] = [1.0, -1.0]
    data, p = checks.prepared(t, diffql.DiffQLConfig())
    assert data.action.abs().max().item() == pytest.approx(0.999)
    assert data.action[0].tolist() == pytest.approx([0.999, -0.999])
    assert sorted(set(data.reward.flatten().tolist())) == [0.0, 10.0]  # the authors' sparse 0 / 10
    assert (p.obs_mean == 0).all() and (p.obs_std == 1).all() and p.policy_probabilities is None
    assert data.policy_cdf is None


def test_oper_r_weights_episodes_by_their_untransformed_return():
    t = _table(sparse=True)
    t.reward[:] = 0.0
    t.reward[t.episode_id == 4] = 1.0  # one successful episode; base 0: the others are never drawn
    data, p = checks.prepared(t, diffql.DiffQLConfig(oper_r=True))
    assert p.policy_probabilities[t.episode_id == 4].sum() == pytest.approx(1.0) and p.info["oper_r"] is True
    assert data.policy_cdf is not None and float(data.policy_cdf[-1]) == pytest.approx(1.0)


def test_unknown_transform_is_named():
    with pytest.raises(ValueError, match="reward_transform must be one of"):
        td3.TD3Config(reward_transform="x100")
