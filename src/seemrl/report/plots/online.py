"""Online SAC (paper Fig. 11): Q, episode return and critic norm over environment steps."""
from __future__ import annotations

import os

import pandas as pd

from seemrl.report.plots.style import plot_panels

ONLINE_PANELS = (("q_mean", "mean Q on the batch", "symlog"), ("last_episode_return", "episode return", "linear"),
                 ("critic_param_norm", "critic parameter norm", "symlog"))


def plot_online(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """One line per seed, coloured by variant (EMA / no EMA / no EMA + LayerNorm), a row per env."""
    plot_panels(df, path, ONLINE_PANELS, "variant", ("env",), x_label="environment steps")
