"""JAX peer: TD3+BC and IQL written the way a strong JAX user writes them, against seemrl's
stacked trainer, seed-steps/s side by side in one run on one device (issue 17).

The JAX side (JAX-CORL style, no framework): every network's parameters a pytree with a leading
seed axis, the twin critics a second stacked axis; one `jax.jit`-compiled function runs K updates
with `lax.scan` and `vmap`s them over seeds; the data lives on the device and each update draws its
minibatch indices there (`jax.random`, one key per seed); Adam written out; the buffers of the
training state donated to the call. TD3+BC's scan body is two updates (the critic alone, then the
critic, the actor and the targets), so its policy delay of 2 costs no branch. IQL's step is the
original's order (V, actor with a cosine learning rate, Q, target EMA). Both at the sizes of
`train_throughput.py`: obs 17, act 6, hidden 256-256, batch 256, 1M synthetic transitions.

Precision: both sides run their float32 matmuls in TF32 (`--precision tf32`, the default: seemrl's
`matmul_precision`, JAX's `jax_default_matmul_precision="tensorfloat32"`) or in full float32
(`ieee`). Each side's setting is checked: a 512 x 512 product's error against float64 reads
TF32-like (~1e-3 relative) or IEEE-like (~1e-6), and the table says what each side measured.

    python benchmarks/jax_peer.py                     # GPU: S = 1, 10, 40, critic without/with LN
    python benchmarks/jax_peer.py --tiny              # CPU smoke run (tests keep it working)

JAX is a benchmark-only dependency (the GPU machines have it; here: `pip install --target .jax
jax`, then PYTHONPATH=.jax); without it the script says so and exits 0 (the tests skip).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

OBS, ACT = 17, 6
ALGOS = ("td3bc", "iql")


# ------------------------------------------------------------------ precision check
def matmul_error(matmul) -> float:
    """Relative error of a 512 x 512 float32 product (by `matmul`) against float64."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(512, 512)).astype(np.float32), rng.normal(size=(512, 512)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    return float(np.abs(np.asarray(matmul(a, b), np.float64) - exact).max() / np.abs(exact).max())


def precision_name(err: float) -> str:
    return f"TF32-like ({err:.0e})" if err > 1e-4 else f"IEEE-like ({err:.0e})"


# ------------------------------------------------------------------ JAX networks and Adam
def jax_side(hidden: tuple[int, ...], layer_norm: bool, batch: int):
    import jax
    import jax.numpy as jnp

    def init_mlp(key, i, o, ln):
        params, d = [], i
        for h in (*hidden, o):
            key, k1, k2 = jax.random.split(key, 3)
            bound = 1 / math.sqrt(d)
            layer = {"w": jax.random.uniform(k1, (d, h), minval=-bound, maxval=bound),
                     "b": jax.random.uniform(k2, (h,), minval=-bound, maxval=bound)}
            if ln and h != o:
                layer.update(g=jnp.ones(h), beta=jnp.zeros(h))
            params.append(layer)
            d = h
        return params

    def mlp(params, x):
        for layer in params[:-1]:
            x = x @ layer["w"] + layer["b"]
            if "g" in layer:
                mu = x.mean(-1, keepdims=True)
                var = ((x - mu) ** 2).mean(-1, keepdims=True)
                x = (x - mu) * jax.lax.rsqrt(var + 1e-5) * layer["g"] + layer["beta"]
            x = jax.nn.relu(x)
        return x @ params[-1]["w"] + params[-1]["b"]

    def adam_init(p):
        zeros = jax.tree.map(jnp.zeros_like, p)
        return {"m": zeros, "v": jax.tree.map(jnp.zeros_like, p), "t": jnp.zeros((), jnp.int32)}

    def adam(p, grads, state, lr, b1=0.9, b2=0.999, eps=1e-8):
        t = state["t"] + 1
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        p = jax.tree.map(lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), p, m, v)
        return p, {"m": m, "v": v, "t": t}

    def twin(key, i):  # the two critics stacked on a leading axis
        return jax.vmap(lambda k: init_mlp(k, i, 1, layer_norm))(jax.random.split(key, 2))

    def q_twin(params, x):
        return jax.vmap(mlp, in_axes=(0, None))(params, x)[..., 0]  # [2, B]

    def sample(key, data):
        idx = jax.random.randint(key, (batch,), 0, data["obs"].shape[0])
        return {k: v[idx] for k, v in data.items()}

    polyak = lambda tgt, p, tau: jax.tree.map(lambda t, q: t + tau * (q - t), tgt, p)  # noqa: E731
    return jax, jnp, init_mlp, mlp, adam_init, adam, twin, q_twin, sample, polyak


