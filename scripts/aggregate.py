"""Concatenate per-sample tidy tables into one cohort table (rows sorted for determinism)."""

import pandas as pd

from kneeflow.atomic import write_table
from kneeflow.workflow.rule import run


def main(sm):
    # the per-sample tables are inputs, or params where a cohort table written by the same jobs
    # stands for them (table_morphometrics)
    paths = sm.params.tables if "tables" in sm.params.keys() else sm.input.tables
    frames = [pd.read_csv(f) for f in paths]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    write_table(df, sm.output.table)


run(snakemake, main)  # noqa: F821
