"""The engine with a toy algorithm that uses every kind of draw (what IQL, CQL and Diffusion-QL
build on): windows reproduce step-by-step draws, divergence is recorded per seed at the exact
step, and a saved state continues bitwise."""
import math

import numpy as np
import pytest
import torch

from seemrl.training.draws import Draw, OfflineData, Window
from seemrl.training.nets import StackedMLP, seed_generators
from seemrl.training.trainer import StackedTrainer, make_optimizer


class ToyTrainer(StackedTrainer):
    """Regress Q(s, a + noise) on r + U[0,1) * t / 10, t a random integer: nonsense, but it reads
    every kind of draw, has two kinds of step and a target network."""

    def __init__(self, seeds, data, device="cpu", steps=30, checkpoint_every=7):
        super().__init__(seeds, data, device, steps=steps, checkpoint_every=checkpoint_every, cuda_graph=True)
        self.q = StackedMLP(seed_generators(seeds, 0), 5 + 2, 1, (8,))
        self.networks = {"q": self.q}
        self.targets = {"q": StackedMLP(seed_generators(seeds, 0), 5 + 2, 1, (8,))}
        self.optimizers = {"q": make_optimizer("adam", self.q.parameters(), 1e-2, self.device)}
        self.finish_setup()

    @property
    def draws(self):
        return [Draw("idx", "randint", (4,), 10, high=len(self.data)), Draw("noise", "normal", (4, 2), 11),
                Draw("u", "uniform", (4, 1), 12), Draw("t", "randint", (4, 1), 13, high=5)]

    def step_kinds(self):
        return ["even", "odd"]

    def step_kind(self, it):
        return "odd" if it % 2 else "even"

    def _update(self, draws, kind, grad_norm, set_to_none):
        d = self.data
        idx = draws["idx"]
        x = torch.cat([d.obs[idx], d.action[idx] + draws["noise"]], -1)
        with torch.no_grad():
            y = d.reward[idx] + draws["u"] * draws["t"] / 10 + 0.5 * self.targets["q"](x)
        loss = ((self.q(x) - y) ** 2).mean((1, 2))
        self.optimizers["q"].zero_grad(set_to_none=set_to_none)
        loss.sum().backward()
        self.record_nonfinite(loss)
        self.optimizers["q"].step()
        if kind == "odd":
            self.update_targets(0.5)
        return {"loss": loss.detach()}


def _data(n=50):
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, 5))
    return OfflineData.from_arrays(obs, rng.uniform(-1, 1, (n, 2)), rng.normal(size=n), obs, np.zeros(n),
                                   np.zeros(5), np.ones(5), "cpu")


def test_draw_validates_its_kind():
    with pytest.raises(ValueError, match="kind"):
        Draw("x", "gamma", (2,), 0)
    with pytest.raises(ValueError, match="high"):
        Draw("x", "uniform", (2,), 0, high=3)


@pytest.mark.parametrize("shape", [(1,), (3, 5), (16,), (256, 6)])
def test_batched_draws_equal_successive_draws_when_claimed(shape):
    for kind in ("randint", "normal", "uniform"):
        d = Draw("x", kind, shape, 0, high=7 if kind == "randint" else None)
        for steps in (5, 40):
            g, h = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
            same = torch.equal(d.sample(g, steps), torch.stack([d.sample(h) for _ in range(steps)]))
            if d.batches_exactly():
                assert same, (kind, shape, steps)
    assert not Draw("x", "normal", (3, 5), 0).batches_exactly()  # 15 numbers: not a block of 16


