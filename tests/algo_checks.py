"""Checks every algorithm on the training engine passes, shared by tests/test_{td3,td3_graph,iql,cql,diffql,
online_sac}.py: synthetic data, trainer construction, "a seed among others is the seed alone", "windowed
is step-by-step", divergence records, kill-and-resume, and CUDA graph against eager."""
from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import pytest
import torch

from seemrl.data.preparation import state_normalizer
from seemrl.training.draws import OfflineData
from seemrl.training.resume import ResumeDir

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one CPU thread is faster than several on a shared machine (restored after);
    $SEEMRL_TEST_THREADS overrides it. Import it into a test module to use it there."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("SEEMRL_TEST_THREADS", 1)))
    yield
    torch.set_num_threads(before)


# Seeds trained together are the runs they would be alone. With PyTorch's scalar CPU kernels
# (ATEN_CPU_CAPABILITY=default; tests/test_seed_independence.py runs the seed checks that way) a
# seed's numbers are bit for bit the same; with the vectorised kernels (AVX2/AVX-512, the default)
# an elementwise transcendental function (exp, tanh, Mish) takes the vector or the scalar path
# for a value depending on where the seed sits in the stack, so they agree to rounding only.
EXACT = torch.backends.cpu.get_cpu_capability() == "DEFAULT"
if os.environ.get("SEEMRL_REQUIRE_EXACT") == "1" and not EXACT:
    raise RuntimeError("SEEMRL_REQUIRE_EXACT=1 but PyTorch runs its vectorised CPU kernels: "
                       "set ATEN_CPU_CAPABILITY=default before torch is imported")


def assert_same_run(a: torch.Tensor, b: torch.Tensor, msg: str, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """a and b (one seed's numbers from two runs) are bit for bit equal with the scalar CPU kernels,
    close within (rtol, atol) with the vectorised ones."""
    if EXACT:
        assert torch.equal(a, b), f"{msg}: max difference {(a.double() - b.double()).abs().max().item():.3g}"
    else:
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=msg)


# ------------------------------------------------------------------ data and trainers
def arrays(n: int = 500, obs_dim: int = 5, act_dim: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic transitions: normal states, uniform actions, normal rewards, 5% terminals."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    return dict(obs=obs, action=rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
                reward=rng.normal(size=n).astype(np.float32),
                next_obs=(obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32),
                terminal=rng.random(n) < 0.05)


def offline_data(a: dict, device="cpu", normalize: bool = False) -> tuple[OfflineData, np.ndarray, np.ndarray]:
    """The arrays as training tensors, states standardised or not, with the statistics used."""
    mean, std = state_normalizer(a["obs"], normalize)
    return OfflineData.from_arrays(**a, mean=mean, std=std, device=device), mean, std


def make_trainer(trainer_cls: type, build_nets: Callable, cfg, seeds: Sequence[int], a: dict, device="cpu",
                 use_window: bool | None = None):
    """An offline trainer on the arrays (states not normalised); `use_window` overrides the engine's choice."""
    data, mean, std = offline_data(a, device)
    t = trainer_cls(cfg, seeds, data, build_nets(cfg, seeds, a["obs"].shape[1], a["action"].shape[1], mean, std),
                    device)
    if use_window is not None:
        t.use_window = use_window
    return t


def train(algo, cfg, seeds: Sequence[int], a: dict, out: Path, normalize: bool | None = None, **kw):
    """(nets, result) of `algo.train` on the arrays, states standardised per `normalize`
    (default: cfg.normalize_states), quietly."""
    data, mean, std = offline_data(a, normalize=cfg.normalize_states if normalize is None else normalize)
    nets = algo.build_nets(cfg, seeds, a["obs"].shape[1], a["action"].shape[1], mean, std)
    return nets, algo.train(cfg, seeds, data, nets, out, log=lambda m: None, **kw)