def td3bc_program(hidden, layer_norm, batch, steps_per_call, policy_noise: float = 0.2):
    """init(key) -> state of one seed; run(states, data) -> states after `steps_per_call` updates of
    every seed (vmapped, jitted, state donated); critic_step(state, batch, eps) and
    actor_step(state, batch), one seed's parts (the tests compare them with plain PyTorch)."""
    jax, jnp, init_mlp, mlp, adam_init, adam, twin, q_twin, sample, polyak = jax_side(hidden, layer_norm, batch)
    gamma, tau, noise, clip, alpha, lr = 0.99, 0.005, policy_noise, 0.5, 2.5, 3e-4

    def init(key):
        ka, kq, kr = jax.random.split(key, 3)
        actor, critic = init_mlp(ka, OBS, ACT, False), twin(kq, OBS + ACT)
        return {"actor": actor, "critic": critic, "actor_t": actor, "critic_t": critic,
                "opt_a": adam_init(actor), "opt_c": adam_init(critic), "key": kr}

    def critic_step(st, b, eps):
        a2 = jnp.clip(jnp.tanh(mlp(st["actor_t"], b["next_obs"])) + eps, -1, 1)
        q_next = q_twin(st["critic_t"], jnp.concatenate([b["next_obs"], a2], -1)).min(0)
        y = b["reward"] + gamma * b["not_done"] * q_next
        x = jnp.concatenate([b["obs"], b["action"]], -1)
        loss = lambda c: ((q_twin(c, x) - jax.lax.stop_gradient(y)) ** 2).mean(1).sum()  # noqa: E731
        critic, opt_c = adam(st["critic"], jax.grad(loss)(st["critic"]), st["opt_c"], lr)
        return {**st, "critic": critic, "opt_c": opt_c}

    def actor_step(st, b):
        def loss(actor):
            pi = jnp.tanh(mlp(actor, b["obs"]))
            q = q_twin(st["critic"], jnp.concatenate([b["obs"], pi], -1))[0]
            lam = alpha / jax.lax.stop_gradient(jnp.abs(q).mean())
            return -lam * q.mean() + ((pi - b["action"]) ** 2).mean()
        actor, opt_a = adam(st["actor"], jax.grad(loss)(st["actor"]), st["opt_a"], lr)
        return {**st, "actor": actor, "opt_a": opt_a, "actor_t": polyak(st["actor_t"], actor, tau),
                "critic_t": polyak(st["critic_t"], st["critic"], tau)}

    def smoothing(key):
        return jnp.clip(noise * jax.random.normal(key, (batch, ACT)), -clip, clip)

    def two_updates(st, data):
        key, k1, k2, k3, k4 = jax.random.split(st["key"], 5)
        st = critic_step({**st, "key": key}, sample(k1, data), smoothing(k2))
        b = sample(k3, data)
        return actor_step(critic_step(st, b, smoothing(k4)), b)

    def run_one(st, data):
        return jax.lax.scan(lambda s, _: (two_updates(s, data), None), st, None, length=steps_per_call // 2)[0]

    run = jax.jit(jax.vmap(run_one, in_axes=(0, None)), donate_argnums=0)
    return SimpleNamespace(init=init, run=run, critic_step=critic_step, actor_step=actor_step)


def iql_program(hidden, layer_norm, batch, steps_per_call, total_steps=1_000_000):
    """As `td3bc_program`; update_on(state, batch) is one seed's update on a given minibatch."""
    jax, jnp, init_mlp, mlp, adam_init, adam, twin, q_twin, sample, polyak = jax_side(hidden, layer_norm, batch)
    gamma, tau, expectile, beta, clip_w, lr = 0.99, 0.005, 0.7, 3.0, 100.0, 3e-4

    def init(key):
        ka, kq, kv, kr = jax.random.split(key, 4)
        actor = {"mean": init_mlp(ka, OBS, ACT, False), "log_std": jnp.zeros(ACT)}
        critic, value = twin(kq, OBS + ACT), init_mlp(kv, OBS, 1, layer_norm)
        return {"actor": actor, "critic": critic, "critic_t": critic, "value": value, "opt_a": adam_init(actor),
                "opt_c": adam_init(critic), "opt_v": adam_init(value), "step": jnp.zeros((), jnp.int32), "key": kr}

    def update(st, data):
        key, k1 = jax.random.split(st["key"])
        return {**update_on(st, sample(k1, data)), "key": key}

    def update_on(st, b):
        x = jnp.concatenate([b["obs"], b["action"]], -1)
        q_t = q_twin(st["critic_t"], x).min(0)

        def v_loss(v):
            u = q_t - mlp(v, b["obs"])[:, 0]
            return (jnp.abs(expectile - (u < 0)) * u ** 2).mean()
        value, opt_v = adam(st["value"], jax.grad(v_loss)(st["value"]), st["opt_v"], lr)
        w = jnp.minimum(jnp.exp(beta * (q_t - mlp(value, b["obs"])[:, 0])), clip_w)

        def a_loss(actor):
            mean = jnp.tanh(mlp(actor["mean"], b["obs"]))
            log_std = jnp.clip(actor["log_std"], -5.0, 2.0)
            z = (b["action"] - mean) / jnp.exp(log_std)
            logp = (-0.5 * z ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
            return -(w * logp).mean()
        lr_a = lr * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(st["step"], total_steps) / total_steps))
        actor, opt_a = adam(st["actor"], jax.grad(a_loss)(st["actor"]), st["opt_a"], lr_a)
        y = b["reward"] + gamma * b["not_done"] * mlp(value, b["next_obs"])[:, 0]
        q_loss = lambda c: ((q_twin(c, x) - y) ** 2).mean(1).sum()  # noqa: E731
        critic, opt_c = adam(st["critic"], jax.grad(q_loss)(st["critic"]), st["opt_c"], lr)
        return {**st, "actor": actor, "critic": critic, "value": value, "opt_a": opt_a, "opt_c": opt_c, "opt_v": opt_v,
                "critic_t": polyak(st["critic_t"], critic, tau), "step": st["step"] + 1}

    def run_one(st, data):
        return jax.lax.scan(lambda s, _: (update(s, data), None), st, None, length=steps_per_call)[0]

    run = jax.jit(jax.vmap(run_one, in_axes=(0, None)), donate_argnums=0)
    return SimpleNamespace(init=init, run=run, update_on=update_on)


