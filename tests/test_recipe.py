import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import seemrl.algos.online_sac as osac
from seemrl.data.minari_source import collect_episodes, minari_to_transitions, use_minari_root
from seemrl.generate.behaviour_sac import ReplayBuffer, SACAgent, split_episodes, transitions_prefix
from seemrl.generate.recipe import (D4RL_REF_SCORES, LEVELS, RecipeConfig, build_level_dataset, engine_agent,
                                    evaluate_snapshots, level_dataset_id, recipe_dataset_main, recipe_train_main,
                                    select_medium_snapshot)

minari = pytest.importorskip("minari")

ENV = "Hopper-v5"
# a few hundred SAC steps with small nets, snapshots every 100, datasets of 200 transitions
TINY = RecipeConfig(sac_steps=300, learning_starts=100, batch_size=32, hidden=(32, 32),
                    snapshot_every=100, eval_episodes=1, n_transitions=200)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """Train once (capturing the engine's SAC run to compare with), then build every level."""
    base = tmp_path_factory.mktemp("recipe")
    runs = []
    real_run = osac.train

    def capture(*args, **kwargs):
        runs.append(real_run(*args, **kwargs))
        return runs[-1]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MINARI_DATASETS_PATH", str(base / "default-root"))  # keep ~/.minari clean
            mp.setattr(osac, "train", capture)
            cfg_json = json.dumps(TINY.to_dict())
            report = recipe_train_main(ENV, base / "recipe", cfg_json, device="cpu")
            root = base / "minari"
            ids = {"random": recipe_dataset_main("random", ENV, base / "recipe", cfg_json, root)}
            for level in ("medium", "expert", "medium-replay", "medium-expert"):
                ids[level] = build_level_dataset(level, ENV, base / "recipe", TINY, root)
    finally:
        torch.set_num_threads(threads)
    (run,) = runs
    return {"report": report, "run": run, "dir": base / "recipe", "root": root, "ids": ids}


def transitions(recipe, level):
    return minari_to_transitions(recipe["ids"][level], recipe["root"])


def episodes_of(t):
    """Row ranges of each episode in a flattened table (rows are in episode order)."""
    starts = np.flatnonzero(np.r_[True, np.diff(t.episode_id) != 0])
    return list(zip(starts, np.r_[starts[1:], len(t)]))


# ------------------------------------------------------------------ unit
def test_medium_rule_picks_closest_to_a_third_earliest_on_tie():
    def pick(returns, expert_return, **kw):
        steps = [100 * (i + 1) for i in range(len(returns))]
        return select_medium_snapshot(steps, returns, expert_return, expert_step=10_000, **kw)

    # expert 3000 -> target 1000: 900 and 1100 tie (100 away); the earlier one wins
    assert pick([10, 300, 900, 1100, 2000], 3000) == 2
    assert pick([10, 300, 1100, 900, 2000], 3000) == 2
    assert pick([10, 950, 1040, 2000], 3000) == 2  # the closest, not the first above
    assert pick([5.0, 50.0], 3000) == 1  # never reached: the closest anyway
    assert pick([100, 200, 300], 600, fraction=0.5) == 2
    # the snapshot at the expert's step (the expert itself) is never the medium one,
    # even when it is closest (here: a poor expert with a negative return)
    assert select_medium_snapshot([100, 200, 300], [-100, -80, -30], -30, expert_step=300) == 1
    with pytest.raises(ValueError):
        select_medium_snapshot([300], [5.0], 3000, expert_step=300)


def test_buffer_prefix_cuts_mid_episode_and_refuses_a_wrapped_ring():
    buf = ReplayBuffer(5, obs_dim=1, act_dim=1, obs_dtype=np.float64)
    for t in range(4):  # one episode of 2 (terminated), then one in progress
        buf.add([t], [0.0], 1.0, [t + 1], terminated=(t == 1))
    p = buf.prefix(3)
    np.testing.assert_array_equal(p["episode_id"], [0, 0, 1])
    np.testing.assert_array_equal(p["truncated"], [False, False, True])  # cut: truncated
    eps = buf.episodes(3)
    assert [len(e["rewards"]) for e in eps] == [2, 1]
    np.testing.assert_array_equal(eps[0]["observations"][:, 0], [0, 1, 2])
    np.testing.assert_array_equal(eps[1]["observations"][:, 0], [2, 3])
    assert eps[0]["terminations"][-1] and eps[1]["truncations"][-1]
    assert not buf.truncated[2]  # the buffer itself is not modified
    with pytest.raises(ValueError):
        buf.prefix(5)  # only 4 added
    for t in range(4, 7):
        buf.add([t], [0.0], 1.0, [t + 1], terminated=False)
    with pytest.raises(ValueError, match="wrapped"):
        buf.prefix(2)


