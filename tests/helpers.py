"""What the tests share: project copies, the Snakemake runner and its job counts, a local HTTP
file server, and small datasets. One module, imported by the tests (`conftest.py` turns the
server into the `http_server` fixture)."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import yaml

from seemrl.data.transitions import COLUMNS, Transitions, write_transitions

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"
DEFAULT_CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
# what a project is made of (the DVC files too); the package and workflow are always copied
PROJECT_FILES = ("Snakefile", "workflow", "src", "profiles", "envs", "config", "dvc.yaml", ".dvc/config",
                 ".dvc/.gitignore", ".dvcignore", ".gitignore")


# ------------------------------------------------------------------ projects and Snakemake
def project_copy(dest: Path, names=("Snakefile", "workflow", "src", "profiles", "envs"),
                 config: dict | None = None) -> Path:
    """The project's files `names` copied to `dest` (mtimes kept; tests that edit code or run
    the workflow must not touch ours), with `config` as config/config.yaml if given; returns the
    copy's Snakefile."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, dst = ROOT / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    if config is not None:
        (dest / "config").mkdir(exist_ok=True)
        (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return dest / "Snakefile"


def snakemake(workdir: Path, config: dict, *args: str, check: bool = True,
              snakefile: Path = SNAKEFILE) -> subprocess.CompletedProcess:
    """Run the project's Snakefile in `workdir` with `config` as its config/config.yaml."""
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    # the registry, the checksum lock and the paper's numbers
    for name in ("datasets.yaml", "datasets.lock.json", "paper/paper_results.yaml"):
        if not (workdir / "config" / name).exists():
            (workdir / "config" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "config" / name, workdir / "config" / name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), "--cores", "2", *args],
        capture_output=True, text=True, env=env, timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run as {rule: count}; {} when there is nothing to do."""
    if "Job stats:" not in output:
        assert "Nothing to be done" in output, output[-3000:]
        return {}
    table = re.split(r"^total\s+\d+", output.split("Job stats:")[1], maxsplit=1, flags=re.M)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def training_jobs(counts: dict[str, int]) -> int:
    """Offline training jobs of a (dry) run: one per cell (`train`) or per group of cells trained together."""
    return counts.get("train", 0) + sum(v for k, v in counts.items() if k.startswith("train_together_"))


def venv_env(base: dict | None = None) -> dict:
    """The environment with this interpreter's bin first on PATH (what jobs run `python` from)."""
    base = dict(os.environ if base is None else base)
    return dict(base, PATH=f"{Path(sys.executable).parent}{os.pathsep}{base['PATH']}")


TINY = copy.deepcopy(DEFAULT_CONFIG)
TINY["recipes"]["demo"].update(sac_steps=300, learning_starts=100, snapshot_every=100, eval_episodes=1,
                               n_transitions=400)
TINY["algorithms"]["td3_seem"].update(steps=30, batch_size=32, hidden=[32, 32], checkpoint_every=10, log_every=5)
TINY["experiment"]["percents"] = [50, 100]
TINY["analysis"]["seem_samples"] = 16
TINY["theory"] = {"toy": {"seem_every": 5}, "ntk_map": {"hidden": 256, "resolution": 21},
                  "baird": {"steps": 500}, "homogeneity": {"hidden": [32, 32], "n_inputs": 16}}


PAPER_CONFIGS = {  # config -> (target, training jobs, SEEM jobs, online jobs, theory jobs)
    "table1.yaml": ("all", 4, 6 * 4, 0, 0),  # each algorithm's mazes in one job (Diffusion-QL's: one per critic)
    "xpercent.yaml": ("all", 9 * 4 * 4 * 2, 9 * 4 * 4 * 2, 0, 0),
    "seem_figures.yaml": ("all", 5 * 2 * 2 + 5, 5 * 2 * 2 + 5, 0, 0),
    "normalizations.yaml": ("all", 2 * 10 + 3 * 9 + 4, 2 * 10 + 3 * 9 + 4, 0, 0),
    "ablation.yaml": ("all", 9 * 2 * 4, 9 * 2 * 4, 0, 0),
    "online_sac.yaml": ("all", 0, 0, 2 * 3, 0),
    "theory.yaml": ("all", 0, 0, 0, 4),
    "evidence.yaml": ("all", 3 * 2 * 2 + 2 * 2, 3 * 3 * 2 * 2 + 2 * 2, 0, 0),  # the X% cells: 3 per job
}


_OFFLINE = {"report_tables": 1, "predictions": 1, "claims": 1, "plot_growth": 1}
_EVALUATED = {**_OFFLINE, "report_scores": 1}
# config -> (report jobs, artefacts its dry run must name): what each paper config's report makes
PAPER_REPORTS = {
    "table1.yaml": ({**_EVALUATED, "plot_seem_q": 6, "plot_curves": 6, "paper_table": 1},
                    ["results/report/tables/table1.md", "results/report/tables/table1.tex",
                     "results/report/curves/antmaze-large-diverse-v0.png", "results/report/claims.md"]),
    "xpercent.yaml": ({**_EVALUATED, "plot_seem_q": 9, "plot_curves": 9, "report_totals": 1, "plot_totals": 1},
                      ["results/report/totals/fig8.png", "results/report/totals/fig8_tasks.png",
                       "results/report/totals/fig8_profiles.png", "results/report/totals/fig8_profile.csv",
                       "results/report/totals/fig8.pdf", "results/report/curves/hopper-medium-v2.png"]),
    "seem_figures.yaml": ({**_OFFLINE, "plot_seem_q": 5, "plot_seem_vs_gamma": 1},
                          ["results/report/seem_q/hopper-medium-v2.png", "results/report/seem_vs_gamma.png"]),
    "normalizations.yaml": ({**_EVALUATED, "plot_seem_q": 7, "plot_curves": 4, "paper_table": 3},
                            ["results/report/tables/table2.md", "results/report/tables/table4.md",
                             "results/report/tables/table5.md", "results/report/seem_q/walker2d-medium-v2.png"]),
    "ablation.yaml": ({**_EVALUATED, "plot_seem_q": 9, "plot_curves": 9, "report_totals": 1, "plot_totals": 1},
                      ["results/report/totals/fig12.png"]),
    "online_sac.yaml": ({"report_online": 1, "claims": 1}, ["results/report/online_sac.png", "results/report/claims.md"]),
    "theory.yaml": ({"claims": 1}, ["results/report/claims.csv"]),
    "evidence.yaml": ({**_EVALUATED, "plot_seem_q": 3, "plot_curves": 3, "report_totals": 1, "plot_totals": 1},
                      ["results/report/totals/evidence.png", "results/report/curves/ev-walker2d-medium.png",
                       "results/report/seem_q/ev-hopper-medium.png", "results/report/claims.md"]),
}


