"""Figure: BScore by group and vs the generator's OA severity."""

import pandas as pd

from kneeflow import figures
from kneeflow.workflow.rule import run


def main(sm):
    figures.bscore_by_group(pd.read_csv(sm.input.table), sm.output.png)


run(snakemake, main)  # noqa: F821