def counting_evaluate(seeds: Sequence[int], calls: list) -> Callable:
    """A stand-in for `evaluate_policies`: records the nets it gets; its return is the call's number."""
    def evaluate(nets):
        calls.append(nets)
        return [SimpleNamespace(seed=s, return_mean=float(len(calls)), return_std=0.0, normalized_score=None,
                                nonfinite_actions=False) for s in seeds]
    return evaluate


def check_evaluates_every_eval_every(run: Callable):
    """run(evaluate) -> (nets, result) of a 12-step run of seeds [0, 1] with eval_every=5: the
    policies of `nets` are evaluated at steps 5, 10 and 12 (the last). Returns the result."""
    calls = []
    nets, result = run(counting_evaluate((0, 1), calls))
    assert result.evaluations.step.tolist() == [5, 5, 10, 10, 12, 12] and calls[0] is nets
    return result


# ------------------------------------------------------------------ the engine's contract
def assert_seed_matches_alone(together: dict, alone: dict) -> None:
    """Seed 7 of a [3, 7] run (index 1) has the parameters and buffers of a run of seed 7 alone,
    module by module (`assert_same_run`)."""
    for name, module in together.items():
        for kind in ("named_parameters", "named_buffers"):
            a, b = dict(getattr(module, kind)()), dict(getattr(alone[name], kind)())
            assert a.keys() == b.keys()
            for key in a:
                assert_same_run(a[key][1], b[key][0], f"{name}.{key}")


def check_seed_alone(run: Callable, modules: Callable, tmp_path: Path, distinct: str = "q1"):
    """run(seeds, out) -> nets trains seeds [3, 7] and [7]: seed 7 is the same in both, and the two
    seeds of the batch are different runs (first weights of `distinct` differ). Returns both nets."""
    together, alone = run([3, 7], tmp_path / "together"), run([7], tmp_path / "alone")
    assert_seed_matches_alone(modules(together), modules(alone))
    w = getattr(together, distinct).weights[0]
    assert not torch.allclose(w[0], w[1])
    return together, alone


def check_nan_is_isolated(result, nets_modules: dict, steps: int) -> None:
    """Seed 0's poisoned Q1 diverged at step 1 (not at a logged step); seed 1 stayed finite."""
    assert result.diverged_step == [1, None]
    for m in nets_modules.values():
        for p in m.parameters():
            assert torch.isfinite(p[1]).all()
    last = result.metrics[result.metrics.step == steps].set_index("seed")
    assert not math.isfinite(last.loc[0, "critic_loss"]) and math.isfinite(last.loc[1, "critic_loss"])


def check_divergence_step_is_exact(make: Callable, before: int = 7, after: int = 5) -> None:
    """A NaN put into seed 1's second critic after `before` steps is recorded at step before + 1,
    between logged steps, and the record survives a state round trip. make() -> a trainer of seeds [0, 1]."""
    t = make()
    for _ in range(before):
        t.step()
    assert t.first_nonfinite_steps() == [None, None]
    with torch.no_grad():
        t.nets.q2.weights[0][1].fill_(math.nan)
    for _ in range(after):
        t.step()
    assert t.first_nonfinite_steps() == [None, before + 1]
    other = make()
    other.load_state_dict(t.state_dict())
    assert other.first_nonfinite_steps() == [None, before + 1]


def check_windowed_matches_stepwise(make: Callable, steps: int, save_at: int, tmp_path: Path, tensors: Callable,
                                    at_step: Callable | None = None):
    """make(use_window) -> a trainer. Stepping with windows of pre-drawn inputs gives bitwise the
    step-by-step outputs (grad norms every third step) and final `tensors(trainer)`; after step
    `save_at` a fresh windowed trainer continues from the saved state. at_step(step, plain,
    windowed) checks more, before that. Returns both trainers."""
    plain, windowed = make(False), make(True)
    for step in range(1, steps + 1):
        a, b = plain.step(grad_norm=step % 3 == 0), windowed.step(grad_norm=step % 3 == 0)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), step
        if at_step is not None:
            at_step(step, plain, windowed)
        if step == save_at:
            torch.save(windowed.state_dict(), tmp_path / "s.pt")
            windowed = make(True)
            windowed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert all(torch.equal(x, y) for x, y in zip(tensors(plain), tensors(windowed), strict=True))
    return plain, windowed


