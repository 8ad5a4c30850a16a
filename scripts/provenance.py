"""Gather the provenance records of the result tables into results/provenance.tsv."""

import pandas as pd

from kneeflow.atomic import write_table
from kneeflow.workflow import provenance
from kneeflow.workflow.rule import run


def main(sm):
    df = pd.DataFrame(provenance.gather(list(sm.input.tables)))
    write_table(df, sm.output.tsv, sep="\t", float_format=None)


run(snakemake, main)  # noqa: F821
