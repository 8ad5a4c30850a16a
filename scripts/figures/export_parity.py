"""Figure: export parity per model and format."""

import json

from kneeflow import figures
from kneeflow.workflow.rule import run


def main(sm):
    figures.export_parity([json.load(open(p)) for p in sm.input.parity], sm.output.png)


run(snakemake, main)  # noqa: F821
