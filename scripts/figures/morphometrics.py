"""Figure: cartilage morphometrics (VC, cAB, ThCcAB.Me, dAB%) per plate by group."""

import pandas as pd

from kneeflow import figures
from kneeflow.workflow.rule import run


def main(sm):
    figures.morphometrics_by_group(pd.read_csv(sm.input.table), pd.DataFrame(sm.params.meta), sm.output.png)


run(snakemake, main)  # noqa: F821