def test_split_episodes_rejects_broken_continuity():
    t = {"obs": np.array([[0.0], [1.0], [5.0]]), "next_obs": np.array([[1.0], [2.0], [6.0]]),
         "action": np.zeros((3, 1)), "reward": np.zeros(3),
         "terminated": np.array([False, False, True]), "truncated": np.zeros(3, bool),
         "episode_id": np.zeros(3, np.int64)}
    with pytest.raises(ValueError, match="next_obs"):
        split_episodes(t)
    t["obs"][2] = 2.0
    assert len(split_episodes(t)) == 1
    t["terminated"][2] = False
    with pytest.raises(ValueError, match="last transition"):
        split_episodes(t)


def test_config_from_json_and_validation(tmp_path):
    assert RecipeConfig.from_json(None) == RecipeConfig()
    assert RecipeConfig().n_transitions == 1_000_000
    text = json.dumps(TINY.to_dict())
    assert RecipeConfig.from_json(text) == TINY
    (tmp_path / "c.json").write_text(text)
    assert RecipeConfig.from_json(tmp_path / "c.json") == TINY
    assert RecipeConfig.from_json({"sac_steps": 50, "snapshot_every": 10}).sac_steps == 50
    with pytest.raises(TypeError):
        RecipeConfig.from_json('{"no_such_field": 1}')
    with pytest.raises(ValueError):
        RecipeConfig(sac_steps=100, snapshot_every=100)  # no snapshot before the expert
    assert level_dataset_id("HalfCheetah-v5", "medium-replay") == "seemrl/halfcheetah-medium-replay-v0"
    with pytest.raises(ValueError):
        level_dataset_id(ENV, "medium_replay")


# ------------------------------------------------------------------ the tiny recipe
def test_report_and_medium_choice(recipe):
    report, run = recipe["report"], recipe["run"]
    assert json.loads((recipe["dir"] / "recipe.json").read_text()) == report
    assert sorted(p.name for p in recipe["dir"].iterdir()) == [
        "expert.pt", "medium.pt", "medium_replay.npz", "recipe.json"]  # no temporaries left
    assert [s["step"] for s in report["snapshots"]] == [100, 200, 300]
    assert run.evaluations.empty  # no evaluation in the loop: the snapshots are evaluated afterwards
    assert report["snapshot_eval"] == {"episodes": 1, "policy": "deterministic (tanh of the mean)", "device": "cpu"}
    assert report["expert"]["eval_return"] == report["snapshots"][-1]["eval_return"]
    assert report["sac"]["act_before_update"] and report["sac"]["update_mode"] == "eager (CPU)"
    assert report["sac"]["training_episodes"] == len(run.episodes) > 0
    candidates = report["snapshots"][:-1]
    target = report["expert"]["eval_return"] / 3
    assert report["medium"]["threshold"] == pytest.approx(target)
    best = min(candidates, key=lambda s: abs(s["eval_return"] - target))
    assert report["medium"]["step"] == best["step"]
    assert report["medium"]["eval_return"] == best["eval_return"]
    sizes = {k: v["n_transitions"] for k, v in report["levels"].items()}
    assert sizes == {"random": 200, "medium": 200, "expert": 200, "medium-expert": 400,
                     "medium-replay": best["step"]}
    # the saved policies are the chosen snapshot and the final one, with their evaluations
    medium, expert = (SACAgent.load(recipe["dir"] / f) for f in ("medium.pt", "expert.pt"))
    assert medium.info["step"] == best["step"] and medium.info["eval_return_mean"] == best["eval_return"]
    assert expert.info["step"] == 300 and expert.info["eval_return_mean"] == report["expert"]["eval_return"]
    obs = np.random.default_rng(0).normal(size=(8, 11))
    assert not np.array_equal(medium.act(obs, True), expert.act(obs, True))


