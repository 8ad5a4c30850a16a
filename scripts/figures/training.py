"""Figure: training loss and validation Dice per epoch, per model."""

import pandas as pd

from kneeflow import figures
from kneeflow.workflow.rule import run


def main(sm):
    figures.training_curves({m: pd.read_csv(f) for m, f in zip(sm.params.models, sm.input.metrics)}, sm.output.png)


run(snakemake, main)  # noqa: F821