def jax_rate(algo: str, hidden, layer_norm: bool, seeds: int, data_np: dict, steps_per_call: int, calls: int) -> float:
    """Seed-steps/s of the JAX program: one warm-up call (compilation), then `calls` timed calls."""
    import jax

    program = td3bc_program if algo == "td3bc" else iql_program
    prog = program(hidden, layer_norm, 256, steps_per_call)
    init, run = prog.init, prog.run
    data = {k: jax.device_put(v) for k, v in data_np.items()}
    states = jax.vmap(init)(jax.random.split(jax.random.PRNGKey(0), seeds))
    states = jax.tree.map(lambda x: x.copy(), states)  # targets start as copies: no buffer twice in a donation
    states = jax.block_until_ready(run(states, data))
    start = time.perf_counter()
    for _ in range(calls):
        states = run(states, data)
    jax.block_until_ready(states)
    return seeds * steps_per_call * calls / (time.perf_counter() - start)


# ------------------------------------------------------------------ seemrl
def seemrl_rate(algo: str, hidden, norm: str, seeds: int, device, precision: str, iters: int,
                compiled: bool = False) -> float:
    from common import offline_data, peer_trainer, steps_per_second

    data = SEEMRL_DATA.setdefault(str(device), offline_data(DATA_N, OBS, ACT, device))
    trainer = peer_trainer(algo, hidden, norm, seeds, device, data, OBS, ACT, compiled=compiled,
                           graph=device.type == "cuda", precision=precision)
    return seeds * steps_per_second(trainer.step, device, warmup=10, iters=iters)


