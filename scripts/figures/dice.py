"""Figure: segmentation Dice per structure and model."""

import pandas as pd

from kneeflow import figures
from kneeflow.workflow.rule import run


def main(sm):
    figures.dice_by_structure(pd.read_csv(sm.input.table), sm.output.png)


run(snakemake, main)  # noqa: F821