def same_generators(a: dict, b: dict, keys=None) -> bool:
    """Whether two trainer states hold the same generator states (for `keys`, default all)."""
    return all(all(torch.equal(x, y) for x, y in zip(a["generators"][k], b["generators"][k]))
               for k in (a["generators"] if keys is None else keys))


def check_state_round_trip(make: Callable, before: int, after: int, tmp_path: Path, tensors: Callable) -> None:
    """A trainer saved after `before` steps and loaded into a fresh one continues identically for `after` steps."""
    straight = make()
    for _ in range(before):
        straight.step()
    torch.save(straight.state_dict(), tmp_path / "state.pt")
    restored = make()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for _ in range(after):
        a, b = straight.step(), restored.step()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(tensors(straight), tensors(restored), strict=True))


# ------------------------------------------------------------------ resume
class Killed(BaseException):
    """Stands in for SIGKILL inside the process: raised right after a resume state was saved."""


def killed_then_resumed(monkeypatch, run: Callable, resume: ResumeDir, kill_step: int | None = None):
    """run(resume) with the process 'killed' right after the resume state of step `kill_step` (None:
    the first state) is saved, then run(resume) again, which continues from it; its return."""
    save = ResumeDir.save

    def save_then_die(self, state):
        save(self, state)
        if kill_step is None or state["step"] == kill_step:
            raise Killed

    monkeypatch.setattr(ResumeDir, "save", save_then_die)
    with pytest.raises(Killed):
        run(resume)
    monkeypatch.setattr(ResumeDir, "save", save)
    return run(resume)


def graphed_run_killed_and_resumed(run: Callable, monkeypatch, tmp_path: Path, kill_step: int = 50):
    """run(out, resume, log) -> (result, nets), training on CUDA: a reference run, whose update
    step must be the CUDA graph, then a run killed right after the resume state of step
    `kill_step` and resumed from it. Returns (reference, ref_nets), (result, nets)."""
    messages = []
    reference = run(tmp_path / "ref", None, messages.append)
    assert "update step: CUDA graph" in messages
    resume = ResumeDir(tmp_path / "resume", {"test": 1})
    resumed = killed_then_resumed(monkeypatch, lambda r: run(tmp_path / "out", r, messages.append), resume, kill_step)
    assert resumed[0].resumed_from_step == kill_step
    return reference, resumed


# ------------------------------------------------------------------ CUDA
def max_rel_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)) for x, y in zip(a, b))


def run_graphed_and_eager(make: Callable, steps: int = 200, on_step: Callable | None = None):
    """make(graph) -> a trainer; both step `steps` times (grad norms every tenth) with the same
    outputs' keys; on_step(step, eager, graphed) after each. Returns (eager, graphed)."""
    eager, graphed = make(False), make(True)
    assert graphed.graphed and not eager.graphed
    for step in range(1, steps + 1):
        a, b = eager.step(grad_norm=step % 10 == 0), graphed.step(grad_norm=step % 10 == 0)
        assert a.keys() == b.keys(), step
        if on_step is not None:
            on_step(step, eager, graphed)
    return eager, graphed


def check_compiled_update_matches_eager(make: Callable, params: Callable, steps: int = 6,
                                        rtol: float = 1e-4) -> float:
    """make(compile_update) -> a trainer, params(trainer) -> its tensors: the update step through
    torch.compile (`compile_update`) compiles (no fallback to the plain step), says so in the
    trainer's mode, and follows the eager step to rounding: after the first step every tensor is
    within `rtol` of its largest entry, and at every one of `steps` steps (grad norms on the
    third) each reported number (losses, Q) is within `rtol` of the eager one. Returns the
    parameters' drift after the last step, not checked: fused kernels round differently and
    training amplifies it (on an H200, 2e-6 after one TD3+BC step, 6e-5 after 10, 1e-2 after 50,
    while the losses still agree to 5 digits)."""
    eager, compiled = make(False), make(True)
    assert "update compiled" in compiled.mode and "update compiled" not in eager.mode
    for step in range(1, steps + 1):
        a, b = eager.step(grad_norm=step == 3), compiled.step(grad_norm=step == 3)
        assert a.keys() == b.keys(), step
        for k in a:
            x, y = torch.as_tensor(b[k]).float(), torch.as_tensor(a[k]).float()
            assert max_rel_diff([x], [y]) < rtol, (step, k, x, y)
        if step == 1:
            first = max_rel_diff(params(compiled), params(eager))
            assert first < rtol, first
    assert compiled._update._compiled not in (None, False), "the compiled step fell back to the plain one"
    drift = max_rel_diff(params(compiled), params(eager))
    return drift