# ------------------------------------------------------------------ an HTTP file server on 127.0.0.1
class FileServer:
    """Serves files from `root` over HTTP on 127.0.0.1, with Range support and fault switches.

    cut_after: end the next response after this many body bytes (once), as a dropped link does.
    ignore_range: answer every request with 200 and the whole file.
    replace: url path -> bytes to serve instead of the file (wrong content).
    requests: (method, path, Range header) of every request, for assertions.
    """

    def __init__(self, root: Path):
        self.root = root
        self.cut_after: int | None = None
        self.ignore_range = False
        self.replace: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.file_server = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def content(self, url_path: str) -> bytes | None:
        if url_path in self.replace:
            return self.replace[url_path]
        file = self.root / url_path.lstrip("/")
        return file.read_bytes() if file.is_file() else None

    def gets(self) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET"]


class _Handler(BaseHTTPRequestHandler):
    def do_HEAD(self):
        self._serve(send_body=False)

    def do_GET(self):
        self._serve(send_body=True)

    def _serve(self, send_body: bool):
        state: FileServer = self.server.file_server
        range_header = self.headers.get("Range")
        state.requests.append((self.command, self.path, range_header))
        data = state.content(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if range_header and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not send_body:
            return
        if state.cut_after is not None:
            body, state.cut_after = body[: state.cut_after], None
            self.close_connection = True  # the client sees fewer bytes than Content-Length
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(server: FileServer, rel: str, data: bytes) -> str:
    file = server.root / rel
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)
    return f"{server.url}/{rel}"


def payload(n=100_000, seed=0) -> bytes:
    return bytes((i * 7 + seed + i // 251) % 256 for i in range(n))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quiet(msg):
    pass


# ------------------------------------------------------------------ datasets
def make_transitions(episode_lengths=(5, 3, 4), obs_dim=3, act_dim=2, seed=0) -> Transitions:
    """Episodes with consistent next_obs chains; every episode but the last terminates,
    the last times out."""
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in COLUMNS}
    for ep, length in enumerate(episode_lengths):
        states = rng.normal(size=(length + 1, obs_dim)).astype(np.float32)
        cols["obs"].append(states[:-1])
        cols["next_obs"].append(states[1:])
        cols["action"].append(rng.uniform(-1, 1, (length, act_dim)).astype(np.float32))
        cols["reward"].append(np.full(length, ep + 1, np.float32))
        end = np.zeros(length, bool)
        end[-1] = True
        last = ep == len(episode_lengths) - 1
        cols["terminal"].append(end & (not last))
        cols["timeout"].append(end & last)
        cols["episode_id"].append(np.full(length, ep))
        cols["step"].append(np.arange(length))
    meta = {"name": "toy", "env_id": "Toy-v0", "source": "test", "ref_min_score": 0.0,
            "ref_max_score": 10.0, "ref_source": "made up"}
    return Transitions(**{k: np.concatenate(v) for k, v in cols.items()}, meta=meta)


# a tiny Hopper-shaped training table and a `seemrl train` command line over it
TRAIN_PARAMS = dict(steps=400, batch_size=32, hidden=[16, 16], checkpoint_every=50, log_every=25,
              eval_every=100, eval_episodes=2)


def train_dataset(path: Path, seed: int = 0, n: int = 400) -> Path:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 11)).astype(np.float32)
    write_transitions(path, Transitions(
        obs=obs, action=rng.uniform(-1, 1, (n, 3)), reward=rng.normal(size=n),
        next_obs=obs + 0.1 * rng.normal(size=obs.shape), terminal=rng.random(n) < 0.05,
        timeout=np.zeros(n, bool), episode_id=np.arange(n) // 50, step=np.arange(n) % 50,
        meta={"name": "tiny", "env_id": "Hopper-v5", "eval_env_id": "Hopper-v5", "source": "test",
              "ref_min_score": -20.272305, "ref_max_score": 3234.3}))
    return path


def train_args(data: Path, out: Path, resume: Path | None, params=TRAIN_PARAMS, seeds="0,1") -> list[str]:
    args = ["train", "--data", str(data), "--params", json.dumps(params), "--seeds", seeds,
            "--device", "cpu", "--threads", "1", "--checkpoints", str(out / "checkpoints"),
            "--metrics", str(out / "metrics.parquet"), "--evaluations", str(out / "evaluations.parquet"),
            "--run", str(out / "run.json")]
    return args + (["--resume-dir", str(resume)] if resume else [])