def test_engine_policy_as_the_recipe_agent(tmp_path):
    """A checkpoint of the engine, saved as the recipe's agent, acts as the engine's policy:
    the same deterministic action in the environment's box, the same sampled distribution."""
    cfg = osac.OnlineSACConfig(steps=10, learning_starts=5, hidden=(16, 16))
    low, high = np.array([-1.0, -2.0, 0.0]), np.array([1.0, 0.5, 3.0])
    nets = osac.build_nets(cfg, [7], 11, 3, low, high)
    osac.save_checkpoint(tmp_path / "c.pt", nets, cfg, [7], 10, [None], "Hopper-v5", torch.zeros(1))
    agent = engine_agent(osac.load_checkpoint(tmp_path / "c.pt"), {"seed": 7, "step": 10})
    agent.save(tmp_path / "a.pt")
    loaded = SACAgent.load(tmp_path / "a.pt")
    obs = torch.as_tensor(np.random.default_rng(0).normal(size=(64, 11)), dtype=torch.float32)
    with torch.no_grad():
        want = nets.env_action(nets.policy(obs[None]))[0].numpy()
        eps = torch.randn(1, 64, 3, generator=torch.Generator().manual_seed(0))
        sampled = nets.env_action(nets.sample(obs[None], eps)[0])[0].numpy()
        got_sampled = loaded.actor(obs, torch.Generator().manual_seed(0))[0].numpy()
    np.testing.assert_allclose(loaded.act(obs.numpy(), True), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_sampled, sampled, rtol=1e-5, atol=1e-5)


def test_snapshot_evaluation_does_not_depend_on_the_worker_count(tmp_path):
    cfg = osac.OnlineSACConfig(steps=60, learning_starts=20, hidden=(16, 16), batch_size=16, checkpoint_every=20,
                               eval_every=0)
    osac.train(cfg, [4], ENV, tmp_path / "checkpoints", log=lambda *_: None)
    one = evaluate_snapshots(tmp_path / "checkpoints", ENV, 2, eval_seed=4, workers=1)
    two = evaluate_snapshots(tmp_path / "checkpoints", ENV, 2, eval_seed=4, workers=2)
    assert one == two and [step for step, _ in one] == [20, 40, 60]  # step 0 is no snapshot
    assert all(len(r) == 2 for _, r in one) and len({tuple(r) for _, r in one}) == 3
    # the engine's own evaluation of a checkpoint gives the same returns (same reset seeds)
    ckpt = osac.load_checkpoint(tmp_path / "checkpoints" / "step_00000040.pt")
    (direct,) = osac.evaluate(ckpt.nets, [4], ENV, 2, 4)
    assert direct.returns == one[1][1]


def test_medium_replay_is_the_buffer_prefix_in_valid_episodes(recipe):
    k = recipe["report"]["medium"]["step"]
    buf = transitions_prefix(recipe["run"].transitions.arrays(0), recipe["run"].transitions.size[0])
    buf = SimpleNamespace(**buf)
    t = transitions(recipe, "medium-replay")
    assert len(t) == k == recipe["report"]["medium_replay"]["n_transitions"]
    np.testing.assert_array_equal(t.obs, buf.obs[:k].astype(np.float32))
    np.testing.assert_array_equal(t.next_obs, buf.next_obs[:k].astype(np.float32))
    np.testing.assert_array_equal(t.action, buf.action[:k])
    np.testing.assert_array_equal(t.reward, buf.reward[:k])
    np.testing.assert_array_equal(t.terminal, buf.terminated[:k].astype(bool))
    expected_timeout = buf.truncated[:k].copy()
    expected_timeout[-1] |= not t.terminal[-1]  # the episode in progress at the cut
    np.testing.assert_array_equal(t.timeout, expected_timeout)
    ranges = episodes_of(t)
    assert len(ranges) == len(np.unique(buf.episode_id[:k]))
    assert len(ranges) == recipe["report"]["medium_replay"]["n_episodes"]
    for start, stop in ranges:
        np.testing.assert_array_equal(t.obs[start + 1:stop], t.next_obs[start:stop - 1])
        ends = t.terminal[start:stop] | t.timeout[start:stop]
        assert ends[-1] and not ends[:-1].any()
    # the stored observations are the environment's own (float64), not float32 copies
    with use_minari_root(recipe["root"]):
        first = next(minari.load_dataset(recipe["ids"]["medium-replay"]).iterate_episodes())
    np.testing.assert_array_equal(first.observations[:-1], buf.obs[:len(first.rewards)])