SEEMRL_DATA: dict = {}
DATA_N = 1_000_000


def main() -> None:
    global DATA_N
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU, hidden 32-32, S = 1, 2, few steps (smoke run)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seed counts S (default 1 10 40)")
    p.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    p.add_argument("--norms", nargs="+", choices=("none", "layernorm"), default=["none", "layernorm"])
    p.add_argument("--precision", choices=("tf32", "ieee"), default="tf32")
    p.add_argument("--steps-per-call", type=int, default=None, help="K: updates per jitted call (default 1000)")
    p.add_argument("--calls", type=int, default=None, help="timed JAX calls (default 3)")
    p.add_argument("--iters", type=int, default=None, help="timed seemrl steps (default 2000)")
    p.add_argument("--compile-update", action="store_true",
                   help="also time seemrl with its update step through torch.compile (`compile_update`)")
    a = p.parse_args()
    try:
        import jax
    except ImportError as exc:
        print(f"JAX is not importable ({exc}): the JAX peer is skipped (install jax in a benchmark-only path)")
        return
    import torch

    from seemrl.training.devices import matmul_precision

    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if a.precision == "tf32" else "float32")
    tiny = a.tiny
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    if tiny:
        jax.config.update("jax_platforms", "cpu")
        torch.set_num_threads(1)
    hidden = (32, 32) if tiny else (256, 256)
    seed_counts = a.seeds or ([1, 2] if tiny else [1, 10, 40])
    k = a.steps_per_call or (10 if tiny else 1000)
    calls, iters = a.calls or (2 if tiny else 3), a.iters or (20 if tiny else 2000)
    DATA_N = 10_000 if tiny else 1_000_000
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(DATA_N, OBS)).astype(np.float32)
    data_np = {"obs": obs, "action": rng.uniform(-1, 1, (DATA_N, ACT)).astype(np.float32),
               "reward": rng.normal(size=DATA_N).astype(np.float32), "next_obs": obs + np.float32(0.01),
               "not_done": (rng.random(DATA_N) >= 0.01).astype(np.float32)}

    jax_err = matmul_error(lambda x, y: jax.numpy.asarray(x) @ jax.numpy.asarray(y))
    with matmul_precision(a.precision):
        torch_err = matmul_error(
            lambda x, y: (torch.as_tensor(x, device=device) @ torch.as_tensor(y, device=device)).cpu().numpy())
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}, jax {jax.__version__} ({jax.devices()[0].platform}); "
          f"hidden {hidden}, batch 256, {DATA_N:,} transitions; asked: {a.precision}; measured: seemrl "
          f"{precision_name(torch_err)}, JAX {precision_name(jax_err)}")
    print(f"JAX: K = {k} updates per jitted call, {calls} timed calls after one (compiling); seemrl: {iters} "
          f"timed steps after 10{' (CUDA graph)' if device.type == 'cuda' else ''}")
    extra = " | seemrl, update compiled | compiled / JAX" if a.compile_update else ""
    print(f"\n| algorithm | critic | seeds | seemrl seed-steps/s | JAX seed-steps/s | seemrl / JAX{extra} |")
    print("|---|---|---:|---:|---:|---:|" + ("---:|---:|" if a.compile_update else ""))
    for algo in a.algos:
        for norm in a.norms:
            for s in seed_counts:
                with matmul_precision(a.precision):
                    ours = seemrl_rate(algo, hidden, norm, s, device, a.precision, iters)
                    fused = seemrl_rate(algo, hidden, norm, s, device, a.precision, iters, True) \
                        if a.compile_update else None
                theirs = jax_rate(algo, hidden, norm == "layernorm", s, data_np, k, calls)
                more = f" | {fused:,.0f} | {fused / theirs:.2f}x" if fused is not None else ""
                print(f"| {algo} | {norm} | {s} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x{more} |", flush=True)


if __name__ == "__main__":
    main()