# ------------------------------------------------------------------ more of the contract
def check_same_seed_same_result(run: Callable, modules: Callable, tmp_path: Path):
    """run(seeds, out) -> (nets, result): two runs of seeds [1, 2] give bitwise the same networks
    and metrics. Returns both (nets, result)."""
    import pandas as pd

    (a, ra), (b, rb) = run([1, 2], tmp_path / "a"), run([1, 2], tmp_path / "b")
    for name, m in modules(a).items():
        for pa, pb in zip(m.parameters(), modules(b)[name].parameters(), strict=True):
            assert torch.equal(pa, pb), name
    pd.testing.assert_frame_equal(ra.metrics, rb.metrics, check_exact=True)
    return (a, ra), (b, rb)


def check_grad_norms_are_applied(t, groups: dict) -> None:
    """With SGD a step moves the parameters by exactly lr * gradient: each logged gradient norm
    (key -> (modules, lr)) is the norm of the gradient applied, and only computed when asked for."""
    from seemrl.training.nets import per_seed_norm

    snap = lambda mods: [p.detach().clone() for m in mods for p in m.parameters()]  # noqa: E731
    before = {key: snap(mods) for key, (mods, _) in groups.items()}
    out = t.step(grad_norm=True)
    for key, (mods, lr) in groups.items():
        moved = per_seed_norm([(a - b) / lr for a, b in zip(snap(mods), before[key])])
        torch.testing.assert_close(out[key], moved, rtol=1e-4, atol=1e-6)
    assert not set(groups) & set(t.step())


def check_bad_checkpoint_is_named(load: Callable, tmp_path: Path, name: str = "step_00000010.pt") -> None:
    bad = tmp_path / name
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=name):
        load(bad)


def prepared(t, cfg, device="cpu"):
    """A transition table prepared as `seemrl train` prepares it for `cfg`: (the training tensors,
    `seemrl.data.preparation.Prepared`)."""
    import dataclasses

    from seemrl.data.preparation import prepare

    p = prepare(t, dataclasses.asdict(cfg))
    return OfflineData.from_prepared(p, device), p


def check_twin_critics_joined_train_as_apart(make: Callable, trainer_cls: type, modules: Sequence[str], monkeypatch,
                                             steps: int = 7) -> None:
    """The twin critics held as one stack of 2S members (`CriticTrainer.join_critics`: one batched
    matmul per layer for both) train as two separate stacks: on the CPU the metrics and every
    network's weights and buffers (BatchNorm statistics) are equal bit for bit after `steps`
    steps. q1 and q2 stay views of the joined stack, so checkpoints, SEEM and evaluation read
    them as before."""
    joined = make()
    assert joined.twin is not None
    n = joined.S
    assert joined.nets.q2.weights[0].data_ptr() == joined.twin.joined.weights[0][n:].data_ptr()
    monkeypatch.setattr(trainer_cls, "join_critics", lambda self: None)
    apart = make()
    assert apart.twin is None
    for _ in range(steps):
        m1, m2 = joined.step(grad_norm=True), apart.step(grad_norm=True)
        assert all(torch.equal(m1[k], m2[k]) for k in m2), [k for k in m2 if not torch.equal(m1[k], m2[k])]
    for name in modules:
        a, b = getattr(joined.nets, name).state_dict(), getattr(apart.nets, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b), name