def test_medium_expert_is_medium_then_expert(recipe):
    medium, expert, both = (transitions(recipe, lv) for lv in ("medium", "expert", "medium-expert"))
    assert len(medium) == len(expert) == 200 and len(both) == 400
    assert len(episodes_of(both)) == len(episodes_of(medium)) + len(episodes_of(expert))
    np.testing.assert_array_equal(both.obs, np.concatenate([medium.obs, expert.obs]))
    np.testing.assert_array_equal(both.action, np.concatenate([medium.action, expert.action]))
    assert both.meta["minari_total_episodes"] == (medium.meta["minari_total_episodes"]
                                                 + expert.meta["minari_total_episodes"])


def test_policy_datasets_are_stochastic_rollouts_of_their_policy(recipe):
    for level, file in (("medium", "medium.pt"), ("expert", "expert.pt")):
        t = transitions(recipe, level)
        agent = SACAgent.load(recipe["dir"] / file)
        assert np.all(np.abs(t.action) <= 1)
        # sampled, not the deterministic mean action
        assert not np.allclose(t.action, agent.act(t.obs, True), atol=1e-3)
        for start, stop in episodes_of(t):
            np.testing.assert_array_equal(t.obs[start + 1:stop], t.next_obs[start:stop - 1])
    assert not np.array_equal(transitions(recipe, "medium").obs, transitions(recipe, "expert").obs)


def test_random_actions_fill_the_action_space(recipe):
    t = transitions(recipe, "random")
    assert len(t) == 200 and t.act_dim == 3
    assert np.all(t.action >= -1) and np.all(t.action <= 1)
    assert t.action.min() < -0.9 and t.action.max() > 0.9 and t.action.std() > 0.4  # uniform
    # exactly the uniform-random collection with the config's random seed
    episodes = collect_episodes(ENV, None, TINY.n_transitions, seed=TINY.random_seed)
    np.testing.assert_array_equal(t.action, np.concatenate([e["actions"] for e in episodes]))


def test_datasets_carry_d4rl_reference_scores(recipe):
    lo, hi = D4RL_REF_SCORES["hopper"]
    assert set(recipe["ids"]) == set(LEVELS)
    for level, dataset_id in recipe["ids"].items():
        assert dataset_id == f"seemrl/hopper-{level}-v0"
        t = transitions(recipe, level)
        assert (t.meta["ref_min_score"], t.meta["ref_max_score"]) == (lo, hi)
    with use_minari_root(recipe["root"]):
        ds = minari.load_dataset("seemrl/hopper-expert-v0")
        np.testing.assert_allclose(
            minari.get_normalized_score(ds, np.array([lo, hi, (lo + hi) / 2])), [0, 1, 0.5])
        assert ds.env_spec.id == ENV


def test_dataset_step_refuses_a_recipe_trained_differently(recipe, tmp_path):
    other = RecipeConfig(**{**TINY.to_dict(), "sac_steps": 400})
    with pytest.raises(ValueError, match="sac_steps"):
        build_level_dataset("random", ENV, recipe["dir"], other, tmp_path / "m")
    with pytest.raises(FileNotFoundError):
        build_level_dataset("random", ENV, tmp_path / "nothing", TINY, tmp_path / "m")
    # only dataset sizes and collection seeds may differ; custom reference scores are stored
    small = RecipeConfig(**{**TINY.to_dict(), "n_transitions": 20, "random_seed": 9})
    dataset_id = build_level_dataset("random", ENV, recipe["dir"], small, tmp_path / "m",
                                     ref_min=0.0, ref_max=10.0)
    t = minari_to_transitions(dataset_id, tmp_path / "m")
    assert len(t) == 20 and (t.meta["ref_min_score"], t.meta["ref_max_score"]) == (0.0, 10.0)
    # a policy file that is not the one the report describes is refused
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in recipe["dir"].iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "expert.pt").write_bytes((copy / "medium.pt").read_bytes())
    with pytest.raises(ValueError, match="sha256"):
        build_level_dataset("expert", ENV, copy, TINY, tmp_path / "m")
    # medium-expert needs the medium and expert datasets of that root, with the right size
    with pytest.raises(FileNotFoundError):
        build_level_dataset("medium-expert", ENV, recipe["dir"], TINY, tmp_path / "m")
    with pytest.raises(ValueError, match="rebuild"):
        build_level_dataset("medium-expert", ENV, recipe["dir"], small, recipe["root"])
