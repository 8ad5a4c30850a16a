"""Figure for a stage this configuration does not produce: an explicit 'no data' panel."""

from kneeflow import figures
from kneeflow.rule import run


def main(sm):
    figures.not_yet(sm.output.png, sm.params.title, sm.params.what)


run(snakemake, main)  # noqa: F821
