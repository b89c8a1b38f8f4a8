"""seemrl: reproduce and extend SEEM (Q-value divergence in offline RL) as a Snakemake pipeline."""

__version__ = "0.1.0"
