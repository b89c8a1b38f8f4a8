"""Four concurrent `seemrl train` jobs on a multi-GPU host each lease their own GPU (issue 7).

Run on a host with 4 GPUs: `python benchmarks/multi_gpu_lease.py`; prints each run.json device entry and what
nvidia-smi saw while the jobs ran. Working files go to .cache/multi_gpu_lease; a copy of the runs to $OUT if set."""
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, "src")
from seemrl.data.transitions import Transitions, write_transitions

BASE = os.path.abspath(".cache/multi_gpu_lease")
os.makedirs(BASE, exist_ok=True)
out = os.environ.get("OUT")
n = 100_000
rng = np.random.default_rng(0)
obs = rng.normal(size=(n, 17)).astype(np.float32)
t = Transitions(obs=obs, action=rng.uniform(-1, 1, (n, 6)).astype(np.float32), reward=rng.normal(size=n).astype(np.float32),
                next_obs=obs + 0.01, terminal=rng.random(n) < 0.01, timeout=np.zeros(n, bool),
                episode_id=np.arange(n) // 1000, step=(np.arange(n) % 1000).astype(np.int32),
                meta={"name": "synthetic", "env_id": "none", "source": "test"})
write_transitions(f"{BASE}/data.parquet", t)
params = json.dumps({"steps": 20000, "checkpoint_every": 5000, "log_every": 1000, "tau": 0.005, "bc_weight": 1.0})
procs = []
start = time.time()
for norm in ("none", "ln", "ln2", "ln3"):
    d = f"{BASE}/runs/{norm}"
    os.makedirs(d, exist_ok=True)
    cmd = [sys.executable, "-m", "seemrl", "train", "--data", f"{BASE}/data.parquet", "--params", params, "--seeds", "0,1,2,3",
           "--device", "auto", "--lease-dir", f"{BASE}/leases", "--checkpoints", f"{d}/ckpt", "--metrics", f"{d}/m.parquet",
           "--run", f"{d}/run.json", "--label", f"norm={norm}"]
    procs.append(subprocess.Popen(cmd, stdout=open(f"{d}/log", "w"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": "src"}))
# while they run, what nvidia-smi sees
time.sleep(15)
def smi_query(*args):
    try:
        return subprocess.run(["nvidia-smi", *args, "--format=csv,noheader"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return "(no nvidia-smi)\n"
smi = smi_query("--query-compute-apps=pid,gpu_bus_id,used_memory")
bus = smi_query("--query-gpu=index,gpu_bus_id")
for p in procs:
    p.wait()
print(f"4 jobs done in {time.time() - start:.0f} s, return codes {[p.returncode for p in procs]}")
print("GPUs:\n" + bus + "processes on GPUs while running (pid, bus, memory):\n" + smi)
for norm in ("none", "ln", "ln2", "ln3"):
    d = f"{BASE}/runs/{norm}"
    try:
        r = json.load(open(f"{d}/run.json"))
        print(norm, "pid-less record:", json.dumps(r["device"]), "seed-steps/s", round(r["seed_steps_per_second"] or 0))
    except Exception as e:
        print(norm, "no run.json:", e, open(f"{d}/log").read()[-1500:])
if out:
    subprocess.run(f"cp -r {BASE}/runs {out}/runs; rm -f {out}/runs/*/ckpt/*.pt", shell=True)