def test_windowed_toy_run_is_bitwise_the_step_by_step_run(tmp_path, monkeypatch):
    monkeypatch.setattr(ToyTrainer, "_window_rows", lambda self: 3)
    plain, windowed = ToyTrainer([1, 2], _data()), ToyTrainer([1, 2], _data())
    windowed.use_window = True
    for step in range(1, 31):
        a, b = plain.step(), windowed.step()
        assert torch.equal(a["loss"], b["loss"]), step
        if step == 8:  # mid-window: a fresh trainer continues from the saved state
            torch.save(windowed.state_dict(), tmp_path / "s.pt")
            windowed = ToyTrainer([1, 2], _data())
            windowed.use_window = True
            windowed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for p, q in zip(plain.q.parameters(), windowed.q.parameters()):
        assert torch.equal(p, q)
    w = Window(plain, 2)
    assert set(w.dev) == {"idx", "noise", "u", "t"} and w.dev["t"].dtype == torch.int64


def test_a_seed_alone_equals_the_seed_among_others():
    pair, alone = ToyTrainer([4, 9], _data()), ToyTrainer([9], _data())
    for _ in range(10):
        pair.step(), alone.step()
    for p, q in zip(pair.q.parameters(), alone.q.parameters()):
        torch.testing.assert_close(p[1:], q, rtol=1e-6, atol=1e-7)


def test_first_nonfinite_step_per_seed():
    t = ToyTrainer([0, 1, 2], _data())
    for _ in range(4):
        t.step()
    with torch.no_grad():
        t.q.weights[0][2].fill_(math.nan)
    t.step()
    t.step()
    assert t.first_nonfinite_steps() == [None, None, 5]
    assert all(torch.isfinite(p[:2]).all() for p in t.q.parameters())


def test_reward_transforms_and_oper_r_sampling():
    from seemrl.data.preparation import (
        episode_returns,
        return_priorities,
        transform_reward,
    )
    from seemrl.training.draws import sampling_cdf, weighted_indices

    r = np.array([0.0, 1.0, 0.0, 0.0], np.float32)
    assert transform_reward(r, "x10").tolist() == [0, 10, 0, 0]
    assert transform_reward(r, "minus1").tolist() == [-1, 0, -1, -1]
    assert transform_reward(r, "diffql").tolist() == [-2, 2, -2, -2]
    with pytest.raises(ValueError, match="reward transform"):
        transform_reward(r, "x100")
    returns = episode_returns(np.array([1.0, 2.0, 5.0, 1.0]), np.array([7, 7, 3, 9]))
    assert returns.tolist() == [3.0, 3.0, 5.0, 1.0]
    p = return_priorities(returns)
    assert p.tolist() == pytest.approx([0.5 / 2, 0.5 / 2, 1.0 / 2, 0.0])
    assert return_priorities(np.ones(3)).tolist() == pytest.approx([1 / 3] * 3)
    cdf = sampling_cdf(p, "cpu")
    u = torch.rand(100_000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(weighted_indices(cdf, u), minlength=4).double() / len(u)
    assert counts.tolist() == pytest.approx(p.tolist(), abs=0.01)
    assert counts[3] == 0  # the worst episode (base 0) is never drawn


def test_per_seed_gradient_clipping_and_learning_rate_schedule():
    from seemrl.training.trainer import clip_grad_norm_per_seed, cosine_lr, set_lr

    w = torch.zeros(2, 3, requires_grad=True)
    w.grad = torch.tensor([[3.0, 4.0, 0.0], [0.3, 0.4, 0.0]])
    norms = clip_grad_norm_per_seed([w], max_norm=1.0)
    assert norms.tolist() == pytest.approx([5.0, 0.5])
    assert w.grad[0].norm().item() == pytest.approx(1.0, rel=1e-5)  # clipped
    assert w.grad[1].tolist() == pytest.approx([0.3, 0.4, 0.0])  # under the limit: untouched
    assert cosine_lr(1.0, 0, 10) == 1.0 and cosine_lr(1.0, 5, 10) == pytest.approx(0.5)
    assert cosine_lr(1.0, 10, 10) == pytest.approx(0.0)
    opt = make_optimizer("adam", [w], 1e-3, torch.device("cpu"))
    set_lr(opt, 5e-4)
    assert opt.param_groups[0]["lr"] == 5e-4
