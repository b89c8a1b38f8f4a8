"""Report: per-cell summary table, Markdown/CSV output, the SEEM/Q figure, atomic writes."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from seemrl.io import to_markdown
from seemrl.report.plots.seem_q import plot_seem_and_q
from seemrl.report.tables import merge_mean_std, seed_table, summary_table, write_table_csv, write_table_markdown

torch.set_num_threads(1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(critic_norm: str, percent: int, n_seeds=3, explode_seed=None) -> pd.DataFrame:
    """An analyse_run-shaped frame; `explode_seed` goes non-finite from step 200 on."""
    rows = []
    for seed in range(n_seeds):
        for step in (0, 100, 200, 300):
            blown = seed == explode_seed and step >= 200
            q = math.inf if blown else 10.0 + seed + step / 100
            rows.append({"step": step, "seed": seed, "seem": math.nan if blown else -1.0 + step / 1000 + seed,
                         "seem_normalized": math.nan if blown else -0.5 + seed / 10,
                         "q_data_mean": q, "q_policy_mean": q, "critic_param_norm": 5.0 + step,
                         "q1_param_norm": 3.0, "diverged": blown, "cos_to_final_params": 0.9})
    df = pd.DataFrame(rows)
    df["dataset"], df["percent"], df["algo"], df["critic_norm"] = "hopper-medium", percent, "td3", critic_norm
    return df


@pytest.fixture
def frames():
    return [fake_run("none", 1, explode_seed=1), fake_run("layernorm", 1), fake_run("none", 10),
            fake_run("layernorm", 10)]


def test_summary_table_one_row_per_cell(frames):
    per_seed = seed_table(frames)
    assert len(per_seed) == 4 * 3
    table = summary_table(frames)
    assert len(table) == 4
    assert list(table.columns[:4]) == ["dataset", "percent", "algo", "critic_norm"]
    blown = table[(table.critic_norm == "none") & (table.percent == 1)].iloc[0]
    assert blown["n_seeds"] == 3 and blown["n_diverged"] == 1
    # final SEEM of seeds 0 and 2 only (seed 1 is NaN): -0.7 and 1.3
    assert blown["final_seem_mean"] == pytest.approx(0.3)
    assert blown["final_seem_std"] == pytest.approx(np.std([-0.7, 1.3], ddof=1))
    ok = table[(table.critic_norm == "layernorm") & (table.percent == 10)].iloc[0]
    assert ok["n_diverged"] == 0 and ok["max_seem_mean"] == pytest.approx(np.mean([-0.7, 0.3, 1.3]))
    assert ok["final_q_data_mean_mean"] == pytest.approx(14.0)
    # the Q bound makes finite-but-large Q count as diverged
    assert summary_table(frames, q_bound=13.5)["n_diverged"].tolist() == [2, 2, 2, 2]


def test_missing_identifying_column_is_an_error(frames):
    with pytest.raises(KeyError, match="critic_norm"):
        summary_table([f.drop(columns="critic_norm") for f in frames])


def test_tables_written(frames, tmp_path):
    table = summary_table(frames)
    write_table_csv(table, tmp_path / "summary.csv")
    back = pd.read_csv(tmp_path / "summary.csv")
    assert len(back) == 4 and list(back.columns) == list(table.columns)
    shown = merge_mean_std(table)
    assert "final_seem" in shown.columns and "final_seem_mean" not in shown.columns
    assert "±" in shown["final_seem"].iloc[0]
    write_table_markdown(shown, tmp_path / "summary.md")
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert lines[0].startswith("| dataset") and "n_diverged" in lines[0]
    assert set(lines[1]) <= set("|-: ")
    assert len(lines) == 2 + 4
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv", "summary.md"]


def test_markdown_escapes_and_formats():
    md = to_markdown(pd.DataFrame({"name": ["a|b"], "x": [math.nan], "y": [1234567.0]}))
    assert "a\\|b" in md and "nan" in md and "1.235e+06" in md


def test_plot_writes_png_with_nonfinite_values(frames, tmp_path):
    df = pd.concat(frames, ignore_index=True)
    df.loc[df.index[:3], "seem"] = -math.inf  # non-finite values must not crash plotting
    out = tmp_path / "fig" / "seem.png"
    plot_seem_and_q(df, out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in out.parent.iterdir()] == ["seem.png"]


def test_plot_all_nan_column(frames, tmp_path):
    df = fake_run("none", 1)
    df["seem"] = math.nan
    plot_seem_and_q(df, tmp_path / "nan.png")
    assert (tmp_path / "nan.png").read_bytes()[:8] == PNG_MAGIC


def test_plot_failure_leaves_nothing(frames, tmp_path, monkeypatch):
    import matplotlib.figure

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(PNG_MAGIC)  # a partial file under the temporary name
        raise RuntimeError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_seem_and_q(pd.concat(frames), tmp_path / "seem.png")
    assert list(tmp_path.iterdir()) == []


def test_evaluation_scores_join_the_seed_and_summary_tables():
    from seemrl.report.tables import evaluation_rows

    frames = [fake_run("none", 1), fake_run("layernorm", 1)]
    labels = {"dataset": "hopper-medium", "percent": 1, "algo": "td3", "critic_norm": "layernorm"}
    evaluation = {"per_seed": {str(s): {"final_score": 10.0 * (s + 1), "last10_score": 5.0, "best_score": 30.0,
                                        "final_return": 100.0} for s in range(3)}}
    scores = pd.DataFrame(evaluation_rows(labels, evaluation))
    assert evaluation_rows(labels, None) == []
    seeds = seed_table(frames, scores=scores)
    ln = seeds[seeds.critic_norm == "layernorm"].sort_values("seed")
    assert ln.final_score.tolist() == [10.0, 20.0, 30.0]
    assert seeds[seeds.critic_norm == "none"].final_score.isna().all()  # not evaluated
    row = summary_table(frames, scores=scores).set_index("critic_norm").loc["layernorm"]
    assert row.final_score_mean == 20.0 and row.final_score_std == 10.0


def test_seem_against_gamma_takes_each_seeds_final_and_maximum(tmp_path):
    from seemrl.report.plots.seem_q import plot_seem_vs_gamma, seem_vs_gamma_frame

    def run(gamma_seem, norm):
        return pd.DataFrame({"step": [0, 10, 20] * 2, "seed": [0] * 3 + [1] * 3,
                             "seem_normalized": [*gamma_seem, -0.1, 0.2, float("nan")],
                             "dataset": "d", "percent": "100", "algo": "a", "critic_norm": norm})
    frame = seem_vs_gamma_frame([run([0.1, 0.9, 0.5], "none"), run([-0.2, -0.1, -0.3], "ln")], [0.99, 0.9])
    row = frame[(frame.critic_norm == "none") & (frame.seed == 0)].iloc[0]
    assert row.gamma == 0.99 and row.seem_normalized_final == 0.5 and row.seem_normalized_max == 0.9
    assert frame[(frame.critic_norm == "ln") & (frame.seed == 0)].iloc[0].gamma == 0.9
    nan_final = frame[(frame.critic_norm == "none") & (frame.seed == 1)].iloc[0]
    assert np.isnan(nan_final.seem_normalized_final) and nan_final.seem_normalized_max == 0.2
    plot_seem_vs_gamma(frame, tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
