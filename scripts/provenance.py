"""Gather the provenance records of the result tables into results/provenance.tsv."""

from pathlib import Path

import pandas as pd

from kneeflow import provenance
from kneeflow.rule import run


def main(sm):
    df = pd.DataFrame(provenance.gather(list(sm.input.tables)))
    tmp = Path(sm.output.tsv).with_suffix(".part")
    df.to_csv(tmp, sep="\t", index=False)
    tmp.replace(sm.output.tsv)


run(snakemake, main)  # noqa: F821
