"""Concatenate per-sample tidy tables into one cohort table (rows sorted for determinism)."""

import pandas as pd

from kneeflow.atomic import write_table
from kneeflow.workflow.rule import run


def main(sm):
    frames = [pd.read_csv(f) for f in sm.input.tables]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    write_table(df, sm.output.table)


run(snakemake, main)  # noqa: F821
