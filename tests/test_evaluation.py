"""Policy evaluation of all seeds in one Gymnasium vector environment (Hopper-v5, tiny nets)."""
import math

import pytest
import torch

from seemrl.algos import td3
from seemrl.training.evaluation import episode_seed, evaluate_policies, normalized_score, summarize
from seemrl.training.loop import evaluations_frame

HOPPER_OBS, HOPPER_ACT = 11, 3


def _nets(seeds):
    cfg = td3.TD3Config(hidden=(8, 8))
    return td3.build_nets(cfg, seeds, HOPPER_OBS, HOPPER_ACT)


def test_per_seed_results_and_deterministic():
    nets = _nets([0, 1])
    first = evaluate_policies(nets, [0, 1], "Hopper-v5", n_episodes=2, eval_seed=5,
                              ref_min=-20.272305, ref_max=3234.3)
    assert [r.seed for r in first] == [0, 1]
    for r in first:
        assert len(r.returns) == 2 and all(math.isfinite(x) for x in r.returns)
        assert r.return_mean == pytest.approx(sum(r.returns) / 2)
        assert r.normalized_score == pytest.approx(normalized_score(r.return_mean, -20.272305, 3234.3))
        assert not r.nonfinite_actions
    # episodes of one seed start from different states, and so do the two seeds' policies
    assert first[0].returns[0] != first[0].returns[1]
    assert first[0].returns != first[1].returns
    again = evaluate_policies(nets, [0, 1], "Hopper-v5", n_episodes=2, eval_seed=5)
    assert [r.returns for r in again] == [r.returns for r in first]
    assert again[0].normalized_score is None  # no reference scores given


def test_normalized_score_formula():
    assert normalized_score(50.0, 0.0, 200.0) == 25.0
    assert normalized_score(-20.272305, -20.272305, 3234.3) == 0.0
    assert normalized_score(3234.3, -20.272305, 3234.3) == pytest.approx(100.0)
    assert normalized_score(10.0, None, 1.0) is None
    assert normalized_score(10.0, 0.0, None) is None


def test_episode_seeds_differ_by_every_component():
    seeds = {episode_seed(e, s, k) for e in (0, 1) for s in (0, 1) for k in (0, 1)}
    assert len(seeds) == 8


def test_nan_seed_is_flagged_and_isolated():
    clean = _nets([3, 4])
    broken = _nets([3, 4])
    with torch.no_grad():
        broken.actor.weights[0][0].fill_(math.nan)  # seed 3's actor outputs NaN
    good = evaluate_policies(clean, [3, 4], "Hopper-v5", n_episodes=2)
    bad = evaluate_policies(broken, [3, 4], "Hopper-v5", n_episodes=2)
    assert bad[0].nonfinite_actions and all(math.isfinite(x) for x in bad[0].returns)
    assert not bad[1].nonfinite_actions
    assert bad[1].returns == good[1].returns  # seed 4 plays exactly as beside a healthy seed 3


def test_summarize_final_last10_best():
    rows = [{"step": 100 * (i + 1), "seed": 0, "return_mean": float(i), "return_std": 0.0,
             "normalized_score": None, "nonfinite_actions": False} for i in range(12)]
    summary = summarize(evaluations_frame(rows))["0"]
    assert summary["final_return"] == 11.0
    assert summary["last10_return"] == pytest.approx(sum(range(2, 12)) / 10)
    assert summary["best_return"] == 11.0
    assert summary["final_score"] is None and summary["best_score"] is None
    assert summary["evaluations"] == 12 and summary["final_step"] == 1200


@pytest.mark.parametrize("algo", ["td3", "iql", "cql"])
def test_policy_copy_acts_the_same_and_shares_nothing(algo):
    """Evaluation acts with a CPU copy of the policy's networks (`OfflineNets.host_policy`): the
    copy's actions are the policy's, the copy holds its own storage, the rest is shared."""
    from seemrl.algos import trainer_module

    module = trainer_module(algo)
    nets = module.build_nets(module.Config(hidden=(8, 8)), [0, 1], HOPPER_OBS, HOPPER_ACT,
                             obs_mean=torch.randn(HOPPER_OBS).numpy(), obs_std=torch.rand(HOPPER_OBS).numpy() + 0.5)
    copy = nets.policy_copy("cpu")
    obs = torch.randn(2, 5, HOPPER_OBS)
    with torch.no_grad():
        assert torch.equal(copy.policy(copy.normalize(obs)), nets.policy(nets.normalize(obs)))
        for p in nets.actor.parameters():
            p.add_(1.0)
        nets.obs_mean.add_(1.0)
        assert not torch.equal(copy.policy(copy.normalize(obs)), nets.policy(nets.normalize(obs)))
    assert copy.q1 is nets.q1 and copy.actor is not nets.actor
    assert nets.host_policy() is nets  # already on the CPU: no copy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_policy_of_cuda_nets_is_on_the_cpu_and_acts_alike():
    from seemrl.algos import trainer_module

    for algo in ("td3", "iql", "cql"):
        module = trainer_module(algo)
        nets = module.build_nets(module.Config(hidden=(64, 64)), [0, 1], HOPPER_OBS, HOPPER_ACT).to("cuda")
        host = nets.host_policy()
        assert host.obs_mean.device.type == "cpu" and next(host.actor.parameters()).device.type == "cpu"
        obs = torch.randn(2, 5, HOPPER_OBS)
        with torch.no_grad():
            torch.testing.assert_close(host.policy(host.normalize(obs)),
                                       nets.policy(nets.normalize(obs.cuda())).cpu(), atol=1e-3, rtol=1e-3)


def test_diffql_acts_on_its_own_device():
    """Diffusion-QL's policy samples from its own generators and reads the target critics: it is
    not copied to the host (POLICY_ON_HOST is off). A blocking evaluation and one in the
    background both act from a copy on the nets' device, with generators of its own in the same
    states and LayerNorms as plain ops (no compiled kernel called from an evaluation thread)."""
    from seemrl.algos import diffql
    from seemrl.training.nets import StackedMLP

    cfg = diffql.DiffQLConfig(hidden=(8, 8), critic={"norm": "layernorm"})
    nets = diffql.build_nets(cfg, [0, 1], HOPPER_OBS, HOPPER_ACT)
    nets.q1_target.fused_pointwise = nets.q2_target.fused_pointwise = True  # as training on CUDA sets them
    assert not diffql.DiffQLNets.POLICY_ON_HOST
    for copy in (nets.host_policy(), nets.policy_snapshot()):
        assert copy is not nets and copy.obs_mean.device == nets.obs_mean.device and copy.actor is not nets.actor
        assert all(a is not b and torch.equal(a.get_state(), b.get_state())
                   for a, b in zip(copy.eval_gens, nets.eval_gens))
        assert not any(m.fused_pointwise for name in copy.POLICY_MODULES for m in getattr(copy, name).modules()
                       if isinstance(m, StackedMLP))
    assert nets.q1_target.fused_pointwise  # the training nets keep theirs
