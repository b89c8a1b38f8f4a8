"""The data rule family end to end through Snakemake for the sources a hub would serve: an
original D4RL file from an HTTP server on 127.0.0.1, and a pre-seeded Minari store."""
import copy
import json

import h5py
import numpy as np
import pandas as pd
import pytest
from helpers import ROOT, TINY, job_counts, snakemake

from seemrl.data.minari_source import collect_episodes, write_minari_dataset


def _d4rl_file(path, n=300):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 11)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, size=(n, 3)).astype(np.float32)
        f["rewards"] = rng.normal(size=n).astype(np.float32)
        f["terminals"] = np.arange(n) % 70 == 69
        f["timeouts"] = np.arange(n) % 100 == 99


@pytest.mark.slow
def test_d4rl_source_downloads_records_lock_and_tables(http_server, tmp_path):  # noqa: F811
    served = http_server.root / "gym_mujoco_v2" / "hopper_medium-v2.hdf5"
    served.parent.mkdir(parents=True)
    _d4rl_file(served)
    config = copy.deepcopy(TINY)
    config["data"]["d4rl_base_url"] = http_server.url
    config["experiment"]["datasets"] = ["hopper-medium-v2"]
    work = tmp_path / "work"
    target = "resources/datasets/hopper-medium-v2/subset-50pct.parquet"
    snakemake(work, config, target)

    lock = json.loads((work / "config" / "datasets.lock.json").read_text())
    assert list(lock) == ["gym_mujoco_v2/hopper_medium-v2.hdf5"]
    assert lock["gym_mujoco_v2/hopper_medium-v2.hdf5"]["size"] == served.stat().st_size
    card = json.loads((work / "resources/datasets/hopper-medium-v2/card.json").read_text())
    # no next_observations in the file: the 3 timeout rows and the last row are dropped
    assert card["n_transitions"] == 300 - 3
    assert "D4RL" in card["normalised_score"]["ref_source"]
    assert card["normalised_score"]["ref_max_score"] == 3234.3
    assert len(pd.read_parquet(work / target)) == 149  # ceil(297 / 2)

    # the server now serves other bytes: a fresh download must fail the committed checksum
    served.write_bytes(served.read_bytes()[:-10] + b"0123456789")
    (work / "resources/d4rl/hopper-medium-v2.hdf5").unlink()
    proc = snakemake(work, config, "resources/d4rl/hopper-medium-v2.hdf5", check=False)
    assert proc.returncode != 0
    log = (work / "results/logs/fetch_d4rl/hopper-medium-v2.log").read_text()
    assert "SHA-256 mismatch" in log and "hopper_medium-v2.hdf5" in log and "datasets.lock.json" in log
    assert not (work / "resources/d4rl/hopper-medium-v2.hdf5").exists()


@pytest.mark.slow
def test_minari_source_from_a_pre_seeded_store(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "config").mkdir(parents=True)
    registry = (ROOT / "config" / "datasets.yaml").read_text()
    registry += "seeded: {source: minari, minari_id: seemrl-test/hopper/random-v0, env_id: Hopper-v5}\n"
    (work / "config" / "datasets.yaml").write_text(registry)
    episodes = collect_episodes("Hopper-v5", None, n_transitions=200, seed=0)
    write_minari_dataset("seemrl-test/hopper/random-v0", episodes, "Hopper-v5", -20.272305, 3234.3,
                         minari_root=work / "resources" / "minari", algorithm_name="uniform-random")
    config = copy.deepcopy(TINY)
    config["experiment"]["datasets"] = ["seeded"]
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a download attempt would fail
    target = "resources/datasets/seeded/subset-100pct.parquet"
    out = snakemake(work, config, target, "-n").stdout
    assert job_counts(out) == {"fetch_minari": 1, "dataset_table": 1, "subset": 1}
    snakemake(work, config, target)
    card = json.loads((work / "resources/datasets/seeded/card.json").read_text())
    assert card["n_transitions"] == 200
    assert card["normalised_score"]["ref_source"] == "minari dataset metadata"
