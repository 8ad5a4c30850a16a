"""Concatenate per-sample tidy tables into one cohort table (rows sorted for determinism)."""

from pathlib import Path

import pandas as pd

from kneeflow.rule import run


def main(sm):
    frames = [pd.read_csv(f) for f in sm.input.tables]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    tmp = Path(sm.output.table).with_suffix(".part")
    df.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(sm.output.table)


run(snakemake, main)  # noqa: F821
